// SHA-256 (FIPS 180-4), to record which plugin library produced a run.
#pragma once

#include <string>

namespace mfglab::engine {

// The digest of `bytes` as 64 lowercase hex digits.
std::string sha256_hex(const std::string& bytes);
// The digest of a file's contents; throws Error when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace mfglab::engine

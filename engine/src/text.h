// Small text helpers shared by the engine: one joiner, one printer of JSON values, one
// formatter of a parameter's bounds, one reader of whole files.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mfglab/manifest.h"

namespace mfglab::engine {

// "a, b, c" (or with another separator).
std::string join(const std::vector<std::string>& parts, const std::string& sep = ", ");

// A JSON value as a message quotes it: compact, invalid UTF-8 replaced, at most 40 bytes.
std::string show_value(const nlohmann::json& v);

// A declared parameter's bounds: ">= 1", "> 0 and <= 1", or "" when unbounded.
std::string bounds_text(const mfglab_param& d);

// A file's bytes, or nullopt when it cannot be opened.
std::optional<std::string> read_file(const std::string& path);

}  // namespace mfglab::engine

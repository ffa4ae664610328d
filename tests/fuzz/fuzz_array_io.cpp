// libFuzzer target: the .npy and CSV readers of <mfglab/array_io.h>. Any input must give an
// array whose shape matches its values, or an mfglab::Error naming the file.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "mfglab/array_io.h"

namespace {

void check(const mfglab::array_io::Array& a) {
  uint64_t n = 1;
  for (int64_t s : a.shape) {
    if (s < 0) std::abort();
    n *= static_cast<uint64_t>(s);
  }
  if (n != a.values.size()) std::abort();
}

template <class Read>
void read_as(const std::string& path, const uint8_t* data, size_t size, Read read) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  try {
    check(read(path));
  } catch (const mfglab::Error& e) {
    if (std::string(e.what()).rfind(path, 0) != 0) {
      std::fprintf(stderr, "an error without the file name: %s\n", e.what());
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = "/tmp/mfglab_fuzz_array_io_" + std::to_string(::getpid());
  mfglab::array_io::ReadOptions small;
  small.max_csv_bytes = 1 << 20;
  read_as(base + ".npy", data, size, [&](const std::string& p) { return mfglab::array_io::read_npy(p, small); });
  read_as(base + ".csv", data, size, [&](const std::string& p) { return mfglab::array_io::read_csv(p, small); });
  return 0;
}

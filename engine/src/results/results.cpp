#include "results.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <torch/types.h>

#include "mfglab/array_io.h"
#include "mfglab/params.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

void write_file_atomic(const std::string& path, const std::string& content) {
  // A temporary in the same folder, then rename: readers see the old file or the new one.
  // Any failure (a full disk, say) removes the temporary and names the file and the reason.
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) throw Error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {}: {}: {}", path, what, std::strerror(err)));
  };
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write");
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot write {}: {}", path, std::strerror(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(err)));
  }
}

void write_json_atomic(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("cannot open {}", path));
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: invalid JSON: {}", path, e.what()));
  }
}

std::string npy_bytes(const at::Tensor& t_in) {
  auto t = t_in.detach().cpu().contiguous();
  std::string descr;
  if (t.scalar_type() == torch::kFloat32) descr = "<f4";
  else if (t.scalar_type() == torch::kFloat64) descr = "<f8";
  else t = t.to(torch::kFloat64), descr = "<f8";
  if (t.dim() < 1) throw Error("save_npy needs an array of at least one dimension");
  // Python's tuple syntax: "(5,)" for one dimension, "(2, 3, 4)" for more.
  std::string shape = "(";
  for (int64_t k = 0; k < t.dim(); ++k) shape += fmt::format("{}{}", k ? ", " : "", t.size(k));
  shape += t.dim() == 1 ? ",)" : ")";
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  // magic(6) + version(2) + header length(2) + header + '\n', padded to 64 bytes.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  out += header;
  out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void save_npy(const std::string& path, const at::Tensor& t) { write_file_atomic(path, npy_bytes(t)); }

namespace {

// A float64 tensor of the values read by <mfglab/array_io.h>.
at::Tensor to_tensor(const array_io::Array& a) {
  auto t = torch::empty(a.shape, torch::TensorOptions().dtype(torch::kFloat64));
  if (!a.values.empty()) std::memcpy(t.data_ptr<double>(), a.values.data(), a.values.size() * sizeof(double));
  return t;
}

// A sample file's array: N x d, a 1-D array being N x 1.
array_io::Array read_sample_npy(const std::string& path) {
  auto a = array_io::read_npy(path);
  if (a.shape.empty() || a.shape.size() > 2)
    throw Error(fmt::format("{}: expected a 1-D or 2-D array (N x d), got {} dimensions", path, a.shape.size()));
  if (a.shape.size() == 1) a.shape.push_back(1);
  return a;
}

}  // namespace

at::Tensor load_npy_array(const std::string& path) {
  const auto a = array_io::read_npy(path);
  if (a.shape.empty()) throw Error(fmt::format("{}: expected an array, got a scalar", path));
  return to_tensor(a);
}

at::Tensor load_npy(const std::string& path) { return to_tensor(read_sample_npy(path)); }

at::Tensor load_csv(const std::string& path) { return to_tensor(array_io::read_csv(path)); }

at::Tensor load_samples(const std::string& path) {
  const auto ext = fs::path(path).extension().string();
  array_io::Array a;
  if (ext == ".npy") a = read_sample_npy(path);
  else if (ext == ".csv" || ext == ".txt") a = array_io::read_csv(path);
  else throw Error(fmt::format("{}: unknown sample file type '{}' (expected .npy or .csv)", path, ext));
  array_io::require_finite(a, path);
  return to_tensor(a);
}

}  // namespace mfglab::engine

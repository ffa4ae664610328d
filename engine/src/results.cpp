#include "results.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include <fmt/format.h>
#include <torch/types.h>

#include "mfglab/params.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("cannot write {}", tmp));
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) throw Error(fmt::format("failed writing {}", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error(fmt::format("cannot rename {} to {}: {}", tmp, path, ec.message()));
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

at::Tensor load_npy_array(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Error(fmt::format("{}: not a .npy file", path));
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) throw Error(fmt::format("{}: truncated .npy header", path));
  auto field = [&](const std::string& key) {
    auto k = header.find("'" + key + "'");
    if (k == std::string::npos) throw Error(fmt::format("{}: .npy header lacks '{}'", path, key));
    return header.substr(header.find(':', k) + 1);
  };
  std::string descr = field("descr");
  descr = descr.substr(descr.find('\'') + 1);
  descr = descr.substr(0, descr.find('\''));
  torch::Dtype dtype;
  if (descr == "<f4" || descr == "=f4") dtype = torch::kFloat32;
  else if (descr == "<f8" || descr == "=f8") dtype = torch::kFloat64;
  else throw Error(fmt::format("{}: dtype '{}' is not supported (expected float32 or float64)", path, descr));
  if (field("fortran_order").find("True") < field("fortran_order").find(',')) throw Error(fmt::format("{}: Fortran-ordered arrays are not supported", path));
  std::string shape_text = field("shape");
  shape_text = shape_text.substr(shape_text.find('(') + 1);
  shape_text = shape_text.substr(0, shape_text.find(')'));
  std::vector<int64_t> shape;
  std::stringstream ss(shape_text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  if (shape.empty()) throw Error(fmt::format("{}: expected an array, got a scalar", path));
  auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  in.read(static_cast<char*>(t.data_ptr()), t.numel() * t.element_size());
  if (in.gcount() != static_cast<std::streamsize>(t.numel() * t.element_size()))
    throw Error(fmt::format("{}: file is shorter than its header says", path));
  return t.to(torch::kFloat64);
}

at::Tensor load_npy(const std::string& path) {
  auto t = load_npy_array(path);
  if (t.dim() > 2) throw Error(fmt::format("{}: expected a 1-D or 2-D array (N x d), got {} dimensions", path, t.dim()));
  return t.dim() == 1 ? t.unsqueeze(1) : t;
}

at::Tensor load_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  std::vector<double> values;
  int64_t cols = -1, rows = 0, line_no = 0;
  std::string line;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::vector<double> row;
    std::stringstream ss(line);
    std::string cell;
    bool numeric = true;
    while (std::getline(ss, cell, ',')) {
      try {
        size_t used = 0;
        double v = std::stod(cell, &used);
        if (cell.find_first_not_of(" \t", used) != std::string::npos) numeric = false;
        row.push_back(v);
      } catch (const std::exception&) {
        numeric = false;
      }
    }
    if (!numeric) {
      if (rows == 0 && cols < 0) { cols = static_cast<int64_t>(std::count(line.begin(), line.end(), ',')) + 1; continue; }  // header
      throw Error(fmt::format("{}:{}: not a row of numbers", path, line_no));
    }
    if (cols >= 0 && static_cast<int64_t>(row.size()) != cols)
      throw Error(fmt::format("{}:{}: {} values, expected {} like the first row", path, line_no, row.size(), cols));
    cols = static_cast<int64_t>(row.size());
    for (double v : row)
      if (!std::isfinite(v)) throw Error(fmt::format("{}:{}: non-finite value", path, line_no));
    values.insert(values.end(), row.begin(), row.end());
    ++rows;
  }
  if (rows == 0) throw Error(fmt::format("{}: no data rows", path));
  return torch::tensor(values, torch::kFloat64).reshape({rows, cols});
}

at::Tensor load_samples(const std::string& path) {
  auto ext = fs::path(path).extension().string();
  at::Tensor t;
  if (ext == ".npy") t = load_npy(path);
  else if (ext == ".csv" || ext == ".txt") t = load_csv(path);
  else throw Error(fmt::format("{}: unknown sample file type '{}' (expected .npy or .csv)", path, ext));
  if (!torch::isfinite(t).all().item<bool>()) throw Error(fmt::format("{}: contains NaN or infinite values", path));
  return t;
}

}  // namespace mfglab::engine

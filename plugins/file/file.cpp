// User data from a file: a numpy .npy array or a CSV table of numbers, split at random
// (from the run's generator) into a training and a held-out set, optionally
// standardised with statistics of the training split only.
//
// The readers are this plugin's own: plugins do not link the engine. Every error names
// the file and, where it applies, the line (CSV) or row (.npy) at fault.
#include <mfglab/plugin.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// "'data/x.csv'": paths are quoted in messages so that spaces stay visible.
std::string quoted(const std::string& path) { return "'" + path + "'"; }

std::string read_all(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("params.path: " + quoted(path) + " does not exist");
  if (fs::is_directory(path, ec)) throw Error("params.path: " + quoted(path) + " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("params.path: cannot open " + quoted(path) + ": " + std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw Error("params.path: error while reading " + quoted(path));
  std::string bytes = out.str();
  if (bytes.empty()) throw Error(quoted(path) + " is empty");
  return bytes;
}

// ---- .npy ----------------------------------------------------------------------------
// Layout: "\x93NUMPY", major, minor, header length (uint16 LE for version 1, uint32 LE for
// 2 and 3), then a Python dict literal such as
//   {'descr': '<f8', 'fortran_order': False, 'shape': (100, 2), }
// padded with spaces and '\n', then the raw data.

uint32_t little_endian(const std::string& bytes, size_t at, int width) {
  uint32_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

// The text after "'key':" in the header dict (either quote style), or throws.
size_t header_value(const std::string& header, const std::string& key, const std::string& path) {
  for (const char q : {'\'', '"'}) {
    const auto at = header.find(std::string(1, q) + key + q);
    if (at == std::string::npos) continue;
    auto colon = header.find(':', at + key.size() + 2);
    if (colon == std::string::npos) break;
    auto v = colon + 1;
    while (v < header.size() && header[v] == ' ') ++v;
    return v;
  }
  throw Error(quoted(path) + ": the .npy header has no '" + key + "' entry: " + header);
}

struct NpyHeader {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

NpyHeader parse_npy_header(const std::string& bytes, const std::string& path) {
  const std::string magic = "\x93NUMPY";
  if (bytes.size() < 10 || bytes.compare(0, magic.size(), magic) != 0)
    throw Error(quoted(path) + " is not a .npy file (it does not start with \\x93NUMPY)");
  const int major = static_cast<unsigned char>(bytes[6]);
  if (major < 1 || major > 3)
    throw Error(quoted(path) + ": .npy format version " + std::to_string(major) + "." +
                std::to_string(static_cast<unsigned char>(bytes[7])) + " is not supported (1.0, 2.0 or 3.0)");
  const int width = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + static_cast<size_t>(width))
    throw Error(quoted(path) + ": truncated .npy header");
  const size_t length = little_endian(bytes, 8, width);
  NpyHeader h;
  h.data_offset = 8 + width + length;
  if (bytes.size() < h.data_offset)
    throw Error(quoted(path) + ": truncated .npy header (" + std::to_string(length) +
                " header bytes announced, " + std::to_string(bytes.size() - 8 - width) + " present)");
  const std::string header = bytes.substr(8 + width, length);

  auto v = header_value(header, "descr", path);
  const char q = v < header.size() ? header[v] : ' ';
  const auto end = header.find(q, v + 1);
  if ((q != '\'' && q != '"') || end == std::string::npos)
    throw Error(quoted(path) + ": cannot read 'descr' in the .npy header: " + header);
  h.descr = header.substr(v + 1, end - v - 1);

  v = header_value(header, "fortran_order", path);
  if (header.compare(v, 4, "True") == 0) h.fortran = true;
  else if (header.compare(v, 5, "False") != 0)
    throw Error(quoted(path) + ": cannot read 'fortran_order' in the .npy header: " + header);

  v = header_value(header, "shape", path);
  const auto close = header.find(')', v);
  if (v >= header.size() || header[v] != '(' || close == std::string::npos)
    throw Error(quoted(path) + ": cannot read 'shape' in the .npy header: " + header);
  std::stringstream dims(header.substr(v + 1, close - v - 1));
  std::string item;
  while (std::getline(dims, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), [](unsigned char c) { return std::isspace(c); }),
               item.end());
    if (item.empty()) continue;  // the trailing comma of "(100,)"
    char* stop = nullptr;
    const long long n = std::strtoll(item.c_str(), &stop, 10);
    if (*stop != '\0' || n < 0) throw Error(quoted(path) + ": bad 'shape' in the .npy header: " + header);
    h.shape.push_back(n);
  }
  return h;
}

Tensor load_npy(const std::string& path, int64_t max_rows) {
  const std::string bytes = read_all(path);
  const NpyHeader h = parse_npy_header(bytes, path);
  int64_t item = 0;
  if (h.descr == "<f4") item = 4;
  else if (h.descr == "<f8") item = 8;
  else
    throw Error(quoted(path) + ": dtype '" + h.descr +
                "' is not supported (expected little-endian float32 '<f4' or float64 '<f8'; "
                "convert with numpy's astype)");
  if (h.fortran && h.shape.size() > 1)  // a 1-D array reads the same in either order
    throw Error(quoted(path) + " is stored in Fortran order; save numpy.ascontiguousarray(a) instead");
  if (h.shape.empty() || h.shape.size() > 2)
    throw Error(quoted(path) + ": expected an array of shape (N,) or (N, d), got " +
                std::to_string(h.shape.size()) + " dimensions");
  const int64_t n = h.shape[0], d = h.shape.size() == 2 ? h.shape[1] : 1;
  if (n == 0 || d == 0) throw Error(quoted(path) + " holds an empty array");

  if (n > std::numeric_limits<int64_t>::max() / item / d)
    throw Error(quoted(path) + ": the .npy header announces an impossibly large shape");
  const size_t expected = static_cast<size_t>(n * d * item), present = bytes.size() - h.data_offset;
  if (present < expected)
    throw Error(quoted(path) + " is truncated: its header announces " + std::to_string(n) + " x " +
                std::to_string(d) + " values (" + std::to_string(expected) + " bytes), the file holds " +
                std::to_string(present) + " bytes of data");
  if (present > expected)
    throw Error(quoted(path) + ": " + std::to_string(present - expected) +
                " unexpected bytes after the data announced by the header");
  // .npy data is little-endian here; the bytes are copied as they are, which needs a
  // little-endian host (all targets LibTorch CPU builds support).
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .npy reader assumes a little-endian host");
  const int64_t rows = max_rows > 0 ? std::min(n, max_rows) : n;
  auto x = torch::empty({rows, d}, item == 4 ? torch::kFloat32 : torch::kFloat64);
  std::memcpy(x.data_ptr(), bytes.data() + h.data_offset, static_cast<size_t>(rows * d * item));
  x = x.to(torch::kFloat64);

  const auto bad = (~torch::isfinite(x)).any(1).nonzero();
  if (bad.numel() > 0)
    throw Error(quoted(path) + ": row " + std::to_string(bad[0][0].item<int64_t>()) +
                " (counting from 0) holds NaN or Inf; " + std::to_string(bad.size(0)) +
                " rows do; remove them first");
  return x;
}

// ---- CSV -----------------------------------------------------------------------------

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::vector<std::string> split_cells(const std::string& line) {
  std::vector<std::string> cells;
  size_t start = 0;
  while (true) {
    const auto comma = line.find(',', start);
    cells.push_back(trim(line.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) return cells;
    start = comma + 1;
  }
}

// The whole cell must be a number (strtod also takes "nan" and "inf", caught later).
bool parse_number(const std::string& cell, double& out) {
  if (cell.empty()) return false;
  char* stop = nullptr;
  out = std::strtod(cell.c_str(), &stop);
  return *stop == '\0';
}

Tensor load_csv(const std::string& path, int64_t max_rows) {
  const std::string text = read_all(path);
  std::istringstream in(text);
  std::string line;
  std::vector<double> values;
  int64_t columns = 0, rows = 0, number = 0;
  int64_t width_line = 0;  // the line that fixed the column count
  bool first = true;
  while ((max_rows == 0 || rows < max_rows) && std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // Windows line ends
    if (trim(line).empty()) continue;
    const auto cells = split_cells(line);
    const std::string at = quoted(path) + " line " + std::to_string(number);
    std::vector<double> row(cells.size());
    size_t numeric = 0;
    for (size_t j = 0; j < cells.size(); ++j) numeric += parse_number(cells[j], row[j]);
    if (first) {
      first = false;
      columns = static_cast<int64_t>(cells.size());
      width_line = number;
      if (numeric == 0) continue;  // a header: no cell of the first row is a number
    }
    if (static_cast<int64_t>(cells.size()) != columns)
      throw Error(at + ": " + std::to_string(cells.size()) + " values, expected " +
                  std::to_string(columns) + " (as on line " + std::to_string(width_line) + ")");
    for (size_t j = 0; j < cells.size(); ++j) {
      const std::string cell = at + ", column " + std::to_string(j + 1);
      if (!parse_number(cells[j], row[j]))
        throw Error(cell + ": '" + cells[j] + "' is not a number");
      if (!std::isfinite(row[j]))
        throw Error(cell + ": '" + cells[j] + "' is not finite (NaN and Inf are not allowed)");
    }
    values.insert(values.end(), row.begin(), row.end());
    ++rows;
  }
  if (rows == 0) throw Error(quoted(path) + " has no data rows");
  return torch::tensor(values, kF64).view({rows, columns});
}

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

class FileDataset final : public mfglab::Dataset {
 public:
  FileDataset(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    const std::string path = params.string("path");
    if (path.empty()) throw Error("params.path: give the data file (.npy or .csv)");
    std::string format = params.string("format");
    if (format == "auto") {
      const std::string ext = lower_extension(path);
      if (ext == ".npy") format = "npy";
      else if (ext == ".csv" || ext == ".txt") format = "csv";
      else
        throw Error("params.format: cannot tell the format of " + quoted(path) + " from its extension '" +
                    ext + "'; set params.format to npy or csv");
    }
    const int64_t max_rows = params.integer("max_rows");
    const Tensor x = format == "npy" ? load_npy(path, max_rows) : load_csv(path, max_rows);

    // n_test = round(test_fraction * n), at least 1 and leaving at least 1 for training.
    const int64_t n = x.size(0);
    if (n < 2) throw Error(quoted(path) + " holds " + std::to_string(n) + " row; at least 2 are needed to "
                           "split it into a training and a held-out set");
    const int64_t n_test = std::clamp<int64_t>(std::llround(params.number("test_fraction") * n), 1, n - 1);
    torch::Generator g = ctx.generator;
    const auto order = torch::randperm(n, g, torch::kLong);
    Tensor train = x.index_select(0, order.slice(0, 0, n - n_test));
    Tensor test = x.index_select(0, order.slice(0, n - n_test));

    if (params.flag("standardize")) {
      // Population statistics of the training split, so that the training set has mean
      // 0 and std 1 exactly; a constant column is only centred.
      const auto mean = train.mean(0);
      auto std = train.std(0, /*unbiased=*/false);
      const auto constant = std == 0;
      if (constant.any().item<bool>())
        ctx.warn("file: " + std::to_string(constant.sum().item<int64_t>()) +
                 " column(s) are constant on the training split; they are centred, not scaled");
      std = torch::where(constant, torch::ones_like(std), std);
      train = (train - mean) / std;
      test = (test - mean) / std;
    }
    train_ = train.to(ctx.options());
    test_ = test.to(ctx.options());
    ctx.info("file: " + std::to_string(n) + " rows x " + std::to_string(x.size(1)) + " columns from " +
             quoted(path) + "; " + std::to_string(n - n_test) + " for training, " +
             std::to_string(n_test) + " held out");
  }

  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

 private:
  torch::Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(FileDataset, MFGLAB_KIND_DATASET, "file", "1.0.0",
              "User data from a .npy (float32/float64, (N,) or (N, d)) or CSV file, split at "
              "random into training and held-out sets",
              "",
              mfglab::string_param("path", "", "the data file (relative paths are taken from the "
                                               "working directory)"),
              mfglab::choice_param("format", "auto", "auto|npy|csv",
                                   "auto: by extension (.npy; .csv or .txt)"),
              mfglab::number_param("test_fraction", 0.2, "share of the rows held out").above(0).below(1),
              mfglab::bool_param("standardize", false,
                                 "centre and scale each column by the training split's mean and "
                                 "std (population)"),
              mfglab::int_param("max_rows", 0, "read only the first max_rows rows (0: all)").at_least(0))

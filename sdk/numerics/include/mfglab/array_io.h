// Arrays from files: numpy .npy arrays and CSV tables of numbers, read by one set of rules
// wherever mfglab reads them (the engine's `metric` command and figures, the file dataset).
// Header-only, without LibTorch: values come back as float64 in a std::vector with their
// shape, and the caller makes a tensor of them. POSIX (open, fstat, pread).
//
// Every input is bounded before it is read. Only regular files are opened: a device
// (/dev/zero), a FIFO, a socket or a directory is refused with "PATH: not a regular file".
// Each size a .npy header announces is checked against the real size of the file before
// anything is allocated, and a CSV file larger than a maximum size (1 GiB by default) is
// refused before its first byte is read. Every error is an mfglab::Error whose message
// starts with the path, and for CSV with the line: "data.csv:12: not a number in column 3: 'abc'".
//
// .npy (numpy format 1.0, 2.0 or 3.0): "\x93NUMPY", the version (major 1, 2 or 3, minor 0),
// the header length (little-endian, 2 bytes for 1.0, 4 for 2.0 and 3.0), the header, a
// Python dict literal with exactly the keys descr, fortran_order and shape, e.g.
//   {'descr': '<f8', 'fortran_order': False, 'shape': (100, 2), }
// and then the data, which must fill the rest of the file exactly (no byte missing, none
// left over). descr is '<f4' or '<f8' (little-endian float32 or float64); fortran_order is
// False, or True for arrays of at most one dimension (whose bytes read the same in either
// order); shape is a tuple of non-negative integers ("(5,)", "(100, 2)"; not "(5)", "(-1,)",
// "(100.5, 2)"), at most 32 of them, whose product times the item size must not overflow.
//
// CSV: lines of comma-separated cells. Blank lines are skipped; a '\r' before the '\n' and a
// UTF-8 byte order mark at the start are ignored. A cell is a number when strtod reads all of
// it but surrounding blanks: "1.5", " -2e3 " and "1e-400" (which underflows to 0) are numbers;
// "", "1.5x" and "abc" are not. The first non-blank line is a header, and skipped, when none
// of its cells is a number: never because a number failed to convert.
// Every row has the cell count of the first line. Values must be finite: "nan" and "inf" are
// refused, and a number beyond the float64 range ("1e400") is "value out of range".
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "mfglab/params.h"  // mfglab::Error

namespace mfglab::array_io {

// The largest CSV file read; a larger one is refused before reading (save it as .npy).
constexpr uint64_t kMaxCsvBytes = uint64_t{1} << 30;
// The largest .npy header read (numpy's own are a few hundred bytes).
constexpr uint64_t kMaxNpyHeaderBytes = uint64_t{1} << 20;
// The most dimensions a .npy array may have (numpy's NPY_MAXDIMS before numpy 2).
constexpr size_t kMaxNpyDims = 32;

struct Array {
  std::vector<int64_t> shape;  // .npy: as in the file (axis 0 cut to max_rows); CSV: {rows, columns}
  std::vector<double> values;  // C order, float64 (float32 data is converted exactly)
  std::string descr;           // .npy: "<f4" or "<f8"; CSV: "csv"
};

struct ReadOptions {
  int64_t max_rows = 0;                   // keep only the first max_rows along axis 0 (0: all)
  uint64_t max_csv_bytes = kMaxCsvBytes;  // a larger CSV file is refused
};

namespace detail {

inline std::string system_message(int error) { return std::generic_category().message(error); }

// Up to `limit` characters of untrusted text for a message, with anything unprintable
// shown as '?'.
inline std::string shown(const std::string& text, size_t limit = 80) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    out += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  if (text.size() > limit) out += "...";
  return out;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t k = 0; k < shape.size(); ++k) out += (k ? ", " : "") + std::to_string(shape[k]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a file";
}

// A regular file opened for reading, with its size; anything else is refused unopened
// (opening a FIFO would block) and, against a swap in between, checked again once open.
class RegularFile {
 public:
  explicit RegularFile(const std::string& path) : path_(path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      const int error = errno;
      if (error == ENOENT) throw Error(path + ": does not exist");
      throw Error(path + ": cannot open: " + system_message(error));
    }
    if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file (" + file_kind(st.st_mode) + ")");
    do fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) throw Error(path + ": cannot open: " + system_message(errno));
    if (::fstat(fd_, &st) != 0) {
      const int error = errno;
      ::close(fd_);
      throw Error(path + ": cannot open: " + system_message(error));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw Error(path + ": not a regular file (" + file_kind(st.st_mode) + ")");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile() { ::close(fd_); }

  uint64_t size() const { return size_; }

  // Exactly n bytes at `offset`, which the caller has checked against size().
  void read_at(uint64_t offset, void* out, size_t n) const {
    auto* p = static_cast<char*>(out);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw Error(path_ + ": read error: " + system_message(errno));
      if (got == 0) throw Error(path_ + ": the file became shorter while it was read");
      p += got, n -= static_cast<size_t>(got), offset += static_cast<uint64_t>(got);
    }
  }

  // Up to n bytes from the current position; 0 at the end of the file.
  size_t read_some(char* out, size_t n) const {
    while (true) {
      const ssize_t got = ::read(fd_, out, n);
      if (got >= 0) return static_cast<size_t>(got);
      if (errno != EINTR) throw Error(path_ + ": read error: " + system_message(errno));
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// ---- .npy header -----------------------------------------------------------------------

// A recursive-descent reader of the header dict; every failure names the file and shows
// the header.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    blanks();
    expect('{', "the header is not a dict");
    blanks();
    while (!at('}')) {
      const std::string key = quoted("a quoted key");
      blanks();
      expect(':', "expected ':' after '" + shown(key) + "'");
      blanks();
      if (key == "descr") {
        once(seen_descr, key);
        if (!at('\'') && !at('"'))
          fail("'descr' is not a string such as '<f8' (structured dtypes are not supported)");
        descr = quoted("a string");
      } else if (key == "fortran_order") {
        once(seen_fortran, key);
        if (word("True")) fortran = true;
        else if (word("False")) fortran = false;
        else fail("'fortran_order' is neither True nor False");
      } else if (key == "shape") {
        once(seen_shape, key);
        shape = tuple();
      } else {
        fail("unexpected key '" + shown(key) + "' (expected descr, fortran_order and shape)");
      }
      blanks();
      if (at(',')) ++i_, blanks();
      else if (!at('}')) fail("expected ',' or '}'");
    }
    ++i_;
    blanks();
    if (i_ != s_.size()) fail("unexpected text after the dict");
    if (!seen_descr) fail("no 'descr' entry");
    if (!seen_fortran) fail("no 'fortran_order' entry");
    if (!seen_shape) fail("no 'shape' entry");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(path_ + ": bad .npy header: " + why + ": " + shown(s_, 200));
  }
  bool at(char c) const { return i_ < s_.size() && s_[i_] == c; }
  void expect(char c, const std::string& why) {
    if (!at(c)) fail(why);
    ++i_;
  }
  void blanks() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void once(bool& seen, const std::string& key) {
    if (seen) fail("'" + key + "' appears twice");
    seen = true;
  }
  bool word(const char* w) {
    const size_t n = std::strlen(w);
    if (s_.compare(i_, n, w) != 0) return false;
    const size_t end = i_ + n;
    if (end < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[end])) || s_[end] == '_')) return false;
    i_ = end;
    return true;
  }
  std::string quoted(const std::string& what) {
    if (!at('\'') && !at('"')) fail("expected " + what);
    const char q = s_[i_];
    const size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  // A Python tuple of non-negative integer literals: "()", "(5,)", "(5, 3)", "(5, 3,)".
  std::vector<int64_t> tuple() {
    const char* bad = "'shape' is not a tuple of non-negative integers";
    if (!at('(')) fail(bad);
    ++i_;
    std::vector<int64_t> dims;
    bool trailing_comma = false;
    blanks();
    while (!at(')')) {
      if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) fail(bad);
      uint64_t n = 0;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        const uint64_t digit = static_cast<uint64_t>(s_[i_++] - '0');
        if (n > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - digit) / 10)
          fail("a 'shape' dimension is too large");
        n = n * 10 + digit;
      }
      if (at('L')) ++i_;  // a long literal, as Python 2 wrote them
      dims.push_back(static_cast<int64_t>(n));
      if (dims.size() > kMaxNpyDims) fail("more than " + std::to_string(kMaxNpyDims) + " dimensions");
      blanks();
      trailing_comma = at(',');
      if (trailing_comma) ++i_, blanks();
      else if (!at(')')) fail(bad);
    }
    ++i_;
    if (dims.size() == 1 && !trailing_comma)
      fail("'shape' (" + std::to_string(dims[0]) + ") is not a tuple (a one-dimensional shape is written (" +
           std::to_string(dims[0]) + ",))");
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

// ---- CSV -------------------------------------------------------------------------------

inline bool blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

enum class Cell { number, not_number, out_of_range };

// Whether the cell [begin, end) is a number by strtod, surrounding blanks aside. Underflow
// (ERANGE with a zero or subnormal result) is a number; overflow (ERANGE with +-HUGE_VAL)
// is out of range.
inline Cell parse_cell(const char* begin, const char* end, double& value, std::string& text) {
  while (begin < end && blank(*begin)) ++begin;
  while (end > begin && blank(end[-1])) --end;
  text.assign(begin, end);
  if (text.empty()) return Cell::not_number;
  char* stop = nullptr;
  errno = 0;
  value = std::strtod(text.c_str(), &stop);
  const int error = errno;
  if (stop != text.c_str() + text.size()) return Cell::not_number;
  if (error == ERANGE && std::isinf(value)) return Cell::out_of_range;
  return Cell::number;
}

// The lines of a file read in chunks, each without its '\n' (and '\r').
class LineReader {
 public:
  LineReader(const RegularFile& file, const std::string& path, uint64_t max_bytes)
      : file_(file), path_(path), max_bytes_(max_bytes) {}

  bool next(std::string& line) {
    while (true) {
      const size_t nl = buffer_.find('\n', scanned_);
      if (nl != std::string::npos) {
        line.assign(buffer_, start_, nl - start_);
        start_ = scanned_ = nl + 1;
        break;
      }
      scanned_ = buffer_.size();
      if (end_) {
        if (start_ >= buffer_.size()) return false;
        line.assign(buffer_, start_, std::string::npos);
        start_ = scanned_ = buffer_.size();
        break;
      }
      fill();
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }

 private:
  void fill() {
    buffer_.erase(0, start_);
    scanned_ -= start_;
    start_ = 0;
    constexpr size_t kChunk = size_t{1} << 20;
    const size_t old = buffer_.size();
    buffer_.resize(old + kChunk);
    const size_t got = file_.read_some(&buffer_[old], kChunk);
    buffer_.resize(old + got);
    total_ += got;
    if (got == 0) end_ = true;
    if (total_ > max_bytes_)  // the file grew past the limit after it was measured
      throw Error(path_ + ": more than " + std::to_string(max_bytes_) +
                  " bytes, the most a CSV file may hold; save the array as .npy instead");
  }

  const RegularFile& file_;
  const std::string& path_;
  uint64_t max_bytes_;
  std::string buffer_;
  size_t start_ = 0, scanned_ = 0;
  uint64_t total_ = 0;
  bool end_ = false;
};

}  // namespace detail

// Reads a .npy file (see the rules at the top). With options.max_rows > 0 only the first
// max_rows entries along axis 0 are read (the whole file is still checked against its
// header). NaN and Inf are returned as they are (see require_finite).
inline Array read_npy(const std::string& path, const ReadOptions& options = {}) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .npy reader assumes a little-endian host");
  const detail::RegularFile file(path);
  const uint64_t size = file.size();
  if (size == 0) throw Error(path + ": the file is empty");
  const std::string magic = "\x93NUMPY";
  char prefix[12] = {};
  const size_t prefix_size = static_cast<size_t>(std::min<uint64_t>(size, sizeof prefix));
  file.read_at(0, prefix, prefix_size);
  if (prefix_size < 8 || std::memcmp(prefix, magic.data(), magic.size()) != 0)
    throw Error(path + ": not a .npy file (it does not start with \\x93NUMPY)");
  const int major = static_cast<unsigned char>(prefix[6]), minor = static_cast<unsigned char>(prefix[7]);
  if (major < 1 || major > 3 || minor != 0)
    throw Error(path + ": .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                " is not supported (1.0, 2.0 or 3.0)");
  const size_t width = major == 1 ? 2 : 4;
  if (prefix_size < 8 + width) throw Error(path + ": truncated .npy header");
  uint64_t header_size = 0;
  for (size_t k = width; k-- > 0;) header_size = (header_size << 8) | static_cast<unsigned char>(prefix[8 + k]);
  const uint64_t data_offset = 8 + width + header_size;
  if (data_offset > size)
    throw Error(path + ": truncated .npy header (" + std::to_string(header_size) + " header bytes announced, " +
                std::to_string(size - 8 - width) + " present)");
  if (header_size > kMaxNpyHeaderBytes)
    throw Error(path + ": the .npy header announces " + std::to_string(header_size) + " bytes, more than the " +
                std::to_string(kMaxNpyHeaderBytes) + " allowed");
  std::string header(static_cast<size_t>(header_size), '\0');
  file.read_at(8 + width, header.data(), header.size());

  Array a;
  bool fortran = false;
  detail::NpyHeaderParser(header, path).parse(a.descr, fortran, a.shape);
  uint64_t item = 0;
  if (a.descr == "<f4") item = 4;
  else if (a.descr == "<f8") item = 8;
  else
    throw Error(path + ": dtype '" + detail::shown(a.descr) +
                "' is not supported (expected little-endian float32 '<f4' or float64 '<f8'; "
                "convert with numpy's astype)");
  if (fortran && a.shape.size() > 1)
    throw Error(path + ": the array is stored in Fortran order; save numpy.ascontiguousarray(a) instead");
  uint64_t count = 1, bytes = 0;
  for (const int64_t n : a.shape)
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(n), &count))
      throw Error(path + ": the .npy shape " + detail::shape_text(a.shape) + " is impossibly large");
  if (__builtin_mul_overflow(count, item, &bytes))
    throw Error(path + ": the .npy shape " + detail::shape_text(a.shape) + " is impossibly large");
  const uint64_t present = size - data_offset;
  const std::string announced = "its header announces shape " + detail::shape_text(a.shape) + " of '" + a.descr +
                                "', " + std::to_string(bytes) + " bytes of data, the file holds " +
                                std::to_string(present) + " bytes of data";
  if (present < bytes) throw Error(path + ": truncated: " + announced);
  if (present > bytes)
    throw Error(path + ": " + std::to_string(present - bytes) + " unexpected bytes after the data: " + announced);

  // Only now, with every size checked against the file, is memory allocated.
  if (!a.shape.empty() && options.max_rows > 0 && options.max_rows < a.shape[0]) {
    count = count / static_cast<uint64_t>(a.shape[0]) * static_cast<uint64_t>(options.max_rows);
    a.shape[0] = options.max_rows;
  }
  a.values.resize(static_cast<size_t>(count));
  if (item == 8) {
    file.read_at(data_offset, a.values.data(), static_cast<size_t>(count * 8));
  } else {
    std::vector<float> chunk(size_t{1} << 16);
    for (uint64_t done = 0; done < count;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk.size(), count - done));
      file.read_at(data_offset + done * 4, chunk.data(), n * 4);
      std::copy(chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n), a.values.begin() + static_cast<std::ptrdiff_t>(done));
      done += n;
    }
  }
  return a;
}

// Reads a CSV file of numbers (see the rules at the top) as {rows, columns}. With
// options.max_rows > 0 reading stops after max_rows data rows.
inline Array read_csv(const std::string& path, const ReadOptions& options = {}) {
  const detail::RegularFile file(path);
  if (file.size() > options.max_csv_bytes)
    throw Error(path + ": " + std::to_string(file.size()) + " bytes, more than the " +
                std::to_string(options.max_csv_bytes) +
                " a CSV file may hold; save the array as .npy instead");
  if (file.size() == 0) throw Error(path + ": the file is empty");
  detail::LineReader lines(file, path, options.max_csv_bytes);
  Array a;
  a.descr = "csv";
  std::string line, text;
  std::vector<double> row;
  std::vector<detail::Cell> kinds;
  std::vector<std::pair<size_t, size_t>> bounds;  // each cell's [begin, end) in the line
  int64_t number = 0, rows = 0, width_line = 0;
  size_t columns = 0;
  while ((options.max_rows <= 0 || rows < options.max_rows) && lines.next(line)) {
    ++number;
    if (number == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 byte order mark
    if (std::all_of(line.begin(), line.end(), detail::blank)) continue;
    auto at = [&] { return path + ":" + std::to_string(number) + ": "; };

    row.clear();
    kinds.clear();
    bounds.clear();
    size_t numbers = 0;
    for (size_t start = 0;;) {
      const size_t comma = std::min(line.find(',', start), line.size());
      double value = 0;
      kinds.push_back(detail::parse_cell(line.data() + start, line.data() + comma, value, text));
      row.push_back(value);
      bounds.emplace_back(start, comma);
      numbers += kinds.back() != detail::Cell::not_number;
      if (comma == line.size()) break;
      start = comma + 1;
    }
    const bool first = width_line == 0;
    if (first) {
      columns = row.size();
      width_line = number;
      if (numbers == 0) continue;  // a header: no cell is a number
    }
    if (row.size() != columns)
      throw Error(at() + std::to_string(row.size()) + " values, expected " + std::to_string(columns) +
                  " as on line " + std::to_string(width_line));
    for (size_t j = 0; j < row.size(); ++j) {
      if (kinds[j] == detail::Cell::number && std::isfinite(row[j])) continue;
      detail::parse_cell(line.data() + bounds[j].first, line.data() + bounds[j].second, row[j], text);
      const std::string where = " in column " + std::to_string(j + 1) + ": '" + detail::shown(text) + "'";
      if (kinds[j] == detail::Cell::not_number)
        throw Error(at() + "not a number" + where +
                    (first ? " (the first line is a header only when none of its cells is a number)" : ""));
      if (kinds[j] == detail::Cell::out_of_range)
        throw Error(at() + "value out of range" + where + " (beyond the float64 range, about 1.8e308)");
      throw Error(at() + "not finite" + where + " (NaN and Inf are not allowed)");
    }
    a.values.insert(a.values.end(), row.begin(), row.end());
    ++rows;
  }
  if (rows == 0) throw Error(path + ": no data rows");
  a.shape = {rows, static_cast<int64_t>(columns)};
  return a;
}

// Throws unless every value is finite, naming the first row (along axis 0) that is not:
// "PATH: row 7 (counting from 0) holds NaN or Inf (3 rows in all); remove such rows first".
inline void require_finite(const Array& a, const std::string& path) {
  if (a.values.empty()) return;
  const size_t rows = a.shape.empty() ? 1 : static_cast<size_t>(a.shape[0]);
  const size_t per_row = a.values.size() / rows;
  size_t bad = 0, first = 0;
  for (size_t r = 0; r < rows; ++r) {
    const double* v = a.values.data() + r * per_row;
    if (std::all_of(v, v + per_row, [](double x) { return std::isfinite(x); })) continue;
    if (bad++ == 0) first = r;
  }
  if (bad == 0) return;
  if (a.shape.empty()) throw Error(path + ": holds NaN or Inf");
  throw Error(path + ": row " + std::to_string(first) + " (counting from 0) holds NaN or Inf (" +
              std::to_string(bad) + (bad == 1 ? " row" : " rows") + " in all); remove such rows first");
}

}  // namespace mfglab::array_io

// The .npy and CSV readers of <mfglab/array_io.h> and the engine's loaders built on them
// (results.h): hostile inputs (devices, FIFOs, headers announcing more than the file holds,
// malformed shapes, numbers out of range) are refused before anything large is read or
// allocated, with a message naming the file (and the line), and the engine's loaders follow
// the same rules with the same messages.
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "results.h"
#include <mfglab/array_io.h>
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

namespace fs = std::filesystem;
namespace io = mfglab::array_io;
namespace engine = mfglab::engine;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// A folder of this test process's own, removed at exit.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("mfglab_test_array_io_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

fs::path temp_path(const std::string& name) {
  static TempDir dir;
  return dir.path / name;
}

std::string write(const std::string& name, const std::string& bytes) {
  const auto file = temp_path(name).string();
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  return file;
}

// A symbolic link `name` (with the extension the readers expect) to `target`.
std::string link_to(const std::string& name, const std::string& target) {
  const auto file = temp_path(name);
  std::error_code ec;
  fs::remove(file, ec);
  fs::create_symlink(target, file);
  return file.string();
}

template <class T>
std::string raw_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A .npy file as numpy writes it, from the header dict's text.
std::string npy_with_dict(std::string dict, const std::string& data, int major = 1, int minor = 0) {
  const size_t prefix = 8 + (major == 1 ? 2 : 4);
  dict += std::string((64 - (prefix + dict.size() + 1) % 64) % 64, ' ') + '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += static_cast<char>(minor);
  const auto length = static_cast<uint32_t>(dict.size());
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out += static_cast<char>((length >> (8 * i)) & 0xff);
  return out + dict + data;
}

std::string npy(const std::string& descr, const std::string& shape, const std::string& data, int major = 1,
                const std::string& fortran = "False") {
  return npy_with_dict("{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }",
                       data, major);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::vector<double> values(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// While alive, the process may map at most `headroom` more bytes of address space than it
// does now: a reader that allocates what a hostile header announces fails under it.
class AddressSpaceLimit {
 public:
  explicit AddressSpaceLimit(uint64_t headroom) {
    ::getrlimit(RLIMIT_AS, &saved_);
    long pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    const uint64_t limit = static_cast<uint64_t>(pages) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) + headroom;
    rlimit lowered = saved_;
    if (saved_.rlim_max == RLIM_INFINITY || limit < saved_.rlim_max) lowered.rlim_cur = limit;
    active_ = ::setrlimit(RLIMIT_AS, &lowered) == 0;
  }
  ~AddressSpaceLimit() {
    if (active_) ::setrlimit(RLIMIT_AS, &saved_);
  }
  bool active() const { return active_; }

 private:
  rlimit saved_{};
  bool active_ = false;
};

constexpr uint64_t kHeadroom = uint64_t{1} << 30;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_CASE("array_io: devices, FIFOs and directories are refused unread", "[array_io]") {
  const std::string fifo = temp_path("pipe.csv").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);  // opening it for reading would block
  const std::string dir = temp_path("folder.npy").string();
  fs::create_directories(dir);
  struct Case {
    std::string path, kind;
  };
  const std::vector<Case> cases = {
      {"/dev/zero", "character device"},
      {link_to("zero.csv", "/dev/zero"), "character device"},
      {link_to("zero.npy", "/dev/zero"), "character device"},
      {link_to("random.csv", "/dev/urandom"), "character device"},
      {link_to("random.npy", "/dev/urandom"), "character device"},
      {fifo, "FIFO"},
      {link_to("pipe.npy", fifo), "FIFO"},
      {dir, "directory"},
  };
  AddressSpaceLimit limit(kHeadroom);
  CHECK(limit.active());
  const auto start = std::chrono::steady_clock::now();
  for (const auto& c : cases) {
    INFO(c.path);
    const std::string expected = c.path + ": not a regular file (a";
    const std::vector<std::function<void()>> readers = {
        [&] { io::read_npy(c.path); },          [&] { io::read_csv(c.path); },
        [&] { engine::load_npy_array(c.path); }, [&] { engine::load_npy(c.path); },
        [&] { engine::load_csv(c.path); },       [&] { engine::load_samples(c.path); }};
    for (size_t k = 0; k < readers.size(); ++k) {
      INFO("reader " << k);
      const std::string message = error_of(readers[k]);
      if (k == 5 && fs::path(c.path).extension() != ".npy" && fs::path(c.path).extension() != ".csv") {
        CHECK_THAT(message, Catch::Contains("unknown sample file type"));  // /dev/zero: no extension
        continue;
      }
      CHECK_THAT(message, Catch::StartsWith(expected) && Catch::Contains(c.kind));
    }
  }
  CHECK(seconds_since(start) < 10);
}

TEST_CASE("array_io: a .npy header announcing 4 GB in a small file allocates nothing", "[array_io]") {
  // 1.7 KB of data under a header that claims 2^29 float64 values (4 GiB).
  const std::string path = write("claims_4gb.npy", npy("<f8", "(536870912,)", std::string(1728, '\0')));
  REQUIRE(fs::file_size(path) < 2000);
  AddressSpaceLimit limit(kHeadroom);  // under 1 GiB more: allocating 4 GiB would fail
  CHECK(limit.active());
  for (const auto& message : {error_of([&] { io::read_npy(path); }), error_of([&] { engine::load_npy_array(path); }),
                              error_of([&] { engine::load_samples(path); })}) {
    CHECK_THAT(message, Catch::StartsWith(path + ": truncated") && Catch::Contains("4294967296 bytes") &&
                            Catch::Contains("1728 bytes"));
  }
  // The same with a header length beyond the file, and a shape whose size overflows.
  std::string long_header = "\x93NUMPY\x02";
  long_header += std::string("\0\xff\xff\xff\x7f", 5) + "{'descr': '<f8'";
  const std::string header_path = write("long_header.npy", long_header);
  CHECK_THAT(error_of([&] { engine::load_npy_array(header_path); }),
             Catch::StartsWith(header_path + ": truncated .npy header") && Catch::Contains("2147483647"));
  const std::string overflow = write("overflow.npy", npy("<f8", "(4611686018427387904, 4)", std::string(64, '\0')));
  CHECK_THAT(error_of([&] { engine::load_npy_array(overflow); }),
             Catch::StartsWith(overflow + ": the .npy shape (4611686018427387904, 4) is impossibly large"));
}

TEST_CASE("array_io: the engine and the SDK refuse the same malformed .npy files alike", "[array_io]") {
  const std::string data = raw_bytes(std::vector<double>{1, 2, 3, 4, 5, 6});  // 48 bytes
  struct Case {
    const char* what;
    std::string bytes, expected;
  };
  const std::vector<Case> cases = {
      {"trailing bytes", npy("<f8", "(3,)", data), "24 unexpected bytes after the data"},
      {"fractional dimension", npy("<f8", "(100.5, 2)", data), "'shape' is not a tuple of non-negative integers"},
      {"negative dimension", npy("<f8", "(-3, 2)", data), "'shape' is not a tuple of non-negative integers"},
      {"not a tuple", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (6)}", data),
       "'shape' (6) is not a tuple"},
      {"shape as a list", npy("<f8", "[3, 2]", data), "'shape' is not a tuple"},
      {"dimension beyond int64", npy("<f8", "(99999999999999999999,)", data), "dimension is too large"},
      {"version 9.0", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }", data, 9),
       ".npy format version 9.0 is not supported"},
      {"version 1.1", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }", data, 1, 1),
       ".npy format version 1.1 is not supported"},
      {"int32", npy("<i4", "(12,)", data), "dtype '<i4' is not supported"},
      {"uint8", npy("|u1", "(48,)", data), "dtype '|u1' is not supported"},
      {"big-endian", npy(">f8", "(6,)", data), "dtype '>f8' is not supported"},
      {"structured dtype", npy_with_dict("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (6,), }", data),
       "structured dtypes are not supported"},
      {"Fortran order", npy("<f8", "(3, 2)", data, 1, "True"), "Fortran order"},
      {"fortran_order not a bool", npy("<f8", "(6,)", data, 1, "0"), "'fortran_order' is neither True nor False"},
      {"no shape", npy_with_dict("{'descr': '<f8', 'fortran_order': False, }", data), "no 'shape' entry"},
      {"extra key", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (6,), 'x': 1}", data),
       "unexpected key 'x'"},
      {"repeated key", npy_with_dict("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (6,)}", data),
       "'descr' appears twice"},
      {"text after the dict", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (6,)} 1", data),
       "unexpected text after the dict"},
      {"not a dict", npy_with_dict("descr", data), "the header is not a dict"},
      {"not .npy", "1,2,3\n4,5,6\n", "not a .npy file"},
      {"magic only", "\x93NUMPY\x01", "not a .npy file"},
      {"no header length", std::string("\x93NUMPY\x01\x00\x10", 9), "truncated .npy header"},
      {"empty", "", "the file is empty"},
  };
  int k = 0;
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string path = write("bad" + std::to_string(k++) + ".npy", c.bytes);
    const std::string sdk = error_of([&] { io::read_npy(path); });
    CHECK_THAT(sdk, Catch::StartsWith(path + ": ") && Catch::Contains(c.expected));
    CHECK(error_of([&] { engine::load_npy_array(path); }) == sdk);
    CHECK(error_of([&] { engine::load_npy(path); }) == sdk);
    CHECK(error_of([&] { engine::load_samples(path); }) == sdk);
  }
  std::string dims = "(";
  for (int d = 0; d < 33; ++d) dims += "1, ";
  const std::string many = write("many_dims.npy", npy("<f8", dims + ")", raw_bytes(std::vector<double>{1})));
  CHECK_THAT(error_of([&] { engine::load_npy_array(many); }), Catch::Contains("more than 32 dimensions"));
}

TEST_CASE("array_io: well-formed .npy files of every accepted kind", "[array_io]") {
  const std::vector<double> v = {0.1, -2.5, 1e-300, 3.0, 7.25, 1.0 / 3};
  const std::vector<float> f = {0.1f, -2.5f, 1e-30f, 3.0f, 7.25f, 1.0f / 3};
  for (int major : {1, 2, 3}) {
    INFO("version " << major << ".0");
    const std::string path = write("ok_v" + std::to_string(major) + ".npy", npy("<f8", "(3, 2)", raw_bytes(v), major));
    const auto a = io::read_npy(path);
    CHECK(a.shape == std::vector<int64_t>{3, 2});
    CHECK(a.values == v);
    CHECK(a.descr == "<f8");
    CHECK(values(engine::load_npy_array(path)) == v);
  }
  // float32, converted exactly.
  const auto a = io::read_npy(write("f4.npy", npy("<f4", "(6,)", raw_bytes(f))));
  CHECK(a.shape == std::vector<int64_t>{6});
  for (size_t i = 0; i < f.size(); ++i) CHECK(a.values[i] == static_cast<double>(f[i]));
  // Double quotes, no trailing comma, Python 2 long literals, a 1-D array in Fortran order.
  const auto b = io::read_npy(write("quotes.npy", npy_with_dict(
      "{\"descr\": \"<f8\", \"fortran_order\": True, \"shape\": (6L,)}", raw_bytes(v))));
  CHECK(b.shape == std::vector<int64_t>{6});
  CHECK(b.values == v);
  // Empty arrays and 0-d arrays read (the sample loaders refuse the latter).
  CHECK(io::read_npy(write("empty.npy", npy("<f8", "(0, 3)", ""))).shape == std::vector<int64_t>{0, 3});
  const std::string scalar = write("scalar.npy", npy_with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': ()}",
                                                               raw_bytes(std::vector<double>{4})));
  CHECK(io::read_npy(scalar).values == std::vector<double>{4});
  CHECK_THAT(error_of([&] { engine::load_npy_array(scalar); }), Catch::Contains("expected an array, got a scalar"));
  // max_rows reads only the first rows; the whole file is still checked.
  io::ReadOptions first_two;
  first_two.max_rows = 2;
  const auto c = io::read_npy(write("rows.npy", npy("<f8", "(3, 2)", raw_bytes(v))), first_two);
  CHECK(c.shape == std::vector<int64_t>{2, 2});
  CHECK(c.values == std::vector<double>(v.begin(), v.begin() + 4));
  CHECK_THAT(error_of([&] { io::read_npy(write("rows_long.npy", npy("<f8", "(2, 2)", raw_bytes(v))), first_two); }),
             Catch::Contains("16 unexpected bytes"));
  // What the engine writes, it reads back unchanged; NaN stays for load_npy_array but not
  // for sample files.
  auto t = torch::tensor({1.5, std::nan(""), -3.0}, kF64).view({3, 1});
  const std::string saved = temp_path("saved.npy").string();
  engine::save_npy(saved, t);
  CHECK(torch::equal(engine::load_npy_array(saved).isnan(), t.isnan()));
  CHECK_THAT(error_of([&] { engine::load_samples(saved); }),
             Catch::StartsWith(saved + ": row 1 (counting from 0) holds NaN or Inf (1 row in all)"));
  engine::save_npy(saved, t.nan_to_num(0).to(torch::kFloat32));
  CHECK(torch::equal(engine::load_samples(saved), t.nan_to_num(0)));
}

TEST_CASE("array_io: a CSV row is data or header by its text, never by a failed conversion", "[array_io]") {
  // 1e-400 underflows (strtod reports ERANGE) but is a number: the row is data, its value 0.
  const std::string tiny = write("tiny.csv", "1e-400,0\n3,4\n4e-320,1\n");
  for (const auto& t : {engine::load_csv(tiny), engine::load_samples(tiny)}) {
    CHECK(t.sizes() == torch::IntArrayRef({3, 2}));
    CHECK(t[0][0].item<double>() == 0);
    CHECK(t[2][0].item<double>() == 4e-320);  // subnormal, kept
  }
  CHECK(io::read_csv(tiny).shape == std::vector<int64_t>{3, 2});

  // 1e400 overflows: an error naming the file, the line and the cell.
  const std::string huge = write("huge.csv", "x,y\n1,2\n3,-1e400\n");
  const std::string overflow = error_of([&] { engine::load_csv(huge); });
  CHECK_THAT(overflow, Catch::StartsWith(huge + ":3: value out of range in column 2: '-1e400'"));
  CHECK(error_of([&] { io::read_csv(huge); }) == overflow);
  const std::string first = write("huge_first.csv", "1e400,2\n3,4\n");
  CHECK_THAT(error_of([&] { engine::load_samples(first); }),
             Catch::StartsWith(first + ":1: value out of range in column 1: '1e400'"));

  // Headers: no cell is a number (an empty cell, as pandas writes for the index, is not one).
  const std::string header = write("header.csv", "x, y\n1,2\n3,4\n");
  CHECK(values(engine::load_csv(header)) == std::vector<double>{1, 2, 3, 4});
  const std::string pandas = write("pandas.csv", ",x,y\n0,1.5,2\n1,3,4\n");
  CHECK(values(engine::load_csv(pandas)) == std::vector<double>{0, 1.5, 2, 1, 3, 4});
  // A first line with a number among words is neither: an error, not a dropped row.
  const std::string mixed = write("mixed.csv", "1,abc\n2,3\n");
  CHECK_THAT(error_of([&] { engine::load_csv(mixed); }),
             Catch::StartsWith(mixed + ":1: not a number in column 2: 'abc'") &&
                 Catch::Contains("header only when none of its cells is a number"));
  // NaN and Inf are numbers by grammar, so a first line of them is data, and refused.
  const std::string nan = write("nan.csv", "nan,inf\n1,2\n");
  CHECK_THAT(error_of([&] { engine::load_csv(nan); }),
             Catch::StartsWith(nan + ":1: not finite in column 1: 'nan'"));

  // Blanks around cells, CRLF line ends, a byte order mark, blank lines.
  const std::string spaced = write("spaced.csv", "\xEF\xBB\xBF a ,\tb\r\n\r\n 1.5 ,\t-2e3 \r\n  \n0x10,+7\r\n");
  CHECK(values(engine::load_csv(spaced)) == std::vector<double>{1.5, -2000, 16, 7});
  // Other errors, each naming the file and the line.
  struct Case {
    const char* what;
    std::string text, expected;
  };
  const std::vector<Case> cases = {
      {"ragged", "a,b,c\n1,2,3\n4,5\n", ":3: 2 values, expected 3 as on line 1"},
      {"text cell", "1,2\n3,4x\n", ":2: not a number in column 2: '4x'"},
      {"empty cell", "1,2\n,4\n", ":2: not a number in column 1: ''"},
      {"binary", std::string("1,2\n\x01\x02\xff,3\n", 10), ":2: not a number in column 1: '?\?\?'"},
      {"header only", "a,b\n", ": no data rows"},
      {"blank", "\n \n", ": no data rows"},
      {"empty", "", ": the file is empty"},
  };
  int k = 0;
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string path = write("bad" + std::to_string(k++) + ".csv", c.text);
    const std::string message = error_of([&] { engine::load_csv(path); });
    CHECK_THAT(message, Catch::StartsWith(path + c.expected));
    CHECK(error_of([&] { io::read_csv(path); }) == message);
  }
}

TEST_CASE("array_io: a CSV file over the size limit is refused before it is read", "[array_io]") {
  // A sparse file of 1 GiB + 1 byte (no disk space, but a real size): refused at once.
  const std::string big = temp_path("big.csv").string();
  std::ofstream(big).put('1');
  fs::resize_file(big, io::kMaxCsvBytes + 1);
  AddressSpaceLimit limit(uint64_t{256} << 20);
  CHECK(limit.active());
  const auto start = std::chrono::steady_clock::now();
  CHECK_THAT(error_of([&] { engine::load_csv(big); }),
             Catch::StartsWith(big + ": 1073741825 bytes, more than the 1073741824 a CSV file may hold"));
  CHECK_THAT(error_of([&] { engine::load_samples(big); }), Catch::Contains("save the array as .npy instead"));
  CHECK(seconds_since(start) < 5);
  // The limit is an option of the SDK reader.
  const std::string small = write("small.csv", "1,2\n3,4\n");
  io::ReadOptions options;
  options.max_csv_bytes = 7;
  CHECK_THAT(error_of([&] { io::read_csv(small, options); }), Catch::Contains("8 bytes, more than the 7"));
  options.max_csv_bytes = 8;
  CHECK(io::read_csv(small, options).values == std::vector<double>{1, 2, 3, 4});
  options.max_rows = 1;
  CHECK(io::read_csv(small, options).shape == std::vector<int64_t>{1, 2});
}

TEST_CASE("array_io: missing files and require_finite name the file", "[array_io]") {
  const std::string missing = temp_path("no_such_file.csv").string();
  CHECK(error_of([&] { engine::load_csv(missing); }) == missing + ": does not exist");
  CHECK(error_of([&] { io::read_npy(missing); }) == missing + ": does not exist");
  io::Array a;
  a.shape = {4, 2};
  a.values = {1, 2, 3, 4, 5, NAN, INFINITY, 0};
  CHECK(error_of([&] { io::require_finite(a, "x.npy"); }) ==
        "x.npy: row 2 (counting from 0) holds NaN or Inf (2 rows in all); remove such rows first");
  a.values[5] = a.values[6] = 0;
  CHECK(error_of([&] { io::require_finite(a, "x.npy"); }).empty());
}

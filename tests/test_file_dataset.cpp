// The file dataset plugin: .npy files (written here byte by byte, header included) and
// CSV files round-trip exactly through it, its split follows the run's generator, its
// standardisation uses the training split only, and each kind of bad file is refused
// with a message naming the file and the place.
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
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include "results.h"
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

// A folder of this test process's own, removed at exit.
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("mfglab_test_file_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string write(const std::string& name, const std::string& bytes) {
  static TempDir dir;
  const auto file = (dir.path / name).string();
  std::ofstream(file, std::ios::binary) << bytes;
  return file;
}

template <class T>
std::string raw_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A .npy file as numpy writes it: magic, version, little-endian header length, then
// the header dict padded with spaces to a multiple of 64 bytes and ended by '\n'.
std::string npy(const std::string& descr, const std::string& shape, const std::string& data,
                bool fortran = false, int major = 1) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                     ", 'shape': " + shape + ", }";
  const size_t prefix = 8 + (major == 1 ? 2 : 4);
  dict += std::string((64 - (prefix + dict.size() + 1) % 64) % 64, ' ') + '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const auto length = static_cast<uint32_t>(dict.size());
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out += static_cast<char>((length >> (8 * i)) & 0xff);
  return out + dict + data;
}

// Rows i = 0..n-1 of [i, i/3 + 0.1, -i^2/7] (column 0 identifies the row after the split;
// the other columns have no short decimal form, so a lossy reader would show).
Tensor table(int64_t n) {
  auto i = torch::arange(n, kF64);
  return torch::stack({i, i / 3 + 0.1, -i * i / 7}, 1);
}

std::vector<double> values(const Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// CSV text of x, every value with 17 significant digits (exact for float64).
std::string csv(const Tensor& x, const std::string& header = "", const std::string& eol = "\n") {
  std::string out = header.empty() ? "" : header + eol;
  char cell[64];
  for (int64_t r = 0; r < x.size(0); ++r) {
    for (int64_t c = 0; c < x.size(1); ++c) {
      std::snprintf(cell, sizeof cell, "%.17g", x[r][c].item<double>());
      out += (c ? "," : "") + std::string(cell);
    }
    out += eol;
  }
  return out;
}

struct Sets {
  Tensor train, test;
};

Sets load(json params, uint64_t seed = 1, torch::Dtype dtype = torch::kFloat64) {
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  ctx.seed = seed;
  ctx.dtype = dtype;
  auto ds = mfglab::test::create<mfglab::Dataset>(host(), "file", params, ctx);
  return {ds->train(), ds->test()};
}

std::string error_of(json params) {
  try {
    load(std::move(params));
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// The engine's error for a sample file, "" when it loads.
std::string engine_error(const std::string& path) {
  try {
    mfglab::engine::load_samples(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// While alive, the process may map at most `headroom` more bytes of address space than it
// does now: a reader that reads a device until memory runs out fails at once under it.
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

// Train and test back together, in the order of column 0 (the row number).
Tensor reunite(const Sets& s) {
  auto all = torch::cat({s.train, s.test});
  return all.index_select(0, all.select(1, 0).argsort());
}

}  // namespace

TEST_CASE("file: float64 .npy (N, d) round-trips exactly", "[file]") {
  auto x = table(25);
  for (int major : {1, 2}) {
    INFO("npy format " << major << ".0");
    auto path = write("f8_v" + std::to_string(major) + ".npy", npy("<f8", "(25, 3)", raw_bytes(values(x)), false, major));
    auto s = load({{"path", path}});
    CHECK(s.train.dtype() == torch::kFloat64);
    CHECK(s.train.sizes() == torch::IntArrayRef({20, 3}));
    CHECK(s.test.sizes() == torch::IntArrayRef({5, 3}));
    CHECK(torch::equal(reunite(s), x));
  }
}

TEST_CASE("file: .npy files the engine writes (run samples) load unchanged", "[file]") {
  auto x = table(40);
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const auto path = write("engine.npy", "");
    mfglab::engine::save_npy(path, x.to(dtype));
    auto s = load({{"path", path}});
    CHECK(torch::equal(reunite(s), x.to(dtype).to(torch::kFloat64)));
  }
}

TEST_CASE("file: float32 .npy of shape (N,) is one column, values unchanged", "[file]") {
  std::vector<float> v;
  for (int i = 0; i < 30; ++i) v.push_back(static_cast<float>(i) / 3.0f + 0.1f);
  auto path = write("f4.npy", npy("<f4", "(30,)", raw_bytes(v)));
  auto s = load({{"path", path}, {"test_fraction", 0.1}}, 1, torch::kFloat32);
  CHECK(s.train.dtype() == torch::kFloat32);
  CHECK(s.train.sizes() == torch::IntArrayRef({27, 1}));
  CHECK(s.test.sizes() == torch::IntArrayRef({3, 1}));
  auto all = std::get<0>(torch::cat({s.train, s.test}).view({-1}).sort());
  CHECK(torch::equal(all, torch::from_blob(v.data(), {30}, torch::kFloat32)));  // v is increasing
}

TEST_CASE("file: CSV with and without a header round-trips exactly", "[file]") {
  auto x = table(25);
  struct Case {
    const char* name;
    std::string text;
  };
  for (const auto& c : {Case{"plain.csv", csv(x)},
                        Case{"header.csv", csv(x, "index, third, square")},
                        Case{"crlf.csv", csv(x, "a,b,c", "\r\n") + "\r\n\r\n"},  // blank lines at the end
                        Case{"spaced.txt", "\n" + csv(x)}}) {                      // a blank first line
    INFO(c.name);
    auto s = load({{"path", write(c.name, c.text)}});
    CHECK(s.train.sizes() == torch::IntArrayRef({20, 3}));
    CHECK(torch::equal(reunite(s), x));
  }
  // format overrides the extension.
  auto s = load({{"path", write("data.dat", csv(x))}, {"format", "csv"}});
  CHECK(torch::equal(reunite(s), x));
}

TEST_CASE("file: split sizes are round(test_fraction * N), at least one row each", "[file]") {
  auto path = write("split.csv", csv(table(25)));
  struct Case {
    double fraction;
    int64_t test;
  };
  for (const auto& c : {Case{0.2, 5}, Case{0.5, 13}, Case{0.01, 1}, Case{0.99, 24}}) {
    INFO("test_fraction " << c.fraction);
    auto s = load({{"path", path}, {"test_fraction", c.fraction}});
    CHECK(s.test.size(0) == c.test);
    CHECK(s.train.size(0) == 25 - c.test);
  }
  // max_rows keeps the first rows of the file, in either format.
  auto x = table(25);
  auto a = load({{"path", path}, {"max_rows", 10}});
  CHECK(torch::equal(reunite(a), x.slice(0, 0, 10)));
  auto b = load({{"path", write("rows.npy", npy("<f8", "(25, 3)", raw_bytes(values(x))))}, {"max_rows", 10}});
  CHECK(torch::equal(reunite(b), x.slice(0, 0, 10)));
}

TEST_CASE("file: the run's generator alone decides the split", "[file]") {
  auto path = write("seeded.csv", csv(table(200)));
  auto a = load({{"path", path}}, 7), b = load({{"path", path}}, 7), c = load({{"path", path}}, 8);
  CHECK(torch::equal(a.train, b.train));
  CHECK(torch::equal(a.test, b.test));
  CHECK_FALSE(torch::equal(a.test, c.test));
  // The split is a random permutation, not the file's order.
  CHECK_FALSE(torch::equal(a.train.select(1, 0), torch::arange(160, kF64)));
}

TEST_CASE("file: standardize uses the training split's mean and std only", "[file]") {
  auto x = table(100);
  auto path = write("standardize.npy", npy("<f8", "(100, 3)", raw_bytes(values(x))));
  auto raw = load({{"path", path}}, 3);
  auto s = load({{"path", path}, {"standardize", true}}, 3);
  // Training split: mean 0 and population std 1 per column, up to rounding (1e-12).
  CHECK(s.train.mean(0).abs().max().item<double>() <= 1e-12);
  CHECK((s.train.std(0, /*unbiased=*/false) - 1).abs().max().item<double>() <= 1e-12);
  // The held-out split is mapped with the same (training) statistics.
  auto mean = raw.train.mean(0), std = raw.train.std(0, false);
  CHECK(torch::allclose(s.test, (raw.test - mean) / std, 0, 1e-12));
  CHECK_FALSE(s.test.mean(0).abs().max().item<double>() <= 1e-12);  // its own mean is not 0

  // A constant column is centred, not divided by 0.
  auto constant = torch::cat({x.slice(1, 0, 1), torch::full({100, 1}, 4.0, kF64)}, 1);
  auto c = load({{"path", write("constant.csv", csv(constant))}, {"standardize", true}});
  CHECK(torch::equal(c.train.select(1, 1), torch::zeros({80}, kF64)));
}

TEST_CASE("file: unreadable input is refused naming the file and the place", "[file]") {
  const std::string data8 = raw_bytes(values(table(4)));
  struct Case {
    const char* what;
    json params;
    std::vector<std::string> expected;
  };
  const std::string missing = (fs::temp_directory_path() / "mfglab_no_such_file.npy").string();
  const std::vector<Case> cases = {
      {"no path", json::object(), {"params.path: give the data file"}},
      {"missing file", {{"path", missing}}, {missing, "does not exist"}},
      {"empty file", {{"path", write("empty.csv", "")}}, {"empty.csv", "is empty"}},
      {"unknown extension", {{"path", write("data.bin", "1,2\n")}}, {"params.format", "data.bin", "'.bin'"}},
      {"int32 .npy", {{"path", write("i4.npy", npy("<i4", "(4, 3)", std::string(48, '\0')))}},
       {"i4.npy", "dtype '<i4'", "not supported"}},
      {"big-endian .npy", {{"path", write("be.npy", npy(">f8", "(4, 3)", data8))}}, {"be.npy", "'>f8'"}},
      {"Fortran order", {{"path", write("fortran.npy", npy("<f8", "(4, 3)", data8, true))}},
       {"fortran.npy", "Fortran order"}},
      {"truncated .npy", {{"path", write("short.npy", npy("<f8", "(5, 3)", data8))}},
       {"short.npy", "truncated", "120 bytes", "96 bytes"}},
      {"not .npy", {{"path", write("text.npy", "1,2,3\n")}}, {"text.npy", "not a .npy file"}},
      {"3-D .npy", {{"path", write("cube.npy", npy("<f8", "(2, 2, 3)", data8))}}, {"cube.npy", "(N,) or (N, d)"}},
      {"ragged CSV", {{"path", write("ragged.csv", "x,y,z\n1,2,3\n4,5\n")}},
       {"ragged.csv:3: ", "2 values, expected 3", "line 1"}},
      {"text cell", {{"path", write("text.csv", "1,2\n3,4\n5,abc\n")}},
       {"text.csv:3: ", "not a number in column 2: 'abc'"}},
      {"empty cell", {{"path", write("hole.csv", "1,2\n,4\n")}}, {"hole.csv:2: ", "not a number in column 1"}},
      {"NaN in CSV", {{"path", write("nan.csv", "a,b\n1,2\nnan,4\n")}}, {"nan.csv:3: ", "not finite in column 1"}},
      {"Inf in CSV", {{"path", write("inf.csv", "1,2\n3,-inf\n")}}, {"inf.csv:2: ", "not finite in column 2"}},
      {"NaN in .npy",
       {{"path", write("nan.npy", npy("<f8", "(3,)", raw_bytes(std::vector<double>{1, 2, std::nan("")})))}},
       {"nan.npy", "row 2", "NaN"}},
      {"header only", {{"path", write("header.csv", "a,b\n")}}, {"header.csv", "no data rows"}},
      {"one row", {{"path", write("one.csv", "1,2\n")}}, {"one.csv", "at least 2"}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string message = error_of(c.params);
    INFO("message: " << message);
    REQUIRE_FALSE(message.empty());
    for (const auto& part : c.expected) CHECK_THAT(message, Catch::Contains(part));
  }
}

TEST_CASE("file: devices and FIFOs are refused unread, naming the file", "[file]") {
  const std::string dir = fs::path(write("probe", "")).parent_path().string();
  const std::string fifo = dir + "/pipe.npy";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);  // opening it for reading would block
  std::vector<std::string> paths = {fifo};
  for (const char* name : {"urandom.csv", "urandom.npy", "zero.csv"}) {
    const std::string link = dir + "/" + name;
    fs::create_symlink(std::string(name).rfind("zero", 0) == 0 ? "/dev/zero" : "/dev/urandom", link);
    paths.push_back(link);
  }
  AddressSpaceLimit limit(uint64_t{1} << 30);
  CHECK(limit.active());
  const auto start = std::chrono::steady_clock::now();
  for (const auto& path : paths) {
    INFO(path);
    CHECK_THAT(error_of({{"path", path}}), Catch::Contains(path + ": not a regular file"));
    CHECK_THAT(error_of({{"path", path}, {"max_rows", 5}}), Catch::Contains(path + ": not a regular file"));
  }
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 10);
}

TEST_CASE("file: the dataset and the engine read files by the same rules", "[file]") {
  const std::string data8 = raw_bytes(values(table(4)));  // 4 x 3 float64
  std::string bad_version = npy("<f8", "(4, 3)", data8);
  bad_version[6] = 9;
  const std::vector<std::pair<std::string, std::string>> refused = {
      {write("trailing.npy", npy("<f8", "(3, 3)", data8)), "24 unexpected bytes after the data"},
      {write("fraction.npy", npy("<f8", "(100.5, 2)", data8)), "not a tuple of non-negative integers"},
      {write("negative.npy", npy("<f8", "(-4, 3)", data8)), "not a tuple of non-negative integers"},
      {write("version9.npy", bad_version), "version 9.0 is not supported"},
      {write("claims_4gb.npy", npy("<f8", "(536870912,)", data8)), "4294967296 bytes"},
      {write("overflow.csv", "x,y\n1,2\n3,1e400\n"), ":3: value out of range in column 2: '1e400'"},
      {write("mixed.csv", "1,abc\n2,3\n"), ":1: not a number in column 2: 'abc'"},
  };
  for (const auto& [path, expected] : refused) {
    INFO(path);
    const std::string engine = engine_error(path);
    CHECK_THAT(engine, Catch::StartsWith(path + ":") && Catch::Contains(expected));
    // The dataset reports the reader's message as it is, after the host's prefix.
    CHECK_THAT(error_of({{"path", path}}), Catch::EndsWith(engine));
  }
  // A first row whose value underflows (1e-400 is 0 in float64) is data for both.
  auto x = table(30);
  std::string text = "0,1e-400,-0\n" + csv(x.slice(0, 1));
  const std::string tiny = write("tiny.csv", text);
  auto expected = x.clone();
  expected[0][1] = 0;
  CHECK(torch::equal(mfglab::engine::load_samples(tiny), expected));
  CHECK(torch::equal(reunite(load({{"path", tiny}})), expected));
}

// LibTorch's float matrix products go through oneDNN (engine/src/running/gemm_backend.cpp), and
// <mfglab/blas.h> computes row-major products on raw pointers: both against plain loops. And a
// stream of stop signals leaves the products alone (running/stop_signals.h).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <mfglab/blas.h>

#include "gemm_backend.h"
#include "stop_signals.h"

namespace {

// As the mfglab launcher does, before any thread exists: every thread inherits the mask.
const bool stop_signals_blocked = (mfglab::engine::block_stop_signals(), true);

std::atomic<long> stop_signals_seen{0};
void count_stop_signal(int) { stop_signals_seen.fetch_add(1); }

// Row-major op(A) op(B) in double by the definition.
std::vector<double> naive(bool ta, bool tb, int m, int n, int k, const std::vector<double>& a, int lda,
                          const std::vector<double>& b, int ldb) {
  std::vector<double> c(static_cast<size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p)
        c[i * n + j] += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
  return c;
}

std::vector<double> filled(size_t size, double phase) {
  std::vector<double> v(size);
  for (size_t i = 0; i < size; ++i) v[i] = std::sin(0.37 * static_cast<double>(i) + phase);
  return v;
}

}  // namespace

TEST_CASE("LibTorch's float products are computed by oneDNN and agree with the definition") {
  REQUIRE(std::string(mfglab::engine::gemm_backend()) == "onednn");
  torch::manual_seed(0);  // this test's own inputs; nothing else in the program draws numbers
  const long before = mfglab::engine::onednn_gemm_calls();
  struct Shape { int64_t m, n, k; };
  for (auto s : {Shape{1024, 128, 128}, Shape{7, 3, 5}, Shape{1, 64, 1}, Shape{333, 2, 129}}) {
    auto a = torch::randn({s.m, s.k}, torch::kFloat64), b = torch::randn({s.k, s.n}, torch::kFloat64);
    auto exact = torch::mm(a, b);
    auto af = a.to(torch::kFloat32), bf = b.to(torch::kFloat32);
    const double tol = 1e-5 * std::sqrt(static_cast<double>(s.k)) * (1 + exact.abs().max().item<double>());
    // Plain, transposed operands (views with other strides), addmm with alpha and beta.
    CHECK((torch::mm(af, bf).to(torch::kFloat64) - exact).abs().max().item<double>() < tol);
    CHECK((torch::mm(af.t().contiguous().t(), bf.t().contiguous().t()).to(torch::kFloat64) - exact)
              .abs().max().item<double>() < tol);
    auto bias = torch::randn({s.m, s.n}, torch::kFloat64);
    auto addmm = torch::addmm(bias.to(torch::kFloat32), af, bf, /*beta=*/0.5, /*alpha=*/-2.0);
    CHECK((addmm.to(torch::kFloat64) - (0.5 * bias - 2.0 * exact)).abs().max().item<double>() < 3 * tol);
    // beta = 0 must not read the output: LibTorch hands over uninitialised memory.
    auto out = torch::full({s.m, s.n}, NAN, torch::kFloat32);
    torch::mm_out(out, af, bf);
    CHECK((out.to(torch::kFloat64) - exact).abs().max().item<double>() < tol);
  }
  CHECK(mfglab::engine::onednn_gemm_calls() > before);
}

TEST_CASE("blas::gemm: row-major products with transposes and padded leading dimensions") {
  const int m = 5, n = 4, k = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta, tb);
      const int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
      const auto a = filled(static_cast<size_t>(ta ? k : m) * lda, 0.1);
      const auto b = filled(static_cast<size_t>(tb ? n : k) * ldb, 1.3);
      const auto want = naive(ta, tb, m, n, k, a, lda, b, ldb);
      // double: alpha = 2, beta = 1 on a C of ones; padding columns must stay untouched.
      std::vector<double> c(static_cast<size_t>(m) * ldc, 1.0);
      mfglab::blas::gemm(ta, tb, m, n, k, 2.0, a.data(), lda, b.data(), ldb, 1.0, c.data(), ldc);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) CHECK(c[i * ldc + j] == Approx(1 + 2 * want[i * n + j]).epsilon(1e-12));
        for (int j = n; j < ldc; ++j) CHECK(c[i * ldc + j] == 1.0);
      }
      // float: beta = 0 over NaN.
      std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
      std::vector<float> cf(static_cast<size_t>(m) * ldc, NAN);
      mfglab::blas::gemm(ta, tb, m, n, k, 1.0f, af.data(), lda, bf.data(), ldb, 0.0f, cf.data(), ldc);
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) CHECK(cf[i * ldc + j] == Approx(want[i * n + j]).margin(1e-5));
    }
}

// oneDNN's kernels keep data below the stack pointer, where a signal handler's frame would land
// (stop_signals.h): with a handler on this thread, this loop aborts with a corrupted heap or
// computes other numbers within a second or two. The engine's thread takes the signals instead.
TEST_CASE("a stream of stop signals never lands on a thread computing products") {
  REQUIRE(stop_signals_blocked);
  mfglab::engine::watch_stop_signals(count_stop_signal);
  at::set_num_threads(1);
  // Layer-sized products as the models make them, forward and backward; computed one thread,
  // they are the same bits every time.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto a = torch::randn({256, 64}, gen), w = torch::randn({64, 64}, gen), g = torch::randn({256, 64}, gen);
  auto products = [&] {
    return std::vector<torch::Tensor>{torch::mm(a, w), torch::mm(g, w.t()), torch::mm(a.t(), g),
                                      torch::addmm(g, a, w.t(), 0.5, 2.0)};
  };
  const auto want = products();
  const pid_t self = ::getpid();
  const pid_t sender = ::fork();
  REQUIRE(sender >= 0);
  if (sender == 0) {  // async-signal-safe calls only: the test process has threads
    for (int i = 0; i < 10000; ++i) {
      ::kill(self, SIGTERM);
      ::usleep(200);
    }
    ::_exit(0);
  }
  long rounds = 0, different = 0;
  int status = 0;
  while (::waitpid(sender, &status, WNOHANG) == 0) {
    const auto got = products();
    for (size_t i = 0; i < got.size(); ++i) different += torch::equal(got[i], want[i]) ? 0 : 1;
    ++rounds;
  }
  // The watching thread may still be taking the last ones.
  for (int i = 0; i < 100 && stop_signals_seen.load() <= 100; ++i) ::usleep(10000);
  INFO(rounds << " rounds of products, " << stop_signals_seen.load() << " signals taken");
  CHECK(different == 0);
  CHECK(stop_signals_seen.load() > 100);
  CHECK(rounds > 100);
}

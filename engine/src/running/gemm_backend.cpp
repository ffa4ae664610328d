// Single-precision matrix products for the whole process, through oneDNN.
//
// LibTorch computes every float matrix product (mm, addmm, linear, their backward) with the
// Fortran BLAS symbol sgemm_, which Debian's package resolves to the system BLAS: OpenBLAS
// 0.3.21. That release knows no AMD Zen 4/5 core and runs its Haswell (AVX2) kernels there
// (OPENBLAS_VERBOSE=2 prints "Core: Haswell"), so on a CPU with AVX-512 half of the machine's
// floating-point width is unused. oneDNN, already a LibTorch dependency, generates its sgemm
// kernels for the CPU it finds at run time: on this project's machines it is 2.1x faster on
// the products our models make (a batch of 1024 through a 128-wide layer: 93 -> 200 GFLOPS).
//
// The executable defines sgemm_, so the dynamic linker binds LibTorch's calls here (symbols
// of the executable come first in the lookup order); the plugins' LibTorch is the same
// library, so they get it too. Products are computed single-threaded, as OpenBLAS was (runs
// parallelise across cores instead; oneDNN's threads cost more than they give on our sizes),
// which also keeps results independent of the thread budget. Degenerate shapes and any call
// oneDNN refuses go to the system BLAS, as does everything when MFGLAB_GEMM=blas.
#include "gemm_backend.h"

#include <dlfcn.h>
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <dnnl.h>

namespace {

using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

std::atomic<long> onednn_calls{0};

Sgemm system_sgemm() {
  static const Sgemm next = reinterpret_cast<Sgemm>(dlsym(RTLD_NEXT, "sgemm_"));
  return next;
}

bool onednn_enabled() {
  static const bool enabled = [] {
    const char* choice = std::getenv("MFGLAB_GEMM");
    return !(choice && std::strcmp(choice, "blas") == 0);
  }();
  return enabled;
}

}  // namespace

// Column-major C = alpha op(A) op(B) + beta C, the BLAS contract. Read as row-major, the same
// memory holds the transposes, and C^T = op(B)^T op(A)^T is one row-major oneDNN product with
// the operands swapped and the same transpose flags.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) {
  if (onednn_enabled() && *m > 0 && *n > 0 && *k > 0) {
    const int saved = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (saved != 1) omp_set_num_threads(1);
    const dnnl_status_t status =
        dnnl_sgemm(*transb, *transa, *n, *m, *k, *alpha, b, *ldb, a, *lda, *beta, c, *ldc);
    if (saved != 1) omp_set_num_threads(saved);
    if (status == dnnl_success) {
      onednn_calls.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  if (Sgemm next = system_sgemm()) return next(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  std::abort();  // no system BLAS in the process: LibTorch could not have been loaded either
}

namespace mfglab::engine {

const char* gemm_backend() { return onednn_enabled() ? "onednn" : "blas"; }

long onednn_gemm_calls() { return onednn_calls.load(std::memory_order_relaxed); }

}  // namespace mfglab::engine

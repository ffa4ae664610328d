// Row-major matrix products on raw pointers, for hand-written kernels that work on blocks of
// samples outside LibTorch's operator dispatch:
//
//   C[m x n] = alpha op(A) op(B) + beta C,   op(X) = X or X^T,   leading dimensions in elements.
//
// They call the same Fortran BLAS symbols as LibTorch (sgemm_, dgemm_), so inside the mfglab
// engine the float product is oneDNN's (engine/src/running/gemm_backend.cpp) and in any other host
// it is the system BLAS. Single-threaded; call it from one thread per block.
#pragma once

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace mfglab::blas {

// Row-major C = A B read as column-major is C^T = B^T A^T: the operands swap, flags stay.
inline void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  sgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

inline void gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  dgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

}  // namespace mfglab::blas

// The process's single-precision GEMM (gemm_backend.cpp): oneDNN in place of the system
// BLAS for LibTorch's float matrix products, unless MFGLAB_GEMM=blas.
#pragma once

namespace mfglab::engine {

// "onednn" or "blas": which library computes LibTorch's float matrix products.
const char* gemm_backend();

// Products computed by oneDNN so far (for tests: proves the binding took effect).
long onednn_gemm_calls();

}  // namespace mfglab::engine

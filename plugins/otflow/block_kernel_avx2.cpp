// The block kernel for x86-64 CPUs with AVX2 and FMA (compiled with -mavx2 -mfma), float only.
#define MFGLAB_OTFLOW_KERNEL_ISA avx2
#include "block_kernel_impl.h"

#if defined(__x86_64__)
namespace mfglab::otflow::kernel::avx2 {
MFGLAB_OTFLOW_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
void hessian_forward(const Net<float>& net, const float* s, int n, const Tape<float>& tape, float* grad, float* hess) {
  hessian_forward_impl(net, s, n, tape, grad, hess);
}
void hessian_backward(const Net<float>& net, const float* s, int n, const Tape<float>& tape, const float* gbar,
                      const float* hbar, float* sbar, float* pgrad) {
  hessian_backward_impl(net, s, n, tape, gbar, hbar, sbar, pgrad);
}
}  // namespace mfglab::otflow::kernel::avx2
#endif

// The block kernel for any x86-64 CPU, float and double.
#define MFGLAB_OTFLOW_KERNEL_ISA generic
#include "block_kernel_impl.h"

namespace mfglab::otflow::kernel::generic {
MFGLAB_OTFLOW_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
MFGLAB_OTFLOW_RUN_BLOCKS(double) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
void hessian_forward(const Net<float>& net, const float* s, int n, const Tape<float>& tape, float* grad, float* hess) {
  hessian_forward_impl(net, s, n, tape, grad, hess);
}
void hessian_backward(const Net<float>& net, const float* s, int n, const Tape<float>& tape, const float* gbar,
                      const float* hbar, float* sbar, float* pgrad) {
  hessian_backward_impl(net, s, n, tape, gbar, hbar, sbar, pgrad);
}
void hessian_forward(const Net<double>& net, const double* s, int n, const Tape<double>& tape, double* grad, double* hess) {
  hessian_forward_impl(net, s, n, tape, grad, hess);
}
void hessian_backward(const Net<double>& net, const double* s, int n, const Tape<double>& tape, const double* gbar,
                      const double* hbar, double* sbar, double* pgrad) {
  hessian_backward_impl(net, s, n, tape, gbar, hbar, sbar, pgrad);
}
}  // namespace mfglab::otflow::kernel::generic

// The cnf kernel for any x86-64 CPU (the compiler's default target), float and double.
#define MFGLAB_CNF_KERNEL_ISA generic
#include "cnf_kernel_impl.h"

namespace mfglab::cnf::kernel::generic {
MFGLAB_CNF_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
MFGLAB_CNF_RUN_BLOCKS(double) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
}  // namespace mfglab::cnf::kernel::generic

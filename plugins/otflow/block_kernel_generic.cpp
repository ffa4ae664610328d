// The block kernel for any x86-64 CPU, float and double.
#define MFGLAB_OTFLOW_KERNEL_ISA generic
#include "block_kernel_impl.h"

namespace mfglab::otflow::kernel::generic {
MFGLAB_OTFLOW_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
MFGLAB_OTFLOW_RUN_BLOCKS(double) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
}  // namespace mfglab::otflow::kernel::generic

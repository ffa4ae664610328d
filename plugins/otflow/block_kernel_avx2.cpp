// The block kernel for x86-64 CPUs with AVX2 and FMA (compiled with -mavx2 -mfma), float only.
#define MFGLAB_OTFLOW_KERNEL_ISA avx2
#include "block_kernel_impl.h"

#if defined(__x86_64__)
namespace mfglab::otflow::kernel::avx2 {
MFGLAB_OTFLOW_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
}  // namespace mfglab::otflow::kernel::avx2
#endif

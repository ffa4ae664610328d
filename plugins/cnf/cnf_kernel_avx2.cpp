// The cnf kernel for x86-64 CPUs with AVX2 and FMA (compiled with -mavx2 -mfma), float only.
#define MFGLAB_CNF_KERNEL_ISA avx2
#include "cnf_kernel_impl.h"

#if defined(__x86_64__)
namespace mfglab::cnf::kernel::avx2 {
MFGLAB_CNF_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
}  // namespace mfglab::cnf::kernel::avx2
#endif

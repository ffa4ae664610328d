// The cnf kernel for x86-64 CPUs with AVX-512 (F, VL, DQ, BW), float only.
#define MFGLAB_CNF_KERNEL_ISA avx512
#include "cnf_kernel_impl.h"

#if defined(__x86_64__)
namespace mfglab::cnf::kernel::avx512 {
MFGLAB_CNF_RUN_BLOCKS(float) { run_blocks_impl(net, cfg, x, n, B, first, stride, slots); }
}  // namespace mfglab::cnf::kernel::avx512
#endif

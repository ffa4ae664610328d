// The version of the numerics toolkit (sdk/numerics/include/mfglab/: networks, ODE
// solvers, HJB and score-PDE residuals, energies, BLAS products, array readers).
//
// The toolkit is header-only: a plugin compiles its own copy, so nothing of it crosses the
// plugin boundary and its version never decides whether a plugin loads (that is the ABI
// core's SDK version, <mfglab/manifest.h>). It versions the source API instead:
//   - a minor bump adds functions or parameters with defaults; plugins keep compiling;
//   - a major bump changes or removes something a plugin may call.
// find_package(mfglab) reports it as mfglab_NUMERICS_VERSION.
//
// 1.1 adds fast_exp.h (nn.h's exp_approx now forwards to it).
// 1.2 adds divergence_gradient_sweep.h (an MLP field's grad(div) from tangents and adjoints)
//     and hessian_jets.h's divergence_gradient.
#pragma once

#define MFGLAB_NUMERICS_VERSION_MAJOR 1
#define MFGLAB_NUMERICS_VERSION_MINOR 2

// The toolkit's one fast exp, and expm1 from the same reduction, for loops the compiler
// vectorises (libm's exp and expm1 do not). float is the fast path; double goes to libm,
// since double is for checks against autograd, not for speed.
//
// Internal linkage on purpose: kernels are compiled once per instruction set (AVX-512, AVX2,
// plain x86-64), and an inline function with external linkage is merged across those
// compilations by the linker, so plain x86-64 code could end up calling an AVX-512 copy.
// Compile callers with -fno-trapping-math, without which GCC does not vectorise the clamps.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mfglab::fast {
namespace {

// x = n ln 2 + r with |r| <= ln 2 / 2, for x in [-87, 87]: returns r, sets scale = 2^n.
inline float reduce(float x, float& scale) {
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln 2): 1.5 * 2^23 trick
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  std::memcpy(&scale, &bits, sizeof scale);
  return (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 split in two (Cody-Waite)
}

// e^r - 1 = r + r^2 P(r) on |r| <= ln 2 / 2, P by Cephes' minimax coefficients.
inline float expm1_reduced(float r) {
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r;
}

inline float clamp87(float x) { return x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x); }

// e^x, relative error below 1e-6 where the result is a normal float. x is clamped to
// [-87, 87] (e^-87 ~ 1.6e-38), which keeps sigmoid and tanh exact in float there.
inline float exp(float x) {
  float scale;
  const float r = reduce(clamp87(x), scale);
  return (expm1_reduced(r) + 1.0f) * scale;
}

// e^x - 1 with the same clamp: 2^n (1 + q) - 1, q = e^r - 1. For |x| <= ln 2 / 2 (n = 0) the
// result is q itself, so small |x| keeps its full relative accuracy (tanh of small arguments
// needs it).
inline float expm1(float x) {
  float scale;
  const float q = expm1_reduced(reduce(clamp87(x), scale));
  return scale * q + (scale - 1.0f);
}

inline double exp(double x) { return std::exp(x); }
inline double expm1(double x) { return std::expm1(x); }

}  // namespace
}  // namespace mfglab::fast

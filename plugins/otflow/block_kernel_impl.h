// The block kernel (see block_kernel.h for the equations), compiled once per instruction set:
// the including file defines MFGLAB_OTFLOW_KERNEL_ISA, the namespace that keeps each
// compilation's code apart. Compiled with -fno-trapping-math, without which GCC does not
// vectorise the clamps in fast::exp.
#include "block_kernel.h"

#include <mfglab/blas.h>
#include <mfglab/fast_exp.h>

namespace mfglab::otflow::kernel::MFGLAB_OTFLOW_KERNEL_ISA {

// Element-wise activation of a pre-activation a: tanh(a) and log cosh(a), both from
// e = exp(-2|a|):  tanh|a| = (1 - e) / (1 + e),  log cosh a = |a| + log1p(e) - log 2.
// float: a polynomial exp and log1p that the compiler vectorises (libm's do not);
// double: libm, for the comparisons against autograd.
inline float log1p_unit(float e) {  // log(1 + e) for 0 <= e <= 1: 2 atanh(e / (2 + e)), |error| < 1e-8
  const float s = e / (2.0f + e), s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

inline void tanh_logcosh(float a, float& th, float& lc) {
  const float aa = std::fabs(a);
  const float e = fast::exp(-2.0f * aa);
  th = std::copysign((1.0f - e) / (1.0f + e), a);
  lc = aa + log1p_unit(e) - 0.693147181f;
}

inline void tanh_logcosh(double a, double& th, double& lc) {
  const double aa = std::fabs(a);
  th = std::tanh(a);
  lc = aa + std::log1p(std::exp(-2.0 * aa)) - 0.69314718055994531;
}

// sum_j a_j b_j with 8 partial sums in a fixed order: vectorises (a plain running sum does
// not, since float addition is not associative) and gives the same result on every call.
template <class T>
inline T dot(const T* a, const T* b, int m) {
  typedef T V __attribute__((vector_size(8 * sizeof(T))));  // 8 lanes (GCC vector extension)
  V acc = {};
  int j = 0;
  for (; j + 8 <= m; j += 8) {
    V va, vb;
    std::memcpy(&va, a + j, sizeof va);
    std::memcpy(&vb, b + j, sizeof vb);
    acc += va * vb;
  }
  T tail = 0;
  for (; j < m; ++j) tail += a[j] * b[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// out_j = sum_{k<d} v[k stride + j]^2, j < m (the rows KJ^k of one sample).
template <class T>
inline void sum_squares(const T* v, size_t stride, int d, int m, T* out) {
  for (int j = 0; j < m; ++j) out[j] = v[j] * v[j];
  for (int k = 1; k < d; ++k)
    for (int j = 0; j < m; ++j) out[j] += v[k * stride + j] * v[k * stride + j];
}

// An aligned scratch array (64 bytes: whole cache lines, same addresses modulo 64 for every
// block, whichever thread runs it).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) : n_((n + 15) / 16 * 16) {
    p_ = static_cast<T*>(std::aligned_alloc(64, std::max<size_t>(64, n_ * sizeof(T))));
    if (!p_) throw std::bad_alloc();
  }
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept { std::swap(p_, o.p_); std::swap(n_, o.n_); return *this; }
  Buffer(const Buffer&) = delete;
  ~Buffer() { std::free(p_); }
  T* data() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

template <class T>
struct Stage {
  Buffer<T> s, g, sgn, th0;
  std::vector<Buffer<T>> z;   // z_0 .. z_{M-1}, [nb, m] (z_M = w)
  std::vector<Buffer<T>> L;   // L_i, i = 1..M: [u_{i-1}; J_{i-1}^k; zbar_{i-1}], [(d+2) nb, m]
  std::vector<Buffer<T>> P;   // P_i, i = 1..M: [th_i; KJ_i^k], [(d+1) nb, m]
  Stage(const Net<T>& net, int B) : s(B * (net.d + 1)), g(B * (net.d + 1)), sgn(B), th0(B * net.m) {
    for (int i = 0; i < net.M; ++i) z.emplace_back(B * net.m);
    L.emplace_back();
    P.emplace_back();
    for (int i = 1; i <= net.M; ++i) {
      L.emplace_back(static_cast<size_t>(net.d + 2) * B * net.m);
      P.emplace_back(static_cast<size_t>(net.d + 1) * B * net.m);
    }
  }
};

// One block of nb samples; all scratch sized for B rows.
// DD, MW: the data dimension and width when known at compile time (0: at run time); with
// them the compiler unrolls the short loops over k < d and j < m.
template <class T, int DD = 0, int MW = 0>
class Block {
 public:
  Block(const Net<T>& net, const Config<T>& cfg, int B) : net_(net), cfg_(cfg), B_(B), zc_(net.d + 3) {
    const int d = net.d, m = net.m;
    for (int i = 0; i < 4 * cfg.steps; ++i) stages_.emplace_back(net, B);
    states_ = Buffer<T>(static_cast<size_t>(cfg.steps + 1) * B * zc_);
    k_ = Buffer<T>(B * zc_), ksum_ = Buffer<T>(B * zc_);
    xbar_ = Buffer<T>(B * d), gx_ = Buffer<T>(B * d);
    for (int c = 0; c < 4; ++c) ybar_[c] = Buffer<T>(B * d);
    tr_ = Buffer<T>(B), gbar_ = Buffer<T>(B * (d + 1)), sbar_ = Buffer<T>(B * (d + 1));
    tmp_ = Buffer<T>(B * m), zbarM_ = Buffer<T>(B * m), row_ = Buffer<T>(2 * m);
    X0_ = Buffer<T>(static_cast<size_t>(d + 2) * B * (d + 2)), Y0_ = Buffer<T>(static_cast<size_t>(d + 2) * B * m);
    for (int i = 0; i <= net.M; ++i) thbar_.emplace_back(B * m);
    R_ = Buffer<T>(static_cast<size_t>(d + 2) * B * m);
    UJbar_ = Buffer<T>(static_cast<size_t>(d + 1) * B * m);
  }

  // Runs rows [0, nb) of x ([nb, d], row-major) into slot (whose grad is accumulated into).
  void run(const T* x, int nb, Slot<T>& slot) {
    nb_ = nb;
    const int d = DD ? DD : net_.d, zc = d + 3, steps = cfg_.steps;
    const T dt = T(1) / static_cast<T>(steps);
    T* Z0 = states_.data();
    for (int r = 0; r < nb; ++r) {
      for (int k = 0; k < d; ++k) Z0[r * zc + k] = x[r * d + k];
      for (int k = d; k < zc; ++k) Z0[r * zc + k] = 0;
    }
    for (int n = 0; n < steps; ++n) {
      forward_step(n);
      if (!finite(state(n + 1))) {
        slot.bad_step = n + 1;
        return;
      }
    }
    // Loss terms: alpha_L L(1), alpha_C (|x(1)|^2 / 2 + d/2 log 2 pi - l(1)), alpha_R R(1),
    // each averaged over the whole batch.
    const T* Z = state(steps);
    const double log2pi = 0.5 * d * std::log(2 * M_PI);
    double sL = 0, sC = 0, sR = 0;
    for (int r = 0; r < nb; ++r) {
      const T* zr = Z + r * zc;
      double x2 = 0;
      for (int k = 0; k < d; ++k) x2 += static_cast<double>(zr[k]) * zr[k];
      sL += zr[d + 1];
      sC += 0.5 * x2 + log2pi - zr[d];
      sR += zr[d + 2];
    }
    const double N = static_cast<double>(cfg_.n);
    slot.terms[0] = cfg_.alpha[0] * sL / N;
    slot.terms[1] = cfg_.alpha[1] * sC / N;
    slot.terms[2] = cfg_.alpha[2] * sR / N;
    if (!cfg_.want_grad) return;

    // Terminal adjoints: dl/dx(1) = wC x(1), dl/dl(1) = -wC, dl/dL(1) = wL, dl/dR(1) = wR,
    // w* = seed * alpha / N. The last three stay constant back to t = 0.
    const T wL = cfg_.seed[0] * cfg_.alpha[0] / static_cast<T>(cfg_.n);
    const T wC = cfg_.seed[1] * cfg_.alpha[1] / static_cast<T>(cfg_.n);
    const T wR = cfg_.seed[2] * cfg_.alpha[2] / static_cast<T>(cfg_.n);
    const T seeds[3] = {-wC, wL, wR};  // adjoints of l, L, R
    T* xb = xbar_.data();
    for (int r = 0; r < nb; ++r)
      for (int k = 0; k < d; ++k) xb[r * d + k] = wC * Z[r * zc + k];
    grad_ = slot.grad.data();

    // Adjoint of z_{n+1} = z_n + dt/6 (k1 + 2 k2 + 2 k3 + k4), k_c = f(y_c), y_1 = z_n,
    // y_c = z_n + a_c dt k_{c-1} (a = 1/2, 1/2, 1): with Zb = dl/dz_{n+1},
    //   kbar_4 = dt/6 Zb,  kbar_3 = dt/3 Zb + dt ybar_4,  kbar_2 = dt/3 Zb + dt/2 ybar_3,
    //   kbar_1 = dt/6 Zb + dt/2 ybar_2,  ybar_c = kbar_c (df/dy)(y_c),  zbar_n = Zb + sum_c ybar_c.
    // ybar_c has x components only, so the l, L, R parts of kbar_c are b_c seeds (b below).
    const T b[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
    const T a_next[4] = {0, dt / 2, dt / 2, dt};  // kbar_c gets a_next[c+1] ybar_{c+1}
    for (int n = steps - 1; n >= 0; --n) {
      const int first = 4 * n;
      for (int c = 3; c >= 0; --c) {
        T* G = gx_.data();
        for (int e = 0; e < nb * d; ++e) G[e] = b[c] * xb[e];
        if (c < 3) {
          const T* yb = ybar_[c + 1].data();
          for (int e = 0; e < nb * d; ++e) G[e] += a_next[c + 1] * yb[e];
        }
        stage_backward(stages_[first + c], G, b[c] * seeds[0], b[c] * seeds[1], b[c] * seeds[2], ybar_[c].data());
      }
      for (int c = 0; c < 4; ++c) {
        const T* yb = ybar_[c].data();
        for (int e = 0; e < nb * d; ++e) xb[e] += yb[e];
      }
    }
  }

 private:
  T* state(int n) const { return states_.data() + static_cast<size_t>(n) * B_ * zc_; }

  bool finite(const T* Z) const {
    bool ok = true;
    for (int e = 0; e < nb_ * zc_; ++e) ok &= std::isfinite(Z[e]);
    return ok;
  }

  // One RK4 step from state n to n + 1, its four stages' intermediates into stages_[4n..4n+3]
  // (kept for the reverse sweep: recomputing them there was measured 25% slower overall).
  void forward_step(int n) {
    const int first = 4 * n;
    const int zc = zc_, nb = nb_;
    const T dt = T(1) / static_cast<T>(cfg_.steps);
    const T t = static_cast<T>(n) * dt;
    const T* Z = state(n);
    T* Zn = state(n + 1);
    T* k = k_.data();
    T* ks = ksum_.data();
    const T a[4] = {0, dt / 2, dt / 2, dt}, wgt[4] = {1, 2, 2, 1};
    for (int c = 0; c < 4; ++c) {
      stage_forward(stages_[first + c], Z, c == 0 ? nullptr : k, a[c], t + a[c], k);
      if (c == 0) std::memcpy(ks, k, sizeof(T) * nb * zc);
      else
        for (int e = 0; e < nb * zc; ++e) ks[e] += wgt[c] * k[e];
    }
    for (int e = 0; e < nb * zc; ++e) Zn[e] = Z[e] + dt / 6 * ks[e];
  }

  // f at y = Z + a kprev (x columns only enter) and time t, into out [nb, d+3].
  void stage_forward(Stage<T>& st, const T* Z, const T* kprev, T a, T t, T* out) {
    const int d = DD ? DD : net_.d, d1 = d + 1, m = MW ? MW : net_.m, M = net_.M, nb = nb_, zc = d + 3;
    const T h = net_.h, lambda = cfg_.lambda;
    T* s = st.s.data();
    for (int r = 0; r < nb; ++r) {
      for (int k = 0; k < d; ++k) s[r * d1 + k] = Z[r * zc + k] + (kprev ? a * kprev[r * zc + k] : T(0));
      s[r * d1 + d] = t;
    }
    // Layer 0 (K = d + 1 is tiny: by hand): th_0, u_0 = lc(a_0) and J_0^k = th_0 * K_0[k].
    const T* K0 = net_.K[0];
    const T* K0J = net_.K0J.data();
    const T* b0 = net_.b[0];
    T* th0 = st.th0.data();
    T* u0 = st.L[1].data();
    T* J0 = u0 + static_cast<size_t>(nb) * m;
    for (int r = 0; r < nb; ++r) {
      T* arow = th0 + r * m;
      for (int j = 0; j < m; ++j) arow[j] = b0[j];
      for (int k = 0; k < d1; ++k) {
        const T sk = s[r * d1 + k];
        for (int j = 0; j < m; ++j) arow[j] += sk * K0[k * m + j];
      }
      T* urow = u0 + r * m;
      for (int j = 0; j < m; ++j) tanh_logcosh(arow[j], arow[j], urow[j]);
      for (int k = 0; k < d; ++k)
        for (int j = 0; j < m; ++j) J0[(static_cast<size_t>(k) * nb + r) * m + j] = arow[j] * K0J[k * m + j];
    }
    // Layers 1..M: [a_i; KJ_i] = [u_{i-1}; J_{i-1}] K_i in one product, then the activation
    // and (i < M) u_i = u_{i-1} + h lc(a_i), J_i = J_{i-1} + h th_i * KJ_i into L_{i+1}.
    for (int i = 1; i <= M; ++i) {
      T* Li = st.L[i].data();
      T* Pi = st.P[i].data();
      blas::gemm(false, false, d1 * nb, m, m, T(1), Li, m, net_.K[i], m, T(0), Pi, m);
      const T* bi = net_.b[i];
      if (i < M) {
        T* Ln = st.L[i + 1].data();
        for (int r = 0; r < nb; ++r) {
          T* arow = Pi + r * m;
          const T* uprev = Li + r * m;
          T* unext = Ln + r * m;
          for (int j = 0; j < m; ++j) {
            T lc;
            tanh_logcosh(arow[j] + bi[j], arow[j], lc);
            unext[j] = uprev[j] + h * lc;
          }
        }
        const size_t off = static_cast<size_t>(nb) * m, len = static_cast<size_t>(d) * nb * m;
        for (size_t e = 0; e < len; ++e) {
          const size_t rj = e % off;
          Ln[off + e] = Li[off + e] + h * Pi[rj] * Pi[off + e];
        }
      } else {
        for (int r = 0; r < nb; ++r) {
          T* arow = Pi + r * m;
          for (int j = 0; j < m; ++j) {
            T lc;
            tanh_logcosh(arow[j] + bi[j], arow[j], lc);
          }
        }
      }
    }
    // z_M = w, z_{i-1} = z_i + h (th_i * z_i) K_i^T.
    T* y = tmp_.data();
    for (int i = M; i >= 1; --i) {
      const T* th = st.P[i].data();
      T* zprev = st.z[i - 1].data();
      for (int r = 0; r < nb; ++r) {
        const T* zi = i == M ? net_.w : st.z[i].data() + r * m;
        for (int j = 0; j < m; ++j) {
          y[r * m + j] = th[r * m + j] * zi[j];
          zprev[r * m + j] = zi[j];
        }
      }
      blas::gemm(false, true, nb, m, m, h, y, m, net_.K[i], m, T(1), zprev, m);
    }
    // g = s S + b + (th_0 * z_0) K_0^T and the trace, then f.
    const T* z0 = st.z[0].data();
    const T* S = net_.S.data();
    T* g = st.g.data();
    T* tr = tr_.data();
    T* p0 = row_.data();  // th_0 * z_0 of one row
    T* c0 = p0 + m;       // sech_0 * z_0 of one row
    for (int r = 0; r < nb; ++r) {
      const T* th = th0 + r * m;
      const T* zr = z0 + r * m;
      for (int j = 0; j < m; ++j) {
        p0[j] = th[j] * zr[j];
        c0[j] = (T(1) - th[j] * th[j]) * zr[j];
      }
      tr[r] = net_.trS + dot(c0, net_.q.data(), m);
      for (int c = 0; c < d1; ++c) {
        T gc = net_.bvec[c];
        for (int k = 0; k < d1; ++k) gc += s[r * d1 + k] * S[k * d1 + c];
        g[r * d1 + c] = gc + dot(p0, K0 + c * m, m);
      }
    }
    for (int i = 1; i <= M; ++i) {
      const T* Pi = st.P[i].data();
      const size_t off = static_cast<size_t>(nb) * m;
      T* ci = row_.data();  // sech_i * z_i of one row
      T* kj2 = ci + m;      // sum_k (KJ_i^k)^2 of one row
      for (int r = 0; r < nb; ++r) {
        const T* th = Pi + r * m;
        const T* zi = i == M ? net_.w : st.z[i].data() + r * m;
        sum_squares(Pi + off + r * m, off, d, m, kj2);
        for (int j = 0; j < m; ++j) ci[j] = (T(1) - th[j] * th[j]) * zi[j];
        tr[r] += h * dot(ci, kj2, m);
      }
    }
    T* sg = st.sgn.data();
    const T* cw = net_.c.data();
    for (int r = 0; r < nb; ++r) {
      T g2 = 0;
      for (int k = 0; k < d; ++k) g2 += cw[k] * (g[r * d1 + k] * g[r * d1 + k]);
      const T kin = g2 / (2 * lambda);
      const T diff = kin - g[r * d1 + d];
      T* o = out + r * zc;
      for (int k = 0; k < d; ++k) o[k] = -(cw[k] * g[r * d1 + k]) / lambda;
      o[d] = -tr[r] / lambda;
      o[d + 1] = kin;
      o[d + 2] = std::fabs(diff);
      sg[r] = diff > 0 ? T(1) : (diff < 0 ? T(-1) : T(0));
    }
  }

  // Row pieces of the reverse sweep as functions with restrict arguments: inline in the
  // class body, GCC does not vectorise them (it cannot rule out aliasing).
  //   zbar_0 = ebar sech_0 + pbar th_0,  thbar_0 = -2 ebar z_0 th_0 + pbar z_0  (ebar = trbar q),
  //   p_0 = th_0 * z_0.
  static void layer0_adjoints(int m, T trbar, const T* __restrict q, const T* __restrict th,
                              const T* __restrict z, const T* __restrict pbar, T* __restrict zbar,
                              T* __restrict thbar, T* __restrict p0) {
    for (int j = 0; j < m; ++j) {
      const T e = trbar * q[j];
      zbar[j] = e * (T(1) - th[j] * th[j]) + pbar[j] * th[j];
      thbar[j] = -2 * e * z[j] * th[j] + pbar[j] * z[j];
      p0[j] = th[j] * z[j];
    }
  }
  //   zbar_i = zbar_{i-1} + ybar th_i + cbar sech_i,  thbar_i = ybar z_i - 2 cbar z_i th_i
  //   (cbar = h trbar kj2).
  static void layer_adjoints(int m, T htrbar, const T* __restrict kj2, const T* __restrict th,
                             const T* __restrict ybar, const T* __restrict zbprev, const T* __restrict z,
                             T* __restrict zbnext, T* __restrict thbar) {
    for (int j = 0; j < m; ++j) {
      const T cbar = htrbar * kj2[j], sech = T(1) - th[j] * th[j];
      zbnext[j] = zbprev[j] + ybar[j] * th[j] + cbar * sech;
      thbar[j] = ybar[j] * z[j] - 2 * cbar * z[j] * th[j];
    }
  }

  // One row of layer i's reverse step (the downward loop in stage_backward); rows k + 1 of
  // P (KJ_i^k), UJ (Jbar_i^k) and R (KJbar_i^k) are `off` elements apart. scratch: 2 m.
  static void layer_reverse(int m, int d, size_t off, T h, T trbar, bool inner, const T* __restrict P,
                            const T* __restrict z, const T* __restrict UJ, T* __restrict thbar, T* __restrict R,
                            T* __restrict scratch) {
    const T* th = P;
    T* sech = scratch;
    T* ci2 = scratch + m;  // 2 h trbar sech_i * z_i
    for (int j = 0; j < m; ++j) {
      sech[j] = T(1) - th[j] * th[j];
      ci2[j] = 2 * h * trbar * sech[j] * z[j];
    }
    for (int k = 0; k < d; ++k) {
      const T* kj = P + off * (k + 1);
      T* kjb = R + off * (k + 1);
      if (inner) {
        const T* jb = UJ + off * (k + 1);
        for (int j = 0; j < m; ++j) {
          thbar[j] += h * jb[j] * kj[j];
          kjb[j] = ci2[j] * kj[j] + h * th[j] * jb[j];
        }
      } else {
        for (int j = 0; j < m; ++j) kjb[j] = ci2[j] * kj[j];
      }
    }
    T* hy = R + off * (d + 1);
    for (int j = 0; j < m; ++j) {
      R[j] = thbar[j] * sech[j] + (inner ? h * th[j] * UJ[j] : T(0));  // abar_i
      hy[j] = h * th[j] * z[j];                                        // h y_i
    }
  }

  // Vector-Jacobian product of one stage: output adjoint [Gx (per sample), Gl, GL, GR
  // (scalars)] -> ybar = dl/dx [nb, d]; parameter adjoints accumulated into grad_.
  void stage_backward(Stage<T>& st, const T* Gx, T Gl, T GL, T GR, T* ybar) {
    const int d = DD ? DD : net_.d, d1 = d + 1, m = MW ? MW : net_.m, M = net_.M, nb = nb_;
    const T h = net_.h, lambda = cfg_.lambda;
    const size_t off = static_cast<size_t>(nb) * m;
    const T* s = st.s.data();
    const T* g = st.g.data();
    const T* th0 = st.th0.data();
    const T* z0 = st.z[0].data();
    const T* K0 = net_.K[0];
    const T* K0J = net_.K0J.data();
    const T* S = net_.S.data();
    T* grad = grad_;
    T* Sbar = grad + net_.offS;

    // Output adjoints -> gbar = dl/dg [nb, d+1], trbar = dl/dtr (a scalar here):
    //   v = -c g_x / lambda, kin = sum c g_x^2 / (2 lambda): d/dg_x = c (-Gv + (GL + sgn GR) g_x) / lambda
    //   res = |kin - g_t|: d/dg_t = -sgn GR;   div = -tr / lambda: trbar = -Gl / lambda.
    T* gbar = gbar_.data();
    const T* sg = st.sgn.data();
    const T* cw = net_.c.data();
    for (int r = 0; r < nb; ++r) {
      const T rs = GR * sg[r];
      for (int k = 0; k < d; ++k)
        gbar[r * d1 + k] = cw[k] * (g[r * d1 + k] * (GL + rs) - Gx[r * d + k]) / lambda;
      gbar[r * d1 + d] = -rs;
    }
    const T trbar = -Gl / lambda;

    // g = s S + b + p_0 K_0^T, p_0 = th_0 * z_0:
    //   pbar = gbar K_0, K_0bar += gbar^T p_0 (in the stacked product below), bbar += colsum gbar,
    //   Sbar += s^T gbar, sbar = gbar S (x columns only: s's t column is no state).
    // tr = (sech_0 * z_0) . q + ...:  zbar_0 = ebar sech_0 + pbar th_0,
    //   thbar_0 = -2 ebar z_0 th_0 + pbar z_0 with ebar = trbar q.
    T* sbar = sbar_.data();
    T* zbar0 = st.L[1].data() + static_cast<size_t>(d1) * nb * m;  // zbar_0 in L_1's last rows
    T* thb0 = thbar_[0].data();
    T* bvbar = grad + net_.offbvec;
    T* Y = Y0_.data();  // rows [p_0; abar_0; Jbar_0^k * th_0], see the stacked product
    T* pb = row_.data();
    for (int r = 0; r < nb; ++r) {
      const T* gb = gbar + r * d1;
      const T* th = th0 + r * m;
      const T* zr = z0 + r * m;
      for (int j = 0; j < m; ++j) pb[j] = gb[0] * K0[j];
      for (int c = 1; c < d1; ++c)
        for (int j = 0; j < m; ++j) pb[j] += gb[c] * K0[c * m + j];
      for (int c = 0; c < d1; ++c) {
        bvbar[c] += gb[c];
        for (int k = 0; k < d1; ++k) Sbar[k * d1 + c] += s[r * d1 + k] * gb[c];
      }
      for (int k = 0; k < d; ++k) {
        T acc = 0;
        for (int c = 0; c < d1; ++c) acc += gb[c] * S[k * d1 + c];
        sbar[r * d1 + k] = acc;
      }
      layer0_adjoints(m, trbar, net_.q.data(), th, zr, pb, zbar0 + r * m, thb0 + r * m, Y + r * m);
    }

    // z_{i-1} = z_i + h y_i K_i^T, y_i = th_i * z_i, i = 1..M, and the trace terms of layer i
    // (c_i = sech_i * z_i, cbar_i = h trbar sum_k (KJ_i^k)^2):
    //   ybar = h zbar_{i-1} K_i,  K_ibar += h zbar_{i-1}^T y_i (later, in the stacked product),
    //   zbar_i = zbar_{i-1} + ybar th_i + cbar_i sech_i,  thbar_i = ybar z_i - 2 cbar_i z_i th_i.
    for (int i = 1; i <= M; ++i) {
      const T* Pi = st.P[i].data();
      const T* zbprev = st.L[i].data() + static_cast<size_t>(d1) * nb * m;
      T* zbnext = i < M ? st.L[i + 1].data() + static_cast<size_t>(d1) * nb * m : zbarM_.data();
      T* yb = tmp_.data();
      blas::gemm(false, false, nb, m, m, h, zbprev, m, net_.K[i], m, T(0), yb, m);
      T* tb = thbar_[i].data();
      T* kj2 = row_.data();
      for (int r = 0; r < nb; ++r) {
        const T* th = Pi + r * m;
        const T* zi = i == M ? net_.w : st.z[i].data() + r * m;
        sum_squares(Pi + off + r * m, off, d, m, kj2);
        layer_adjoints(m, h * trbar, kj2, th, yb + r * m, zbprev + r * m, zi, zbnext + r * m, tb + r * m);
      }
    }
    T* wbar = grad + net_.offw;
    for (int r = 0; r < nb; ++r)
      for (int j = 0; j < m; ++j) wbar[j] += zbarM_.data()[r * m + j];

    // Layers M..1, with R = [abar_i; KJbar_i; h y_i] and UJbar = [ubar; Jbar] running:
    //   J_i = J_{i-1} + h th_i * KJ_i (i < M):  thbar_i += h sum_k Jbar_i^k * KJ_i^k,
    //   KJbar_i = 2 h trbar c_i * KJ_i (+ h th_i * Jbar_i),
    //   u_i = u_{i-1} + h lc(a_i), th_i = tanh(a_i):  abar_i = thbar_i sech_i (+ h th_i ubar_i),
    //   K_ibar += [u_{i-1}; J_{i-1}; zbar_{i-1}]^T R,  b_ibar += colsum abar_i,
    //   [ubar; Jbar] (+)= [abar_i; KJbar_i] K_i^T.
    T* R = R_.data();
    T* UJ = UJbar_.data();
    for (int i = M; i >= 1; --i) {
      const T* Pi = st.P[i].data();
      T* tb = thbar_[i].data();
      for (int r = 0; r < nb; ++r) {
        const size_t e0 = static_cast<size_t>(r) * m;
        layer_reverse(m, d, off, h, trbar, i < M, Pi + e0, i == M ? net_.w : st.z[i].data() + e0, UJ + e0,
                      tb + e0, R + e0, row_.data());
      }
      T* bb = grad + net_.offb[i];
      for (int r = 0; r < nb; ++r)
        for (int j = 0; j < m; ++j) bb[j] += R[r * m + j];
      blas::gemm(true, false, m, m, (d + 2) * nb, T(1), st.L[i].data(), m, R, m, T(1), grad + net_.offK[i], m);
      blas::gemm(false, true, d1 * nb, m, m, T(1), R, m, net_.K[i], m, i < M ? T(1) : T(0), UJ, m);
    }

    // Layer 0: J_0^k = th_0 * sqrt(c_k) K_0[k] (k < d):  thbar_0 += sum_k Jbar_0^k sqrt(c_k) K_0[k],
    //   K_0bar[k] += sqrt(c_k) colsum(Jbar_0^k * th_0);
    //   the trace's q: K_0bar[k] += 2 trbar c_k K_0[k] * colsum(sech_0 z_0);
    //   sum_k c_k S_kk: Sbar_kk += nb trbar c_k.  a_0: abar_0 = thbar_0 sech_0 + th_0 ubar_0,
    //   K_0bar += s^T abar_0,  b_0bar += colsum abar_0,  sbar += abar_0 K_0^T (x columns).
    T* colsum = row_.data();  // colsum(sech_0 z_0)
    for (int j = 0; j < m; ++j) colsum[j] = 0;
    for (int r = 0; r < nb; ++r) {
      const T* th = th0 + r * m;
      const T* zr = z0 + r * m;
      T* tb = thb0 + r * m;
      const T* ub = UJ + r * m;
      for (int k = 0; k < d; ++k) {
        const T* jb = UJ + off * (k + 1) + r * m;
        T* jt = Y + off * (k + 2) + r * m;
        for (int j = 0; j < m; ++j) {
          tb[j] += jb[j] * K0J[k * m + j];
          jt[j] = jb[j] * th[j];
        }
      }
      T* ab = Y + off + r * m;
      for (int j = 0; j < m; ++j) {
        const T sech = T(1) - th[j] * th[j];
        colsum[j] += sech * zr[j];
        ab[j] = tb[j] * sech + th[j] * ub[j];
      }
      for (int k = 0; k < d; ++k) sbar[r * d1 + k] += dot(ab, K0 + k * m, m);
    }
    // The stacked product [K_0bar; b_0bar] += X^T Y with X = [[gbar, 0]; [s, 1]; [sqrt(c_k) e_k, 0] for k < d]
    // ([(2 + d) nb, d + 2]) and Y = [p_0; abar_0; Jbar_0^k * th_0]: gbar^T p_0 + s^T abar_0 +
    // colsum(Jbar_0^k * th_0) into K_0bar's rows, colsum(abar_0) into b_0bar (stored right after).
    T* X = X0_.data();
    const int xc = d1 + 1;
    for (int r = 0; r < nb; ++r) {
      for (int c = 0; c < d1; ++c) X[r * xc + c] = gbar[r * d1 + c], X[(nb + r) * xc + c] = s[r * d1 + c];
      X[r * xc + d1] = 0, X[(nb + r) * xc + d1] = 1;
    }
    for (int k = 0; k < d; ++k) {
      const T sck = std::sqrt(net_.c[k]);
      for (int r = 0; r < nb; ++r)
        for (int c = 0; c < xc; ++c) X[((2 + k) * nb + r) * xc + c] = c == k ? sck : T(0);
    }
    T* K0bar = grad + net_.offK[0];  // b_0bar follows at offb[0] = offK[0] + (d + 1) m
    blas::gemm(true, false, xc, m, (2 + d) * nb, T(1), X, xc, Y, m, T(1), K0bar, m);
    for (int k = 0; k < d; ++k) {
      for (int j = 0; j < m; ++j) K0bar[k * m + j] += 2 * trbar * (net_.c[k] * K0[k * m + j]) * colsum[j];
      Sbar[k * d1 + k] += static_cast<T>(nb) * trbar * net_.c[k];
    }
    for (int r = 0; r < nb; ++r)
      for (int k = 0; k < d; ++k) ybar[r * d + k] = sbar[r * d1 + k];
  }

  const Net<T>& net_;
  const Config<T>& cfg_;
  const int B_;
  const int zc_;
  int nb_ = 0;
  T* grad_ = nullptr;
  std::vector<Stage<T>> stages_;
  Buffer<T> states_, k_, ksum_, xbar_, gx_, ybar_[4], tr_, gbar_, sbar_, tmp_, zbarM_, R_, UJbar_, X0_, Y0_;
  Buffer<T> row_;  // one or two rows of m for per-sample temporaries
  std::vector<Buffer<T>> thbar_;
};

template <class T>
void run_blocks_impl(const Net<T>& net, const Config<T>& cfg, const T* x, int64_t n, int B, int64_t first,
                     int64_t stride, Slot<T>* slots) {
  auto loop = [&](auto& block) {
    for (int64_t b = first; b * B < n; b += stride) {
      const int64_t lo = b * B, nb = std::min<int64_t>(B, n - lo);
      block.run(x + lo * net.d, static_cast<int>(nb), slots[b]);
    }
  };
  if (net.d == 2 && net.m == 32) {  // OT-Flow's 2D toys
    Block<T, 2, 32> block(net, cfg, B);
    loop(block);
  } else {
    Block<T> block(net, cfg, B);
    loop(block);
  }
}

// ---- grad_s Phi and Hess_xx Phi of a batch and their reverse (block_kernel.h) ----
// The loops over j touch element j of distinct arrays only; ivdep tells GCC so, which it cannot
// prove for this many pointers and would otherwise leave some loops scalar.

// Per-thread scratch arrays of the Hessian sweep, kept between calls (fresh pages each call
// cost more than the arithmetic at these sizes). Slot k holds at least n elements.
template <class T>
T* scratch(int k, size_t n, bool zero) {
  thread_local std::vector<T> slots[8];
  if (slots[k].size() < n) slots[k].resize(n);
  if (zero) std::fill_n(slots[k].data(), n, T(0));
  return slots[k].data();
}

template <class T>
void hessian_forward_impl(const Net<T>& net, const T* s, int n, const Tape<T>& tp, T* grad, T* hess) {
  const int d = net.d, d1 = d + 1, m = net.m, M = net.M;
  const T h = net.h;
  const size_t nm = static_cast<size_t>(n) * m;
  const T* K0 = net.K[0];
  // a_0 = s K_0 + b_0 (K = d + 1 is tiny: by hand); th_0, u_0 = lc(a_0).
  for (int r = 0; r < n; ++r) {
    T* th = tp.th + static_cast<size_t>(r) * m;
    T* u = tp.u + static_cast<size_t>(r) * m;
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) th[j] = net.b[0][j];
    for (int k = 0; k < d1; ++k)
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) th[j] += s[r * d1 + k] * K0[k * m + j];
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) tanh_logcosh(th[j], th[j], u[j]);
  }
  // a_i = u_{i-1} K_i + b_i, th_i, u_i = u_{i-1} + h lc(a_i) (i < M).
  for (int i = 1; i <= M; ++i) {
    T* th = tp.th + i * nm;
    const T* uprev = tp.u + (i - 1) * nm;
    blas::gemm(false, false, n, m, m, T(1), uprev, m, net.K[i], m, T(0), th, m);
    const T* bi = net.b[i];
    T* unext = i < M ? tp.u + i * nm : nullptr;
    for (int r = 0; r < n; ++r) {
      T* a = th + static_cast<size_t>(r) * m;
      const T* up = uprev + static_cast<size_t>(r) * m;
      if (unext) {
        T* un = unext + static_cast<size_t>(r) * m;
        #pragma GCC ivdep
        for (int j = 0; j < m; ++j) {
          T lc;
          tanh_logcosh(a[j] + bi[j], a[j], lc);
          un[j] = up[j] + h * lc;
        }
      } else {
        #pragma GCC ivdep
        for (int j = 0; j < m; ++j) {
          T lc;
          tanh_logcosh(a[j] + bi[j], a[j], lc);
        }
      }
    }
  }
  // z_M = w, z_{i-1} = z_i + h (th_i * z_i) K_i^T.
  T* y = scratch<T>(0, nm, false);
  for (int i = M; i >= 1; --i) {
    const T* th = tp.th + i * nm;
    T* zprev = tp.z + (i - 1) * nm;
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      const T* zi = i == M ? net.w : tp.z + i * nm + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) y[o + j] = th[o + j] * zi[j], zprev[o + j] = zi[j];
    }
    blas::gemm(false, true, n, m, m, h, y, m, net.K[i], m, T(1), zprev, m);
  }
  // g = s S + b + (th_0 * z_0) K_0^T.
  std::vector<T> p0(m);
  for (int r = 0; r < n; ++r) {
    const T* th = tp.th + static_cast<size_t>(r) * m;
    const T* z = tp.z + static_cast<size_t>(r) * m;
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) p0[j] = th[j] * z[j];
    for (int c = 0; c < d1; ++c) {
      T gc = net.bvec[c];
      for (int k = 0; k < d1; ++k) gc += s[r * d1 + k] * net.S[k * d1 + c];
      grad[r * d1 + c] = gc + dot(p0.data(), K0 + c * m, m);
    }
  }
  // J_0^k = th_0 * K_0[k]; P_i = J_{i-1} K_i; J_i = J_{i-1} + h th_i * P_i.
  for (int k = 0; k < d; ++k)
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) tp.J[k * nm + o + j] = tp.th[o + j] * K0[k * m + j];
    }
  for (int i = 1; i <= M; ++i) {
    const T* Jprev = tp.J + (i - 1) * d * nm;
    T* P = tp.P + (i - 1) * d * nm;
    blas::gemm(false, false, d * n, m, m, T(1), Jprev, m, net.K[i], m, T(0), P, m);
    if (i < M) {
      const T* th = tp.th + i * nm;
      T* J = tp.J + i * d * nm;
      for (int k = 0; k < d; ++k)
        for (size_t e = 0; e < nm; ++e) J[k * nm + e] = Jprev[k * nm + e] + h * th[e] * P[k * nm + e];
    }
  }
  // Hess_kl = sum_j c_0j K_0[k, j] K_0[l, j] + sum_i h c_i . (P_i^k * P_i^l) + S_kl.
  std::vector<T> c(m), cp(m);
  for (int r = 0; r < n; ++r) {
    const size_t o = static_cast<size_t>(r) * m;
    T* H = hess + static_cast<size_t>(r) * d * d;
    for (int k = 0; k < d; ++k)
      for (int l = 0; l < d; ++l) H[k * d + l] = net.S[k * d1 + l];
    for (int i = 0; i <= M; ++i) {
      const T* th = tp.th + i * nm + o;
      const T* z = i == M ? net.w : tp.z + i * nm + o;
      const T hi = i == 0 ? T(1) : h;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) c[j] = (T(1) - th[j] * th[j]) * z[j] * hi;
      for (int k = 0; k < d; ++k) {
        const T* Pk = i == 0 ? K0 + k * m : tp.P + ((i - 1) * d + k) * nm + o;
        #pragma GCC ivdep
        for (int j = 0; j < m; ++j) cp[j] = c[j] * Pk[j];
        for (int l = k; l < d; ++l) {
          const T* Pl = i == 0 ? K0 + l * m : tp.P + ((i - 1) * d + l) * nm + o;
          const T acc = dot(cp.data(), Pl, m);
          H[k * d + l] += acc;
          if (l != k) H[l * d + k] += acc;
        }
      }
    }
  }
}

template <class T>
void hessian_backward_impl(const Net<T>& net, const T* s, int n, const Tape<T>& tp, const T* gbar, const T* hbar,
                           T* sbar, T* pgrad) {
  const int d = net.d, d1 = d + 1, m = net.m, M = net.M;
  const T h = net.h;
  const size_t nm = static_cast<size_t>(n) * m;
  const T* K0 = net.K[0];
  T* Sbar = pgrad + net.offS;
  T* K0bar = pgrad + net.offK[0];
  T* thbar = scratch<T>(0, (M + 1) * nm, true);
  T* zbar = scratch<T>(1, (M + 1) * nm, true);  // zbar_M: per sample, summed into wbar
  std::vector<T> W(d * d), pb(m), q(m), cz(m);
  // g and the direct Hessian terms. W = (hbar + hbar^T) / 2 for the products P^k P^l.
  for (int r = 0; r < n; ++r) {
    const size_t o = static_cast<size_t>(r) * m;
    const T* gb = gbar + r * d1;
    const T* hb = hbar + static_cast<size_t>(r) * d * d;
    for (int k = 0; k < d; ++k)
      for (int l = 0; l < d; ++l) {
        W[k * d + l] = (hb[k * d + l] + hb[l * d + k]) / 2;
        Sbar[k * d1 + l] += hb[k * d + l];
      }
    for (int c = 0; c < d1; ++c) {
      pgrad[net.offbvec + c] += gb[c];
      T acc = 0;
      for (int k = 0; k < d1; ++k) {
        Sbar[k * d1 + c] += s[r * d1 + k] * gb[c];
        acc += gb[k] * net.S[c * d1 + k];
      }
      sbar[r * d1 + c] = acc;
    }
    const T* th0 = tp.th + o;
    const T* z0 = tp.z + o;
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) pb[j] = 0;
    for (int c = 0; c < d1; ++c)
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) {
        pb[j] += gb[c] * K0[c * m + j];
        K0bar[c * m + j] += gb[c] * th0[j] * z0[j];
      }
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) thbar[o + j] += pb[j] * z0[j], zbar[o + j] += pb[j] * th0[j];
    // Layer i's Hessian term h_i sum_j c_ij sum_kl W_kl P^k_j P^l_j (P_0^k = K_0[k], h_0 = 1):
    //   cbar_ij = h_i sum_kl W_kl P^k_j P^l_j;  c = sech * z: thbar -= 2 th z cbar, zbar += sech cbar;
    //   layer 0: K_0bar[k] += 2 c_0 * sum_l W_kl K_0[l] (layers i >= 1: Pbar in the sweep below).
    for (int i = 0; i <= M; ++i) {
      const T* th = tp.th + i * nm + o;
      const T* z = i == M ? net.w : tp.z + i * nm + o;
      const T hi = i == 0 ? T(1) : h;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) q[j] = 0;
      for (int k = 0; k < d; ++k) {
        const T* Pk = i == 0 ? K0 + k * m : tp.P + ((i - 1) * d + k) * nm + o;
        for (int l = 0; l < d; ++l) {
          const T* Pl = i == 0 ? K0 + l * m : tp.P + ((i - 1) * d + l) * nm + o;
          const T wkl = hi * W[k * d + l];
          #pragma GCC ivdep
          for (int j = 0; j < m; ++j) q[j] += wkl * Pk[j] * Pl[j];
        }
      }
      T* tb = thbar + i * nm + o;
      T* zb = zbar + i * nm + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) {
        const T sech = T(1) - th[j] * th[j];
        tb[j] += -2 * th[j] * z[j] * q[j];
        zb[j] += sech * q[j];
        cz[j] = 2 * sech * z[j];
      }
      if (i == 0)
        for (int k = 0; k < d; ++k)
          for (int l = 0; l < d; ++l) {
            const T wkl = W[k * d + l];
            #pragma GCC ivdep
            for (int j = 0; j < m; ++j) K0bar[k * m + j] += cz[j] * wkl * K0[l * m + j];
          }
    }
  }
  // Jacobian recursion, layers M..1: Pbar_i^k = 2 h c_i * sum_l W_kl P_i^l (+ h th_i * Jbar_i^k),
  // thbar_i += h sum_k Jbar_i^k * P_i^k (i < M), K_ibar += J_{i-1}^T Pbar_i, Jbar_{i-1} = Jbar_i + Pbar_i K_i^T.
  T* Pbar = scratch<T>(2, d * nm, false);
  T* Jbar = scratch<T>(3, d * nm, true);
  for (int i = M; i >= 1; --i) {
    const T* th = tp.th + i * nm;
    const T* P = tp.P + (i - 1) * d * nm;
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      const T* hb = hbar + static_cast<size_t>(r) * d * d;
      for (int k = 0; k < d; ++k)
        for (int l = 0; l < d; ++l) W[k * d + l] = (hb[k * d + l] + hb[l * d + k]) / 2;
      const T* z = i == M ? net.w : tp.z + i * nm + o;
      const T* t = th + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) cz[j] = 2 * h * (T(1) - t[j] * t[j]) * z[j];
      T* tb = thbar + i * nm + o;
      for (int k = 0; k < d; ++k) {
        T* pb = Pbar + k * nm + o;
        #pragma GCC ivdep
        for (int j = 0; j < m; ++j) pb[j] = 0;
        for (int l = 0; l < d; ++l) {
          const T wkl = W[k * d + l];
          const T* pl = P + l * nm + o;
          #pragma GCC ivdep
          for (int j = 0; j < m; ++j) pb[j] += wkl * pl[j];
        }
        #pragma GCC ivdep
        for (int j = 0; j < m; ++j) pb[j] *= cz[j];
        if (i < M) {
          const T* jb = Jbar + k * nm + o;
          const T* pk = P + k * nm + o;
          #pragma GCC ivdep
          for (int j = 0; j < m; ++j) {
            pb[j] += h * t[j] * jb[j];
            tb[j] += h * jb[j] * pk[j];
          }
        }
      }
    }
    blas::gemm(true, false, m, m, d * n, T(1), tp.J + (i - 1) * d * nm, m, Pbar, m, T(1),
               pgrad + net.offK[i], m);
    blas::gemm(false, true, d * n, m, m, T(1), Pbar, m, net.K[i], m, i < M ? T(1) : T(0), Jbar, m);
  }
  // J_0^k = th_0 * K_0[k]: thbar_0 += sum_k Jbar_0^k * K_0[k], K_0bar[k] += colsum(Jbar_0^k * th_0).
  for (int k = 0; k < d; ++k)
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      const T* jb = Jbar + k * nm + o;
      const T* t = tp.th + o;
      T* tb = thbar + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) {
        tb[j] += jb[j] * K0[k * m + j];
        K0bar[k * m + j] += jb[j] * t[j];
      }
    }
  // z recursion, i = 1..M: z_{i-1} = z_i + h y_i K_i^T, y_i = th_i * z_i:
  //   ybar = h zbar_{i-1} K_i, K_ibar += h zbar_{i-1}^T y_i, thbar_i += ybar z_i, zbar_i += zbar_{i-1} + ybar th_i.
  T* ybar = scratch<T>(4, nm, false);
  T* y = scratch<T>(5, nm, false);
  for (int i = 1; i <= M; ++i) {
    const T* th = tp.th + i * nm;
    const T* zb = zbar + (i - 1) * nm;
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      const T* z = i == M ? net.w : tp.z + i * nm + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) y[o + j] = th[o + j] * z[j];
    }
    blas::gemm(false, false, n, m, m, h, zb, m, net.K[i], m, T(0), ybar, m);
    blas::gemm(true, false, m, m, n, h, zb, m, y, m, T(1), pgrad + net.offK[i], m);
    for (int r = 0; r < n; ++r) {
      const size_t o = static_cast<size_t>(r) * m;
      const T* z = i == M ? net.w : tp.z + i * nm + o;
      T* tb = thbar + i * nm + o;
      T* zn = zbar + i * nm + o;
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) {
        tb[j] += ybar[o + j] * z[j];
        zn[j] += zb[o + j] + ybar[o + j] * th[o + j];
      }
    }
  }
  for (int r = 0; r < n; ++r)
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) pgrad[net.offw + j] += zbar[M * nm + static_cast<size_t>(r) * m + j];
  // Activations, layers M..1: abar_i = thbar_i sech_i (+ h ubar_i th_i), K_ibar += u_{i-1}^T abar_i,
  // b_ibar += colsum abar_i, ubar_{i-1} = ubar_i + abar_i K_i^T (u_M is not used).
  T* abar = scratch<T>(6, nm, false);
  T* ubar = scratch<T>(7, nm, true);
  for (int i = M; i >= 1; --i) {
    const T* th = tp.th + i * nm;
    for (size_t e = 0; e < nm; ++e)
      abar[e] = thbar[i * nm + e] * (T(1) - th[e] * th[e]) + (i < M ? h * ubar[e] * th[e] : T(0));
    blas::gemm(true, false, m, m, n, T(1), tp.u + (i - 1) * nm, m, abar, m, T(1), pgrad + net.offK[i], m);
    for (int r = 0; r < n; ++r)
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) pgrad[net.offb[i] + j] += abar[static_cast<size_t>(r) * m + j];
    blas::gemm(false, true, n, m, m, T(1), abar, m, net.K[i], m, i < M ? T(1) : T(0), ubar, m);
  }
  // Layer 0: abar_0 = thbar_0 sech_0 + ubar_0 th_0; K_0bar += s^T abar_0, b_0bar += colsum, sbar += abar_0 K_0^T.
  for (int r = 0; r < n; ++r) {
    const size_t o = static_cast<size_t>(r) * m;
    #pragma GCC ivdep
    for (int j = 0; j < m; ++j) {
      const T t = tp.th[o + j];
      abar[o + j] = thbar[o + j] * (T(1) - t * t) + ubar[o + j] * t;
      pgrad[net.offb[0] + j] += abar[o + j];
    }
    for (int c = 0; c < d1; ++c) {
      #pragma GCC ivdep
      for (int j = 0; j < m; ++j) K0bar[c * m + j] += s[r * d1 + c] * abar[o + j];
      sbar[r * d1 + c] += dot(abar + o, K0 + c * m, m);
    }
  }
}

}  // namespace mfglab::otflow::kernel::MFGLAB_OTFLOW_KERNEL_ISA

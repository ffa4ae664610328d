// The cnf kernel (equations in cnf_kernel.h), compiled once per instruction set: the including
// file defines MFGLAB_CNF_KERNEL_ISA, the namespace that keeps each compilation's code apart.
#include "cnf_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include <mfglab/blas.h>
#include <mfglab/fast_exp.h>

namespace mfglab::cnf::kernel::MFGLAB_CNF_KERNEL_ISA {

// tanh from expm1, which keeps the relative accuracy of small arguments (fast_exp.h).
inline float tanh_fast(float a) {
  const float m = fast::expm1(-2.0f * std::fabs(a));  // in (-1, 0]
  return std::copysign(-m / (2.0f + m), a);
}
inline double tanh_fast(double a) { return std::tanh(a); }

// Value h = act(a) with slope s = act'(a), and act', act'' for the reverse sweep. Formulas as
// mfglab/nn.h (softplus: PyTorch's threshold 20, above which it is the identity).
template <class T, Act A>
struct Activation;

template <class T>
struct Activation<T, Act::tanh> {
  static constexpr bool keep_pre = false;  // act'' da = -2 h dh
  static inline void fwd(T a, T& h, T& s) {
    h = tanh_fast(a);
    s = T(1) - h * h;
  }
  static inline void d12(T a, T& s, T& s2) {
    const T h = tanh_fast(a);
    s = T(1) - h * h;
    s2 = T(-2) * h * s;
  }
};

template <class T>
struct Activation<T, Act::silu> {
  static constexpr bool keep_pre = true;
  static inline T sig(T a) { return T(1) / (T(1) + std::exp(-a)); }
  static inline void fwd(T a, T& h, T& s) {
    const T g = sig(a);
    h = a * g;
    s = g * (T(1) + a * (T(1) - g));
  }
  static inline void d12(T a, T& s, T& s2) {
    const T g = sig(a);
    s = g * (T(1) + a * (T(1) - g));
    s2 = g * (T(1) - g) * (T(2) + a * (T(1) - T(2) * g));
  }
};

template <class T>
struct Activation<T, Act::softplus> {
  static constexpr bool keep_pre = true;
  static inline T sig(T a) { return T(1) / (T(1) + std::exp(-a)); }
  static inline void fwd(T a, T& h, T& s) {
    h = a > T(20) ? a : std::max(a, T(0)) + std::log1p(std::exp(-std::fabs(a)));
    s = sig(a);
  }
  static inline void d12(T a, T& s, T& s2) {
    s = sig(a);
    s2 = s * (T(1) - s);
  }
};

template <class T>
struct Activation<T, Act::logcosh> {
  static constexpr bool keep_pre = true;
  static inline void fwd(T a, T& h, T& s) {
    const T aa = std::fabs(a);
    h = aa + std::log1p(std::exp(T(-2) * aa)) - T(0.69314718055994530942);
    s = std::tanh(a);
  }
  static inline void d12(T a, T& s, T& s2) {
    s = std::tanh(a);
    s2 = T(1) - s * s;
  }
};

template <class T>
struct Activation<T, Act::relu> {
  static constexpr bool keep_pre = true;
  static inline void fwd(T a, T& h, T& s) {
    h = a > T(0) ? a : T(0);
    s = a > T(0) ? T(1) : T(0);
  }
  static inline void d12(T a, T& s, T& s2) {
    s = a > T(0) ? T(1) : T(0);
    s2 = T(0);
  }
};

template <class T>
struct Activation<T, Act::gelu> {
  static constexpr bool keep_pre = true;
  static inline void fwd(T a, T& h, T& s) {
    const T cdf = T(0.5) * (T(1) + std::erf(a * T(M_SQRT1_2)));
    const T pdf = std::exp(T(-0.5) * a * a) * T(0.5 * M_2_SQRTPI * M_SQRT1_2);
    h = a * cdf;
    s = cdf + a * pdf;
  }
  static inline void d12(T a, T& s, T& s2) {
    const T cdf = T(0.5) * (T(1) + std::erf(a * T(M_SQRT1_2)));
    const T pdf = std::exp(T(-0.5) * a * a) * T(0.5 * M_2_SQRTPI * M_SQRT1_2);
    s = cdf + a * pdf;
    s2 = pdf * (T(2) - a * a);
  }
};

// An aligned scratch array (64 bytes: whole cache lines).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) {
    const size_t bytes = std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64);
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
  }
  Buffer(Buffer&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  Buffer(const Buffer&) = delete;
  ~Buffer() { std::free(p_); }
  T* data() const { return p_; }

 private:
  T* p_ = nullptr;
};

// Element-wise pieces as free functions with restrict arguments, so that GCC vectorises them.

// Value rows: a += bias (kept in P when the activation needs it), h = act(a), s = act'(a).
template <class T, Act A>
void activate_values(size_t rows, int w, const T* __restrict bias, T* __restrict P, T* __restrict H,
                     T* __restrict S) {
  for (size_t r = 0; r < rows; ++r) {
    T* __restrict p = P + r * w;
    T* __restrict h = H + r * w;
    T* __restrict s = S + r * w;
    for (int j = 0; j < w; ++j) {
      const T a = p[j] + bias[j];
      p[j] = a;
      Activation<T, A>::fwd(a, h[j], s[j]);
    }
  }
}

template <class T>
void multiply(size_t len, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  for (size_t e = 0; e < len; ++e) out[e] = a[e] * b[e];
}

// Reverse through tanh: abar = hbar (1 - h^2) - 2 h sum_k dhbar^k dh^k, dabar^k = dhbar^k (1 - h^2),
// in place over G = [hbar; dhbar^k]; acc: scratch of len. One simple loop per row block, so
// that each vectorises.
template <class T>
void tanh_reverse(size_t len, int K, const T* __restrict H, T* __restrict G, T* __restrict acc) {
  for (size_t e = 0; e < len; ++e) acc[e] = G[len + e] * H[len + e];
  for (int k = 2; k <= K; ++k) {
    const T* __restrict g = G + k * len;
    const T* __restrict h = H + k * len;
    for (size_t e = 0; e < len; ++e) acc[e] += g[e] * h[e];
  }
  for (int k = 1; k <= K; ++k) {
    T* __restrict g = G + k * len;
    for (size_t e = 0; e < len; ++e) g[e] *= T(1) - H[e] * H[e];
  }
  for (size_t e = 0; e < len; ++e) {
    const T h = H[e];
    G[e] = G[e] * (T(1) - h * h) - T(2) * h * acc[e];
  }
}

// The same for an activation whose pre-activations P = [a; da^k] were kept.
template <class T, Act A>
void general_reverse(size_t len, int K, const T* __restrict P, T* __restrict G, T* __restrict acc) {
  for (size_t e = 0; e < len; ++e) acc[e] = G[len + e] * P[len + e];
  for (int k = 2; k <= K; ++k) {
    const T* __restrict g = G + k * len;
    const T* __restrict p = P + k * len;
    for (size_t e = 0; e < len; ++e) acc[e] += g[e] * p[e];
  }
  for (size_t e = 0; e < len; ++e) {
    T s, s2;
    Activation<T, A>::d12(P[e], s, s2);
    for (int k = 1; k <= K; ++k) G[k * len + e] *= s;
    G[e] = G[e] * s + s2 * acc[e];
  }
}

template <class T>
void add_rows(size_t rows, int w, const T* __restrict X, T* __restrict acc) {
  for (size_t r = 0; r < rows; ++r)
    for (int j = 0; j < w; ++j) acc[j] += X[r * w + j];
}

// sum_j a_j b_j with 16 partial sums in a fixed order: vectorises (a running sum does not,
// float addition not being associative) and gives the same result on every call.
template <class T>
inline T dot(const T* a, const T* b, int m) {
  typedef T V __attribute__((vector_size(16 * sizeof(T))));
  V acc = {};
  int j = 0;
  for (; j + 16 <= m; j += 16) {
    V va, vb;
    std::memcpy(&va, a + j, sizeof va);
    std::memcpy(&vb, b + j, sizeof vb);
    acc += va * vb;
  }
  T tail = 0;
  for (; j < m; ++j) tail += a[j] * b[j];
  T sum = 0;
  for (int l = 0; l < 16; ++l) sum += acc[l];
  return sum + tail;
}

template <class T, Act A>
class Block {
  using Act_ = Activation<T, A>;

 public:
  Block(const Net<T>& net, const Config<T>& cfg, int B)
      : net_(&net), cfg_(&cfg), B_(B), K_(cfg.exact ? net.d : cfg.probes) {
    const int d = net.d, w = net.w, D = net.depth, K = K_;
    const size_t stack = static_cast<size_t>(K + 1) * B * w;
    for (int i = 0; i < 4 * cfg.steps; ++i) {
      Stage st;
      st.y = Buffer<T>(static_cast<size_t>(B) * d);
      for (int l = 0; l < D; ++l) {
        st.H.emplace_back(stack);
        if (Act_::keep_pre) st.P.emplace_back(stack);
      }
      stages_.push_back(std::move(st));
    }
    pre_ = Buffer<T>(stack);
    slope_ = Buffer<T>(static_cast<size_t>(B) * w);
    G_ = Buffer<T>(stack), G2_ = Buffer<T>(stack);
    V_ = Buffer<T>(static_cast<size_t>(K + 1) * B * d);
    states_ = Buffer<T>(static_cast<size_t>(cfg.steps + 1) * B * (d + 1));
    k_ = Buffer<T>(static_cast<size_t>(B) * (d + 1)), ksum_ = Buffer<T>(static_cast<size_t>(B) * (d + 1));
    xbar_ = Buffer<T>(static_cast<size_t>(B) * d), gx_ = Buffer<T>(static_cast<size_t>(B) * d);
    for (auto& yb : ybar_) yb = Buffer<T>(static_cast<size_t>(B) * d);
    acc_ = Buffer<T>(static_cast<size_t>(d + 2) * w);
    U_ = Buffer<T>(static_cast<size_t>(std::max(1, K)) * B * d);
  }

  // Whether this block's buffers suit another call, and pointing it there.
  bool fits(const Net<T>& net, const Config<T>& cfg, int B) const {
    return B == B_ && net.d == net_->d && net.w == net_->w && net.depth == net_->depth &&
           cfg.steps == cfg_->steps && (cfg.exact ? net.d : cfg.probes) == K_;
  }
  void bind(const Net<T>& net, const Config<T>& cfg) { net_ = &net, cfg_ = &cfg; }

  // Rows [lo, lo + nb) of the batch x (row-major [n, d]) into slot.
  void run(const T* x, int64_t lo, int nb, Slot<T>& slot) {
    nb_ = nb;
    const int d = net_->d, zc = d + 1, steps = cfg_->steps, K = K_;  // K: tangent directions
    const T dt = T(1) / static_cast<T>(steps);
    // This block's probes, [K, nb, d].
    if (!cfg_->exact)
      for (int k = 0; k < K; ++k)
        std::memcpy(U_.data() + static_cast<size_t>(k) * nb * d, cfg_->eps + (static_cast<size_t>(k) * cfg_->n + lo) * d,
                    sizeof(T) * nb * d);
    T* Z0 = states_.data();
    for (int r = 0; r < nb; ++r) {
      for (int k = 0; k < d; ++k) Z0[r * zc + k] = x[(lo + r) * d + k];
      Z0[r * zc + d] = 0;
    }
    for (int s = 0; s < steps; ++s) {
      forward_step(s, dt);
      const T* Z = state(s + 1);
      bool ok = true;
      for (int e = 0; e < nb * zc; ++e) ok &= std::isfinite(Z[e]);
      if (!ok) {
        slot.bad_step = s + 1;
        return;
      }
    }
    const T* Z = state(steps);
    const double c = 0.5 * d * std::log(2 * M_PI);
    double sum = 0;
    for (int r = 0; r < nb; ++r) {
      double x2 = 0;
      for (int k = 0; k < d; ++k) x2 += static_cast<double>(Z[r * zc + k]) * Z[r * zc + k];
      const double lp = -0.5 * x2 - c + Z[r * zc + d];
      if (cfg_->log_prob) cfg_->log_prob[lo + r] = static_cast<T>(lp);
      sum -= lp;
    }
    slot.nll_sum = sum;
    if (!cfg_->want_grad) return;

    // Terminal adjoints of seed * mean NLL: xbar = seed x(1) / n, lbar = -seed / n (constant in time).
    const T scale = cfg_->seed / static_cast<T>(cfg_->n);
    const T lbar = -scale;
    T* xb = xbar_.data();
    for (int r = 0; r < nb; ++r)
      for (int k = 0; k < d; ++k) xb[r * d + k] = scale * Z[r * zc + k];
    grad_ = slot.grad.data();

    // Adjoint of z_{s+1} = z_s + dt/6 (k1 + 2 k2 + 2 k3 + k4), y_c = x_s + a_c k_{c-1}:
    //   kbar_c = b_c zbar + a_{c+1} ybar_{c+1},  ybar_c = kbar_c df/dy (y_c),  xbar_s = xbar + sum_c ybar_c.
    const T b[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
    const T a_next[4] = {0, dt / 2, dt / 2, dt};
    for (int s = steps - 1; s >= 0; --s) {
      for (int c = 3; c >= 0; --c) {
        T* G = gx_.data();
        for (int e = 0; e < nb * d; ++e) G[e] = b[c] * xb[e];
        if (c < 3) {
          const T* yb = ybar_[c + 1].data();
          for (int e = 0; e < nb * d; ++e) G[e] += a_next[c + 1] * yb[e];
        }
        stage_backward(stages_[4 * s + c], G, b[c] * lbar, ybar_[c].data());
      }
      for (int c = 0; c < 4; ++c) {
        const T* yb = ybar_[c].data();
        for (int e = 0; e < nb * d; ++e) xb[e] += yb[e];
      }
    }
  }

 private:
  struct Stage {
    Buffer<T> y;                 // the stage's input x, [nb, d]
    T t = 0;                     // and time
    std::vector<Buffer<T>> H;    // per hidden layer [h; dh^1..K], [(K + 1) nb, w]
    std::vector<Buffer<T>> P;    // per hidden layer [a; da^1..K] (activations other than tanh)
  };

  T* state(int s) const { return states_.data() + static_cast<size_t>(s) * B_ * (net_->d + 1); }

  void forward_step(int s, T dt) {
    const int d = net_->d, zc = d + 1, nb = nb_;
    const T t = static_cast<T>(s) * dt;
    const T* Z = state(s);
    T* Zn = state(s + 1);
    T* k = k_.data();
    T* ks = ksum_.data();
    const T a[4] = {0, dt / 2, dt / 2, dt}, wgt[4] = {1, 2, 2, 1};
    for (int c = 0; c < 4; ++c) {
      Stage& st = stages_[4 * s + c];
      T* y = st.y.data();
      for (int r = 0; r < nb; ++r)
        for (int j = 0; j < d; ++j) y[r * d + j] = Z[r * zc + j] + (c == 0 ? T(0) : a[c] * k[r * zc + j]);
      st.t = t + a[c];
      stage_forward(st, k);
      if (c == 0) std::memcpy(ks, k, sizeof(T) * nb * zc);
      else
        for (int e = 0; e < nb * zc; ++e) ks[e] += wgt[c] * k[e];
    }
    for (int e = 0; e < nb * zc; ++e) Zn[e] = Z[e] + dt / 6 * ks[e];
  }

  // f = [v, div v] at the stage's (y, t), into out [nb, d + 1].
  void stage_forward(Stage& st, T* out) {
    const int d = net_->d, w = net_->w, D = net_->depth, K = K_, nb = nb_;
    const size_t off = static_cast<size_t>(nb) * w, rows = static_cast<size_t>(K + 1) * nb;
    const T* y = st.y.data();
    const T* W0 = net_->W[0];
    // Layer 0 by hand (d + 1 inputs): a_0 without its bias (added with the activation), da_0^k.
    T* P = Act_::keep_pre ? st.P[0].data() : pre_.data();
    for (int r = 0; r < nb; ++r) {
      T* a = P + static_cast<size_t>(r) * w;
      for (int j = 0; j < w; ++j) a[j] = st.t * W0[d * w + j];
      for (int k = 0; k < d; ++k) {
        const T yk = y[r * d + k];
        for (int j = 0; j < w; ++j) a[j] += yk * W0[k * w + j];
      }
    }
    for (int k = 0; k < K; ++k) {
      T* da = P + (k + 1) * off;
      if (cfg_->exact) {
        for (int r = 0; r < nb; ++r) std::memcpy(da + static_cast<size_t>(r) * w, W0 + k * w, sizeof(T) * w);
      } else {
        const T* u = U_.data() + static_cast<size_t>(k) * nb * d;
        for (int r = 0; r < nb; ++r) {
          T* row = da + static_cast<size_t>(r) * w;
          for (int j = 0; j < w; ++j) row[j] = u[r * d] * W0[j];
          for (int c = 1; c < d; ++c)
            for (int j = 0; j < w; ++j) row[j] += u[r * d + c] * W0[c * w + j];
        }
      }
    }
    for (int i = 0; i < D; ++i) {
      if (i > 0) {
        P = Act_::keep_pre ? st.P[i].data() : pre_.data();
        blas::gemm(false, false, static_cast<int>(rows), w, w, T(1), st.H[i - 1].data(), w, net_->W[i], w, T(0), P, w);
      }
      T* H = st.H[i].data();
      activate_values<T, A>(nb, w, net_->b[i], P, H, slope_.data());
      for (int k = 1; k <= K; ++k) {
        const T* sl = slope_.data();
        for (int r = 0; r < nb; ++r)
          multiply<T>(w, sl + static_cast<size_t>(r) * w, P + k * off + static_cast<size_t>(r) * w,
                      H + k * off + static_cast<size_t>(r) * w);
      }
    }
    // Output layer: v = h W_D + b_D, div from the tangent rows.
    const T* H = st.H[D - 1].data();
    const T* WT = net_->WoutT.data();
    const T* bD = net_->b[D];
    const T invK = T(1) / static_cast<T>(K);
    for (int r = 0; r < nb; ++r) {
      const T* h = H + static_cast<size_t>(r) * w;
      T* o = out + r * (d + 1);
      for (int j = 0; j < d; ++j) o[j] = bD[j] + dot(h, WT + j * w, w);
      T div = 0;
      if (cfg_->exact) {
        for (int k = 0; k < d; ++k) div += dot(H + (k + 1) * off + static_cast<size_t>(r) * w, WT + k * w, w);
      } else {
        for (int k = 0; k < K; ++k) {
          const T* dh = H + (k + 1) * off + static_cast<size_t>(r) * w;
          const T* u = U_.data() + (static_cast<size_t>(k) * nb + r) * d;
          T e = 0;
          for (int j = 0; j < d; ++j) e += u[j] * dot(dh, WT + j * w, w);
          div += e;
        }
        div *= invK;
      }
      o[d] = div;
    }
  }

  // Vector-Jacobian product of one stage: vbar = Gx [nb, d], divbar = Gl (a scalar) ->
  // ybar [nb, d]; parameter adjoints accumulated into grad_.
  void stage_backward(Stage& st, const T* Gx, T Gl, T* ybar) {
    const int d = net_->d, w = net_->w, D = net_->depth, K = K_, nb = nb_;
    const size_t off = static_cast<size_t>(nb) * w, rows = static_cast<size_t>(K + 1) * nb;
    T* grad = grad_;
    // V = [vbar; dvbar^k], [(K + 1) nb, d].
    T* V = V_.data();
    std::memcpy(V, Gx, sizeof(T) * nb * d);
    if (!cfg_->exact)  // (exact: dvbar^k = Gl e_k, used in closed form below)
      for (int k = 0; k < K; ++k) {
        T* dv = V + (static_cast<size_t>(k) + 1) * nb * d;
        const T g = Gl / static_cast<T>(K);
        const T* u = U_.data() + static_cast<size_t>(k) * nb * d;
        for (int e = 0; e < nb * d; ++e) dv[e] = g * u[e];
      }
    // Output layer: W_D bar += H^T V, b_D bar += colsum vbar, G = V W_D^T.
    const T* Hl = st.H[D - 1].data();
    T* WDbar = grad + net_->offW[D];
    T* bDbar = grad + net_->offb[D];
    for (int r = 0; r < nb; ++r)
      for (int j = 0; j < d; ++j) bDbar[j] += Gx[r * d + j];
    T* G = G_.data();
    T* G2 = G2_.data();
    const T* WT = net_->WoutT.data();
    if (cfg_->exact) {
      // dvbar^k = Gl e_k for every sample: W_D bar[:, k] += Gl colsum(dh^k), dhbar^k = Gl W_D[:, k]^T.
      T* acc = acc_.data();
      for (int k = 0; k < K; ++k) {
        std::fill(acc, acc + w, T(0));
        add_rows<T>(nb, w, Hl + (k + 1) * off, acc);
        for (int c = 0; c < w; ++c) WDbar[c * d + k] += Gl * acc[c];
        T* dhb = G + (k + 1) * off;
        for (int r = 0; r < nb; ++r)
          for (int c = 0; c < w; ++c) dhb[static_cast<size_t>(r) * w + c] = Gl * WT[k * w + c];
      }
      blas::gemm(true, false, w, d, nb, T(1), Hl, w, V, d, T(1), WDbar, d);
      for (int r = 0; r < nb; ++r) {
        T* hb = G + static_cast<size_t>(r) * w;
        for (int c = 0; c < w; ++c) hb[c] = Gx[r * d] * WT[c];
        for (int j = 1; j < d; ++j)
          for (int c = 0; c < w; ++c) hb[c] += Gx[r * d + j] * WT[j * w + c];
      }
    } else {
      blas::gemm(true, false, w, d, static_cast<int>(rows), T(1), Hl, w, V, d, T(1), WDbar, d);
      for (size_t r = 0; r < rows; ++r) {
        T* hb = G + r * w;
        const T* vr = V + r * d;
        for (int c = 0; c < w; ++c) hb[c] = vr[0] * WT[c];
        for (int j = 1; j < d; ++j)
          for (int c = 0; c < w; ++c) hb[c] += vr[j] * WT[j * w + c];
      }
    }
    // Hidden layers, top down; G holds [hbar; dhbar^k] of layer i, becomes [abar; dabar^k].
    for (int i = D - 1; i >= 0; --i) {
      if (Act_::keep_pre) general_reverse<T, A>(off, K, st.P[i].data(), G, slope_.data());
      else tanh_reverse<T>(off, K, st.H[i].data(), G, slope_.data());
      add_rows<T>(nb, w, G, grad + net_->offb[i]);
      if (i > 0) {
        blas::gemm(true, false, w, w, static_cast<int>(rows), T(1), st.H[i - 1].data(), w, G, w, T(1),
                   grad + net_->offW[i], w);
        blas::gemm(false, true, static_cast<int>(rows), w, w, T(1), G, w, net_->W[i], w, T(0), G2, w);
        std::swap(G, G2);
      }
    }
    // Layer 0: W_0x bar += y^T abar + sum_k u_k^T dabar^k, W_0t bar += t colsum abar, ybar = abar W_0x^T.
    const T* y = st.y.data();
    const T* W0 = net_->W[0];
    T* W0bar = grad + net_->offW[0];
    T* acc = acc_.data();  // rows 0..d-1: x part, row d: colsum abar
    std::fill(acc, acc + static_cast<size_t>(d + 1) * w, T(0));
    for (int r = 0; r < nb; ++r) {
      const T* ab = G + static_cast<size_t>(r) * w;
      for (int k = 0; k < d; ++k) {
        const T yk = y[r * d + k];
        T* ak = acc + k * w;
        for (int j = 0; j < w; ++j) ak[j] += yk * ab[j];
      }
      for (int j = 0; j < w; ++j) acc[d * w + j] += ab[j];
      for (int k = 0; k < d; ++k) ybar[r * d + k] = dot(ab, W0 + k * w, w);
    }
    for (int k = 0; k < K; ++k) {
      const T* dab = G + (k + 1) * off;
      if (cfg_->exact) {
        add_rows<T>(nb, w, dab, acc + k * w);
      } else {
        const T* u = U_.data() + static_cast<size_t>(k) * nb * d;
        for (int r = 0; r < nb; ++r)
          for (int c = 0; c < d; ++c) {
            const T uc = u[r * d + c];
            T* ac = acc + c * w;
            const T* row = dab + static_cast<size_t>(r) * w;
            for (int j = 0; j < w; ++j) ac[j] += uc * row[j];
          }
      }
    }
    for (int k = 0; k < d; ++k)
      for (int j = 0; j < w; ++j) W0bar[k * w + j] += acc[k * w + j];
    for (int j = 0; j < w; ++j) W0bar[d * w + j] += st.t * acc[d * w + j];
  }

  const Net<T>* net_;
  const Config<T>* cfg_;
  const int B_, K_;
  int nb_ = 0;
  T* grad_ = nullptr;
  std::vector<Stage> stages_;
  Buffer<T> pre_, slope_, G_, G2_, V_, states_, k_, ksum_, xbar_, gx_, ybar_[4], acc_, U_;
};

template <class T, Act A>
void run_act(const Net<T>& net, const Config<T>& cfg, const T* x, int64_t n, int B, int64_t first, int64_t stride,
             Slot<T>* slots) {
  // One block's buffers per thread, kept from call to call while the shapes stay the same:
  // allocating them anew (tens of MB at width 64) cost page faults on every training step.
  thread_local std::unique_ptr<Block<T, A>> cached;
  if (!cached || !cached->fits(net, cfg, B)) {
    cached.reset();
    cached = std::make_unique<Block<T, A>>(net, cfg, B);
  }
  cached->bind(net, cfg);
  for (int64_t b = first; b * B < n; b += stride) {
    const int64_t lo = b * B;
    cached->run(x, lo, static_cast<int>(std::min<int64_t>(B, n - lo)), slots[b]);
  }
}

template <class T>
void run_blocks_impl(const Net<T>& net, const Config<T>& cfg, const T* x, int64_t n, int B, int64_t first,
                     int64_t stride, Slot<T>* slots) {
  switch (cfg.act) {
    case Act::tanh: return run_act<T, Act::tanh>(net, cfg, x, n, B, first, stride, slots);
    case Act::silu: return run_act<T, Act::silu>(net, cfg, x, n, B, first, stride, slots);
    case Act::softplus: return run_act<T, Act::softplus>(net, cfg, x, n, B, first, stride, slots);
    case Act::logcosh: return run_act<T, Act::logcosh>(net, cfg, x, n, B, first, stride, slots);
    case Act::relu: return run_act<T, Act::relu>(net, cfg, x, n, B, first, stride, slots);
    case Act::gelu: return run_act<T, Act::gelu>(net, cfg, x, n, B, first, stride, slots);
  }
}

}  // namespace mfglab::cnf::kernel::MFGLAB_CNF_KERNEL_ISA

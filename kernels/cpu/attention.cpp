// CPU flash attention (core/dispatch/attention.h): the FlashAttention-2 algorithm in plain C++,
// so the CPU tests check the algorithm the CUDA kernel runs against the naive backend.
//
// Forward, per (head, tile of kBlockQ queries): walk key tiles of kBlockK, keeping for each
// query row a running max m, a running sum l of exp(s - m) and an unnormalised output acc;
// a new tile with a larger max rescales l and acc by exp(m_old - m_new). Causal: tiles wholly
// after the query tile's last row are skipped. Saves lse = m + log(l) per row.
//
// Backward recomputes P = exp(s - lse) instead of storing it, with delta = rowsum(dO * O):
//   dV_j = sum_i P_ij dO_i      dS_ij = P_ij (dO_i . V_j - delta_i)
//   dK_j = scale sum_i dS_ij Q_i    dQ_i = scale sum_j dS_ij K_j
// One pass per key tile writes its dK/dV rows, a second pass per query tile writes dQ: each
// output row has one writer, so there are no atomics and results do not depend on threads.
// Arithmetic in opmath_t (f32 for bf16/f16), OpenMP over (head, tile).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/dispatch/attention.h"

namespace kiln {
namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n elements from p in A: p itself when T is A, else a converted copy in buf.
template <class A, class T>
const A* as_opmath(const T* p, int64_t n, std::vector<A>& buf) {
  if constexpr (std::is_same_v<A, T>) {
    return p;
  } else {
    buf.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
    return buf.data();
  }
}

// Eight partial sums, added in a fixed order: GCC vectorises this (a single running sum is a
// strict left-to-right chain it may not reorder), and the result still does not depend on
// the thread count.
template <class A>
A dot(const A* a, const A* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  A lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lane[k] += a[d + k] * b[d + k];
  A s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

struct Dims {
  int64_t BH, Tq, Tk, D;
};

// ------------------------------------------------------------------ forward
template <class T>
void flash_forward_typed(T* out, opmath_t<T>* lse, const T* q, const T* k, const T* v, Dims n,
                         bool causal, opmath_t<T> scale) {
  using A = opmath_t<T>;
  const int64_t D = n.D, q_tiles = ceil_div(n.Tq, kBlockQ);
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < n.BH * q_tiles; ++task) {
    const int64_t h = task / q_tiles, i0 = (task % q_tiles) * kBlockQ;
    const int64_t i1 = std::min(n.Tq, i0 + kBlockQ), rows = i1 - i0;
    std::vector<A> qbuf, kbuf, vbuf;
    const A* qt = as_opmath<A>(q + (h * n.Tq + i0) * D, rows * D, qbuf);
    std::vector<A> acc(rows * D, A(0)), m(rows, -std::numeric_limits<A>::infinity()), l(rows, A(0));
    std::vector<A> s(kBlockK);
    // Keys after the tile's last query are masked for every row of it.
    const int64_t key_end = causal ? std::min(n.Tk, i1) : n.Tk;
    for (int64_t j0 = 0; j0 < key_end; j0 += kBlockK) {
      const int64_t j1 = std::min(key_end, j0 + kBlockK);
      const A* kt = as_opmath<A>(k + (h * n.Tk + j0) * D, (j1 - j0) * D, kbuf);
      const A* vt = as_opmath<A>(v + (h * n.Tk + j0) * D, (j1 - j0) * D, vbuf);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t visible_end = causal ? std::min(j1, i0 + r + 1) : j1;
        if (visible_end <= j0) continue;
        A tile_max = -std::numeric_limits<A>::infinity();
        for (int64_t j = j0; j < visible_end; ++j) {
          s[j - j0] = dot(qt + r * D, kt + (j - j0) * D, D) * scale;
          tile_max = std::max(tile_max, s[j - j0]);
        }
        const A m_new = std::max(m[r], tile_max);
        const A alpha = std::exp(m[r] - m_new);  // 0 on the first tile (m = -inf)
        A* a = acc.data() + r * D;
        l[r] *= alpha;
        for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
        for (int64_t j = j0; j < visible_end; ++j) {
          const A p = std::exp(s[j - j0] - m_new);
          l[r] += p;
          const A* vj = vt + (j - j0) * D;
          for (int64_t d = 0; d < D; ++d) a[d] += p * vj[d];
        }
        m[r] = m_new;
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const A inv = l[r] > 0 ? A(1) / l[r] : A(0);  // no keys: output 0
      for (int64_t d = 0; d < D; ++d) out[(h * n.Tq + i) * D + d] = static_cast<T>(acc[r * D + d] * inv);
      lse[h * n.Tq + i] = l[r] > 0 ? m[r] + std::log(l[r]) : -std::numeric_limits<A>::infinity();
    }
  }
}

Dims dims_of(const Tensor& q, const Tensor& k) { return {q.size(0), q.size(1), k.size(1), q.size(2)}; }

void flash_forward_kernel(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                          bool causal, double scale) {
  const Dims n = dims_of(q, k);
  KILN_DISPATCH_FLOATING(q.dtype(), "flash attention", [&] {
    using A = opmath_t<scalar_t>;
    flash_forward_typed(static_cast<scalar_t*>(out.data_ptr()), static_cast<A*>(lse.data_ptr()),
                        static_cast<const scalar_t*>(q.data_ptr()), static_cast<const scalar_t*>(k.data_ptr()),
                        static_cast<const scalar_t*>(v.data_ptr()), n, causal, static_cast<A>(scale));
  });
}

// ------------------------------------------------------------------ backward
template <class T>
struct BackwardArgs {
  T *dq, *dk, *dv;
  const T *dout, *q, *k, *v, *out;
  const opmath_t<T>* lse;
};

template <class T>
void flash_backward_typed(const BackwardArgs<T>& g, Dims n, bool causal, opmath_t<T> scale) {
  using A = opmath_t<T>;
  const int64_t D = n.D;
  // delta_i = dO_i . O_i
  std::vector<A> delta(n.BH * n.Tq);
#pragma omp parallel for
  for (int64_t row = 0; row < n.BH * n.Tq; ++row) {
    A s = 0;
    for (int64_t d = 0; d < D; ++d)
      s += static_cast<A>(g.dout[row * D + d]) * static_cast<A>(g.out[row * D + d]);
    delta[row] = s;
  }

  // dK, dV: one task per (head, key tile), over every query that sees the tile.
  const int64_t k_tiles = ceil_div(n.Tk, kBlockK);
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < n.BH * k_tiles; ++task) {
    const int64_t h = task / k_tiles, j0 = (task % k_tiles) * kBlockK;
    const int64_t j1 = std::min(n.Tk, j0 + kBlockK), cols = j1 - j0;
    std::vector<A> qbuf, obuf, kbuf, vbuf;
    const A* qh = as_opmath<A>(g.q + h * n.Tq * D, n.Tq * D, qbuf);
    const A* doh = as_opmath<A>(g.dout + h * n.Tq * D, n.Tq * D, obuf);
    const A* kt = as_opmath<A>(g.k + (h * n.Tk + j0) * D, cols * D, kbuf);
    const A* vt = as_opmath<A>(g.v + (h * n.Tk + j0) * D, cols * D, vbuf);
    std::vector<A> dk(cols * D, A(0)), dv(cols * D, A(0));
    for (int64_t i = causal ? j0 : 0; i < n.Tq; ++i) {  // causal: earlier queries see none of it
      const A* qi = qh + i * D;
      const A* doi = doh + i * D;
      const A li = g.lse[h * n.Tq + i], di = delta[h * n.Tq + i];
      const int64_t visible_end = causal ? std::min(j1, i + 1) : j1;
      for (int64_t j = j0; j < visible_end; ++j) {
        const A* kj = kt + (j - j0) * D;
        const A* vj = vt + (j - j0) * D;
        const A p = std::exp(dot(qi, kj, D) * scale - li);
        const A ds = p * (dot(doi, vj, D) - di) * scale;
        A* dkj = dk.data() + (j - j0) * D;
        A* dvj = dv.data() + (j - j0) * D;
        for (int64_t d = 0; d < D; ++d) {
          dvj[d] += p * doi[d];
          dkj[d] += ds * qi[d];
        }
      }
    }
    for (int64_t e = 0; e < cols * D; ++e) {
      g.dk[(h * n.Tk + j0) * D + e] = static_cast<T>(dk[e]);
      g.dv[(h * n.Tk + j0) * D + e] = static_cast<T>(dv[e]);
    }
  }

  // dQ: one task per (head, query tile), over the keys each row sees.
  const int64_t q_tiles = ceil_div(n.Tq, kBlockQ);
#pragma omp parallel for schedule(dynamic)
  for (int64_t task = 0; task < n.BH * q_tiles; ++task) {
    const int64_t h = task / q_tiles, i0 = (task % q_tiles) * kBlockQ;
    const int64_t i1 = std::min(n.Tq, i0 + kBlockQ), rows = i1 - i0;
    std::vector<A> qbuf, obuf, kbuf, vbuf;
    const A* qt = as_opmath<A>(g.q + (h * n.Tq + i0) * D, rows * D, qbuf);
    const A* dot_ = as_opmath<A>(g.dout + (h * n.Tq + i0) * D, rows * D, obuf);
    const int64_t key_end = causal ? std::min(n.Tk, i1) : n.Tk;
    const A* kh = as_opmath<A>(g.k + h * n.Tk * D, key_end * D, kbuf);
    const A* vh = as_opmath<A>(g.v + h * n.Tk * D, key_end * D, vbuf);
    std::vector<A> dq(D);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const A* qi = qt + r * D;
      const A* doi = dot_ + r * D;
      const A li = g.lse[h * n.Tq + i], di = delta[h * n.Tq + i];
      std::fill(dq.begin(), dq.end(), A(0));
      for (int64_t j = 0; j < (causal ? i + 1 : n.Tk); ++j) {
        const A p = std::exp(dot(qi, kh + j * D, D) * scale - li);
        const A ds = p * (dot(doi, vh + j * D, D) - di) * scale;
        for (int64_t d = 0; d < D; ++d) dq[d] += ds * kh[j * D + d];
      }
      for (int64_t d = 0; d < D; ++d) g.dq[(h * n.Tq + i) * D + d] = static_cast<T>(dq[d]);
    }
  }
}

void flash_backward_kernel(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                           const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                           bool causal, double scale) {
  const Dims n = dims_of(q, k);
  KILN_DISPATCH_FLOATING(q.dtype(), "flash attention backward", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const BackwardArgs<T> g{static_cast<T*>(dq.data_ptr()),         static_cast<T*>(dk.data_ptr()),
                            static_cast<T*>(dv.data_ptr()),         static_cast<const T*>(dout.data_ptr()),
                            static_cast<const T*>(q.data_ptr()),    static_cast<const T*>(k.data_ptr()),
                            static_cast<const T*>(v.data_ptr()),    static_cast<const T*>(out.data_ptr()),
                            static_cast<const A*>(lse.data_ptr())};
    flash_backward_typed(g, n, causal, static_cast<A>(scale));
  });
}

}  // namespace

KILN_REGISTER_KERNEL(flash_attention_forward_stub, CPU, &flash_forward_kernel);
KILN_REGISTER_KERNEL(flash_attention_backward_stub, CPU, &flash_backward_kernel);

}  // namespace kiln

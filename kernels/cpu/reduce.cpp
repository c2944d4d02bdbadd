// CPU reductions over a contiguous [outer, reduced, inner] input (core/dispatch/reduce.h).
//
// Every op is an accumulator with an identity, a `load` of one element and an associative
// `combine`. Rows are reduced pairwise over blocks of kBlock elements; columns in blocks of
// kBlock rows whose results are then folded in order. Both keep long f32 sums accurate.
// Results never depend on the thread count: each output, or each fixed-size chunk of a
// single long row, is reduced by one thread in a fixed order.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/dispatch/reduce.h"
#include "kernels/reduce_ops.h"

namespace kiln {
namespace {

constexpr int64_t kBlock = 256;      // elements reduced in sequence before combining
constexpr int64_t kTile = 64;        // columns per task when inner > 1
constexpr int64_t kChunk = 1 << 16;  // elements per task when one long row is split
constexpr int64_t kParallelGrain = 1 << 15;  // below this many elements, stay serial

// Reduces p[0, n) (contiguous; element k is reduced position r0 + k) for output j: whole
// blocks of kBlock elements in sequence, combined pairwise, so the rounding error of an f32
// sum grows with log(n) rather than n.
template <class T, class Op>
typename Op::Acc reduce_run(const Op& op, const T* p, int64_t n, int64_t r0, int64_t j) {
  if (n <= kBlock) {
    auto acc = op.identity();
    for (int64_t k = 0; k < n; ++k) acc = op.combine(acc, op.load(p[k], r0 + k, j));
    return acc;
  }
  const int64_t half = (n / kBlock + 1) / 2 * kBlock;  // a whole number of blocks, < n
  return op.combine(reduce_run(op, p, half, r0, j), reduce_run(op, p + half, n - half, r0 + half, j));
}

// Reduces `reduced` rows of `inner` columns, for columns [i0, i1) (at most kTile), of
// outer slice o. Walks rows in order so every load is contiguous.
template <class T, class Op, class Finish>
void reduce_tile(const Op& op, const Finish& finish, const T* in, int64_t o, int64_t reduced,
                 int64_t inner, int64_t i0, int64_t i1) {
  using Acc = typename Op::Acc;
  Acc total[kTile], part[kTile];
  const int64_t w = i1 - i0;
  for (int64_t k = 0; k < w; ++k) total[k] = op.identity();
  const T* base = in + o * reduced * inner + i0;
  for (int64_t b = 0; b < reduced; b += kBlock) {
    for (int64_t k = 0; k < w; ++k) part[k] = op.identity();
    const int64_t e = std::min(reduced, b + kBlock);
    for (int64_t r = b; r < e; ++r) {
      const T* row = base + r * inner;
      for (int64_t k = 0; k < w; ++k) part[k] = op.combine(part[k], op.load(row[k], r, o * inner + i0 + k));
    }
    for (int64_t k = 0; k < w; ++k) total[k] = op.combine(total[k], part[k]);
  }
  for (int64_t k = 0; k < w; ++k) finish(o * inner + i0 + k, total[k]);
}

// Runs `op` over the [outer, reduced, inner] input; finish(j, acc) stores output j.
template <class T, class Op, class Finish>
void reduce(const Op& op, const Finish& finish, const T* in, int64_t outer, int64_t reduced,
            int64_t inner) {
  using Acc = typename Op::Acc;
  const int64_t numel = outer * reduced * inner;
  if (outer * inner == 0) return;
  if (inner == 1 && outer == 1 && reduced > kChunk) {
    // One long row: fixed-size chunks in parallel, their results combined in order.
    const int64_t chunks = (reduced + kChunk - 1) / kChunk;
    std::vector<Acc> parts(chunks);
#pragma omp parallel for
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t r0 = c * kChunk;
      parts[c] = reduce_run(op, in + r0, std::min(kChunk, reduced - r0), r0, 0);
    }
    Acc total = op.identity();
    for (const Acc& part : parts) total = op.combine(total, part);
    finish(0, total);
  } else if (inner == 1) {
#pragma omp parallel for if (numel > kParallelGrain)
    for (int64_t o = 0; o < outer; ++o) finish(o, reduce_run(op, in + o * reduced, reduced, 0, o));
  } else {
    const int64_t tiles = (inner + kTile - 1) / kTile;
#pragma omp parallel for if (numel > kParallelGrain)
    for (int64_t t = 0; t < outer * tiles; ++t) {
      const int64_t o = t / tiles, i0 = (t % tiles) * kTile;
      reduce_tile(op, finish, in, o, reduced, inner, i0, std::min(inner, i0 + kTile));
    }
  }
}

void reduce_kernel(ReduceOp op, Tensor& out, const Tensor& in, int64_t outer, int64_t reduced,
                   int64_t inner, int64_t correction) {
  check_reduce_args(out, in, outer, reduced, inner);
  KILN_DISPATCH_ALL(in.dtype(), "reduce", [&] {
    const auto* x = static_cast<const scalar_t*>(in.data_ptr());
    auto run = [&](const auto& acc, const auto& finish) { reduce(acc, finish, x, outer, reduced, inner); };
    reduce_with<scalar_t>(op, out, in, outer, reduced, inner, correction, run);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(reduce_stub, CPU, &reduce_kernel);

}  // namespace kiln

// CUDA kernels of the autoenc_fast::spade_norm ops: float32, float16, bfloat16 (and
// float64), NCHW and channels_last, float32 statistics (float64 for float64 x).
//
// Math (as csrc/cpu/spade_norm.cpp): groups are channels over (N, H, W) for batch
// norm, (n, c) over (H, W) for instance norm, M elements each.
//   stats:    of y = x - k, k = the group's first element: mean and M2 = sum((y - mean)^2)
//             by Welford's updates in each thread's lanes (the n-th element y:
//             d = y - mean, mean += d / n, M2 += d * (y - mean)), partials merged pairwise
//             (Chan et al.: n = na + nb, d = mean_b - mean_a, mean = mean_a + d * nb / n,
//             M2 = M2a + M2b + d^2 * na * nb / n); mean = k + mean_y, var = M2 / M.
//             Summing (x - k)^2 directly lost a spike k's group to (k - mean)^2 / var *
//             2^-24; Welford on x itself, a mean far from 0 with a small spread (the
//             float32 mean stops moving), hence both.
//   apply:    xhat = (x - mean) * invstd, z = xhat * (1 + gamma) + beta,
//             y = z or leaky_relu(z, slope).
//   backward: dz = dy * (z > 0 ? 1 : slope), dxhat = dz * (1 + gamma),
//             reduce A = sum dxhat, B = sum dxhat * xhat per group;
//             dx = invstd * (dxhat - A / M - xhat * B / M)  (or invstd * dxhat with fixed
//             statistics), dgamma = dz * xhat, dbeta = dz.
//
// Reductions are two kernels: blocks reduce slices to partial sums or moments (warp
// shuffles, then shared memory across warps), and one warp per group combines its
// partials in a fixed order, so results are deterministic. NCHW: a block reduces a slice of one
// (n, c) row of H*W contiguous elements. channels_last: a block of 256 threads, `lanes`
// across channels (each VEC adjacent channels; 32, or fewer when C has fewer packs) by
// 256 / lanes row lanes, reduces a tile of channels over a range of pixels; the row lanes
// are combined in shared memory. Elementwise kernels are
// grid-stride loops over packs of VEC elements (16-byte loads and stores when the
// inner extent is a multiple of VEC and the pointers are aligned).
//
// Small groups in NCHW (at most kFusedGroupElems elements, as GauGAN's 16x16 maps give):
// the single-process forward and backward are one kernel each, a block per group that
// reduces the group, then makes its elementwise pass over the same elements, still in
// cache. The split path takes five kernels and two small torch ops per step there, and
// at those sizes each launch costs more than its bytes (H200: 0.051 ms per step against
// inductor's 0.025). AUTOENC_FAST_SPADE_NORM_FUSED=0 or 1 forces either path (the GPU
// check times both).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "../spade_norm_checks.h"
#include "env_switch.h"

namespace autoenc_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridYZ = 65535;  // CUDA's limit on grid.y and grid.z
constexpr int64_t kTargetBlocks = 2048;  // reduction blocks to aim for (fills an H100 several times)
constexpr int64_t kFusedGroupElems = 4096;  // largest group the one-kernel path takes by default

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// invstd = 1 / sqrt(var + eps), one formula for the per-group and the split paths.
template <typename T>
__device__ __forceinline__ T inverse_std(T var, T eps) {
  return T(1) / sqrt(var + eps);
}

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// The block's totals of a and b, in every thread (blockDim.x a multiple of 32, at most
// kThreads): warp sums, then the warps' sums in order.
template <typename T>
__device__ __forceinline__ void block_sum_pair(T& a, T& b) {
  __shared__ T warp_totals[2][kThreads / 32];
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_totals[0][warp] = a, warp_totals[1][warp] = b;
  __syncthreads();
  a = 0, b = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) a += warp_totals[0][w], b += warp_totals[1][w];
  __syncthreads();  // warp_totals may be reused by the caller's next sum
}

// Count, mean and M2 = sum((x - mean)^2) of some elements of one group.
template <typename acc_t>
struct Moments {
  acc_t n, mean, m2;
};

// Chan et al.'s pairwise merge; an empty side returns the other unchanged (an infinite
// mean times a zero weight would be NaN).
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> merge(const Moments<acc_t>& a, const Moments<acc_t>& b) {
  if (b.n == acc_t(0)) return a;
  if (a.n == acc_t(0)) return b;
  const acc_t n = a.n + b.n, w = b.n / n, d = b.mean - a.mean;
  return {n, a.mean + d * w, a.m2 + b.m2 + d * d * a.n * w};
}

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> warp_merge(Moments<acc_t> m) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Moments<acc_t> other{__shfl_down_sync(0xffffffffu, m.n, offset),
                               __shfl_down_sync(0xffffffffu, m.mean, offset),
                               __shfl_down_sync(0xffffffffu, m.m2, offset)};
    m = merge(m, other);
  }
  return m;
}

// The block's merged moments, in every thread (as block_sum_pair).
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> block_merge(Moments<acc_t> m) {
  __shared__ Moments<acc_t> warp_moments[kThreads / 32];
  m = warp_merge(m);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_moments[warp] = m;
  __syncthreads();
  m = warp_moments[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) m = merge(m, warp_moments[w]);
  __syncthreads();  // warp_moments may be reused by the caller's next merge
  return m;
}

// Welford moments of x - shift in a thread's VEC lanes, which all see the same number of
// elements, so one reciprocal per pack serves them all.
template <int VEC, typename acc_t>
struct LaneMoments {
  acc_t n = 0, mean[VEC] = {}, m2[VEC] = {};

  template <typename scalar_t>
  __device__ __forceinline__ void add(const Pack<scalar_t, VEC>& xv, const acc_t (&shift)[VEC]) {
    n += acc_t(1);
    const acc_t r = acc_t(1) / n;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t y = static_cast<acc_t>(xv.v[j]) - shift[j], d = y - mean[j];
      mean[j] += d * r;
      m2[j] += d * (y - mean[j]);
    }
  }

  __device__ __forceinline__ Moments<acc_t> lane(int j) const { return {n, mean[j], m2[j]}; }

  __device__ __forceinline__ Moments<acc_t> total() const {
    Moments<acc_t> m = lane(0);
#pragma unroll
    for (int j = 1; j < VEC; ++j) m = merge(m, lane(j));
    return m;
  }
};

template <int VEC, typename acc_t>
__device__ __forceinline__ void fill(acc_t (&out)[VEC], acc_t value) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = value;
}

// Partials per reduced slice: (S1, S2) in the backward, (mean, M2, n) of x - k in the
// statistics pass.
template <bool kBackward>
constexpr int kPartialWidth = kBackward ? 2 : 3;

template <typename acc_t>
__device__ __forceinline__ void store_moments(acc_t* partial, int64_t idx, const Moments<acc_t>& m) {
  partial[3 * idx] = m.mean;
  partial[3 * idx + 1] = m.m2;
  partial[3 * idx + 2] = m.n;
}

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> load_moments(const acc_t* partial, int64_t idx) {
  return {partial[3 * idx + 2], partial[3 * idx], partial[3 * idx + 1]};
}

template <typename scalar_t, typename acc_t>
struct Inputs {
  const scalar_t* dy;  // backward only
  const scalar_t* x;
  const scalar_t* gamma;
  const scalar_t* beta;
  const acc_t* mean;    // backward and elementwise
  const acc_t* invstd;  // backward and elementwise
  acc_t slope;
  bool has_slope;
  // Where gamma and beta lie (SpadeParams): x's element at `off` is theirs at
  // off + sample * param_extra (NCHW) or, channels_last, channel c of pixel p at
  // p * param_pixel_stride + c. param_extra 0 and param_pixel_stride C when they are laid
  // out like x; else they are the two channel halves of SPADE's merged (N, 2C, H, W)
  // convolution output, read in place.
  int64_t param_extra, param_pixel_stride;
  // dgamma and dbeta are written at gamma's and beta's offsets (the halves of one merged
  // (N, 2C, H, W) gradient, spade_norm_merged_backward) rather than at x's.
  bool grads_at_params;
};

struct Shape {
  int64_t N, C, HW;
  bool instance, channels_last;
  // Statistics groups: (n, c) pairs for instance norm, channels for batch norm.
  __host__ __device__ int64_t groups() const { return instance ? N * C : C; }
  // The (n, c) rows of H*W elements in one group: 1 for instance norm, N for batch norm.
  __host__ __device__ int64_t rows_per_group() const { return instance ? 1 : N; }
  // Elements in one group (M): H*W for instance norm, N*H*W for batch norm.
  __host__ __device__ int64_t group_elems() const { return rows_per_group() * HW; }
};

// x's first element in statistics group g, the shift k of its moments: x[0, g] (batch norm)
// or x[n, c] (instance norm, g = n * C + c) at pixel 0. One definition for every kernel,
// as finalize must add back exactly the k the reduce kernels subtracted.
template <typename scalar_t>
__device__ __forceinline__ scalar_t group_first_element(const scalar_t* x, const Shape& s, int64_t g) {
  if (!s.channels_last) return x[g * s.HW];  // row g: (0, g) or (n, c)
  const int64_t z = s.instance ? g / s.C : 0;
  return x[z * s.HW * s.C + g % s.C];
}

// One element's xhat = (x - mean) * invstd, 1 + gamma and z = xhat * (1 + gamma) + beta.
template <typename acc_t>
struct Affine {
  acc_t xhat, one_g, z;
};

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ Affine<acc_t> affine(scalar_t x, scalar_t gamma, scalar_t beta, acc_t mean,
                                                acc_t invstd) {
  const acc_t xhat = (static_cast<acc_t>(x) - mean) * invstd;
  const acc_t one_g = acc_t(1) + static_cast<acc_t>(gamma);
  return {xhat, one_g, xhat * one_g + static_cast<acc_t>(beta)};
}

// leaky_relu(z)'s factor applied to v: v, or slope * v where z is not positive (v = z
// gives the activation, v = dy its gradient).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t leaky_select(acc_t z, acc_t v, const Inputs<scalar_t, acc_t>& in) {
  return in.has_slope && !(z > acc_t(0)) ? v * in.slope : v;
}

// Adds the backward's two reduction terms, dxhat and dxhat * xhat, of VEC elements at
// `off` (gamma/beta at `poff`; mean and invstd per element).
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void accumulate(const Inputs<scalar_t, acc_t>& in, int64_t off, int64_t poff,
                                           const acc_t (&mean)[VEC], const acc_t (&invstd)[VEC],
                                           acc_t (&s1)[VEC], acc_t (&s2)[VEC]) {
  const Pack<scalar_t, VEC> xv = load_pack<VEC>(in.x + off);
  const Pack<scalar_t, VEC> dyv = load_pack<VEC>(in.dy + off);
  const Pack<scalar_t, VEC> gv = load_pack<VEC>(in.gamma + poff);
  const Pack<scalar_t, VEC> bv = load_pack<VEC>(in.beta + poff);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const Affine<acc_t> a = affine(xv.v[j], gv.v[j], bv.v[j], mean[j], invstd[j]);
    const acc_t dxhat = leaky_select(a.z, static_cast<acc_t>(dyv.v[j]), in) * a.one_g;
    s1[j] += dxhat;
    s2[j] += dxhat * a.xhat;
  }
}

// NCHW: block (blockIdx.x = slice, blockIdx.y.. = row) -> partial idx = (g * rows_per_group +
// row_in_group) * splits + slice: (S1, S2) in the backward, moments in the statistics pass.
template <bool kBackward, int VEC, typename scalar_t, typename acc_t>
__global__ void reduce_nchw_kernel(Inputs<scalar_t, acc_t> in, Shape s, int64_t slice,
                                   acc_t* __restrict__ partial) {
  const int64_t rows = s.N * s.C;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t g = s.instance ? row : row % s.C;
    const int64_t begin = row * s.HW + blockIdx.x * slice;
    const int64_t end = min(row * s.HW + s.HW, begin + slice);
    const int64_t in_group = s.instance ? 0 : row / s.C;
    const int64_t idx = (g * s.rows_per_group() + in_group) * gridDim.x + blockIdx.x;
    if constexpr (!kBackward) {
      LaneMoments<VEC, acc_t> lanes;
      acc_t shift[VEC];
      fill(shift, static_cast<acc_t>(group_first_element(in.x, s, g)));
      for (int64_t off = begin + threadIdx.x * VEC; off < end; off += blockDim.x * VEC) {
        lanes.add(load_pack<VEC>(in.x + off), shift);
      }
      const Moments<acc_t> m = block_merge(lanes.total());
      if (threadIdx.x == 0) store_moments(partial, idx, m);
    } else {
      acc_t mean[VEC], invstd[VEC], s1[VEC] = {}, s2[VEC] = {};
      fill(mean, in.mean[g]);
      fill(invstd, in.invstd[g]);
      const int64_t param_shift = (row / s.C) * in.param_extra;
      for (int64_t off = begin + threadIdx.x * VEC; off < end; off += blockDim.x * VEC) {
        accumulate<VEC>(in, off, off + param_shift, mean, invstd, s1, s2);
      }
      acc_t a = 0, b = 0;
#pragma unroll
      for (int j = 0; j < VEC; ++j) a += s1[j], b += s2[j];
      block_sum_pair(a, b);
      if (threadIdx.x == 0) partial[2 * idx] = a, partial[2 * idx + 1] = b;
    }
  }
}

// channels_last: block (channel tile blockIdx.x, pixel range blockIdx.y, samples
// blockIdx.z, blockIdx.z + gridDim.z, ... for instance norm) -> partial idx = (z * splits +
// split) * C + c: (S1, S2) in the backward, moments in the statistics pass. blockDim =
// (lanes, row lanes), lanes * row lanes <= kThreads.
template <bool kBackward, int VEC, typename scalar_t, typename acc_t>
__global__ void reduce_nhwc_kernel(Inputs<scalar_t, acc_t> in, Shape s, int64_t rows_per_block,
                                   acc_t* __restrict__ partial) {
  // [row lane][lane * VEC + j]: S1, S2 (backward) or mean, M2 (statistics, whose count
  // is one per thread: counts[row lane * lanes + lane]).
  __shared__ acc_t shared[2][kThreads * VEC];
  __shared__ acc_t counts[kBackward ? 1 : kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y, lanes = blockDim.x, row_lanes = blockDim.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * lanes + tx) * VEC;
  const int64_t samples = s.instance ? s.N : 1;  // grid.z stops at kMaxGridYZ: a block may take several
  const int64_t rows = s.group_elems();           // pixels per group
  const int64_t r_begin = blockIdx.y * rows_per_block;
  const int64_t r_end = min(rows, r_begin + rows_per_block);
  const bool active = c0 < s.C;
  for (int64_t z = blockIdx.z; z < samples; z += gridDim.z) {
    const int64_t row0 = z * (s.instance ? s.HW : 0);  // first pixel of this group range
    acc_t s1[VEC] = {}, s2[VEC] = {};
    if constexpr (!kBackward) {
      LaneMoments<VEC, acc_t> moments;
      acc_t shift[VEC];  // each channel's first element (of sample z for instance norm)
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        shift[j] = active ? static_cast<acc_t>(group_first_element(in.x, s, z * (s.instance ? s.C : 0) + c0 + j))
                          : acc_t(0);
      }
      for (int64_t r = r_begin + ty; active && r < r_end; r += row_lanes) {
        moments.add(load_pack<VEC>(in.x + (row0 + r) * s.C + c0), shift);
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) s1[j] = moments.mean[j], s2[j] = moments.m2[j];
      counts[ty * lanes + tx] = moments.n;
    } else if (active) {
      acc_t mean[VEC], invstd[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int64_t g = z * (s.instance ? s.C : 0) + c0 + j;
        mean[j] = in.mean[g];
        invstd[j] = in.invstd[g];
      }
      for (int64_t r = r_begin + ty; r < r_end; r += row_lanes) {
        accumulate<VEC>(in, (row0 + r) * s.C + c0, (row0 + r) * in.param_pixel_stride + c0, mean, invstd, s1, s2);
      }
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      shared[0][(ty * lanes + tx) * VEC + j] = s1[j];
      shared[1][(ty * lanes + tx) * VEC + j] = s2[j];
    }
    __syncthreads();
    if (ty == 0 && active) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int64_t idx = (z * gridDim.y + blockIdx.y) * s.C + c0 + j;
        if constexpr (!kBackward) {
          Moments<acc_t> m{0, 0, 0};
          for (int y = 0; y < row_lanes; ++y) {
            const int t = y * lanes + tx;
            m = merge(m, Moments<acc_t>{counts[t], shared[0][t * VEC + j], shared[1][t * VEC + j]});
          }
          store_moments(partial, idx, m);
        } else {
          acc_t a = 0, b = 0;
          for (int y = 0; y < row_lanes; ++y) {
            a += shared[0][(y * lanes + tx) * VEC + j];
            b += shared[1][(y * lanes + tx) * VEC + j];
          }
          partial[2 * idx] = a;
          partial[2 * idx + 1] = b;
        }
      }
    }
    __syncthreads();  // the next sample overwrites `shared`
  }
}

// What finalize_kernel writes besides its sums, so that the ops need no small torch ops
// (each a launch) between the passes: the forward's invstd = 1 / sqrt(var + eps) when
// `invstd` is set, and in the backward the means A / M and B / M instead of the sums.
template <typename acc_t>
struct Finish {
  acc_t* invstd = nullptr;
  acc_t eps = 0;
  bool means = false;
};

// One warp per group combines its `parts` partials in a fixed order and writes
// (mean, var) (stats) or (A, B) (backward), then what `finish` asks for.
template <bool kBackward, typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial, const scalar_t* __restrict__ x, Shape s,
                                int64_t parts, acc_t* __restrict__ out1, acc_t* __restrict__ out2,
                                Finish<acc_t> finish) {
  const int64_t groups = s.groups();
  const int64_t g = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (g >= groups) return;
  const int64_t z = s.instance ? g / s.C : 0, c = g % s.C;
  const auto index = [&](int64_t k) { return s.channels_last ? (z * parts + k) * s.C + c : g * parts + k; };
  if constexpr (kBackward) {
    acc_t a = 0, b = 0;
    for (int64_t k = lane; k < parts; k += 32) a += partial[2 * index(k)], b += partial[2 * index(k) + 1];
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane != 0) return;
    const acc_t m = static_cast<acc_t>(s.group_elems());
    out1[g] = finish.means ? a / m : a;
    out2[g] = finish.means ? b / m : b;
  } else {
    Moments<acc_t> m{0, 0, 0};
    for (int64_t k = lane; k < parts; k += 32) m = merge(m, load_moments(partial, index(k)));
    m = warp_merge(m);
    if (lane != 0) return;
    // M2 sums squares: never below zero; NaN stays NaN. M, not m.n: counts past 2^24 round.
    const acc_t var = m.m2 / static_cast<acc_t>(s.group_elems());
    out1[g] = static_cast<acc_t>(group_first_element(x, s, g)) + m.mean;
    out2[g] = var;
    if (finish.invstd != nullptr) finish.invstd[g] = inverse_std(var, finish.eps);
  }
}

// The group of the first element of the pack at `off`, and the group step between
// its elements (0 in NCHW: a pack lies in one row; 1 in channels_last).
template <typename index_t>
__device__ __forceinline__ index_t group_of(index_t off, index_t C, index_t HW, bool cl, bool instance) {
  if (!cl) {
    const index_t row = off / HW;
    return instance ? row : row % C;
  }
  const index_t c = off % C;
  return instance ? (off / (HW * C)) * C + c : c;
}

// y at the VEC elements from `off` (gamma/beta at `poff`), each normalized with its own
// group's mean and invstd.
template <int VEC, typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void apply_pack(const Inputs<scalar_t, acc_t>& in, index_t off, int64_t poff,
                                           const acc_t (&mean)[VEC], const acc_t (&invstd)[VEC],
                                           scalar_t* __restrict__ y) {
  const Pack<scalar_t, VEC> xv = load_pack<VEC>(in.x + off);
  const Pack<scalar_t, VEC> gv = load_pack<VEC>(in.gamma + poff);
  const Pack<scalar_t, VEC> bv = load_pack<VEC>(in.beta + poff);
  Pack<scalar_t, VEC> out;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const Affine<acc_t> a = affine(xv.v[j], gv.v[j], bv.v[j], mean[j], invstd[j]);
    out.v[j] = static_cast<scalar_t>(leaky_select(a.z, a.z, in));
  }
  *reinterpret_cast<Pack<scalar_t, VEC>*>(y + off) = out;
}

// dx, dgamma, dbeta at the VEC elements from `off`; with_means false for fixed statistics
// (mean_dxhat and mean_dxhat_xhat unused). Arrays by reference, not pointers: a pointer
// to a local array puts it in local memory.
template <int VEC, typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void backward_pack(const Inputs<scalar_t, acc_t>& in, index_t off, int64_t poff,
                                              const acc_t (&mean)[VEC], const acc_t (&invstd)[VEC], bool with_means,
                                              const acc_t (&mean_dxhat)[VEC], const acc_t (&mean_dxhat_xhat)[VEC],
                                              scalar_t* __restrict__ dx, scalar_t* __restrict__ dgamma,
                                              scalar_t* __restrict__ dbeta) {
  const Pack<scalar_t, VEC> dyv = load_pack<VEC>(in.dy + off);
  const Pack<scalar_t, VEC> xv = load_pack<VEC>(in.x + off);
  const Pack<scalar_t, VEC> gv = load_pack<VEC>(in.gamma + poff);
  const Pack<scalar_t, VEC> bv = load_pack<VEC>(in.beta + poff);
  Pack<scalar_t, VEC> dxv, dgv, dbv;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const Affine<acc_t> a = affine(xv.v[j], gv.v[j], bv.v[j], mean[j], invstd[j]);
    const acc_t dz = leaky_select(a.z, static_cast<acc_t>(dyv.v[j]), in);
    acc_t dxhat = dz * a.one_g;
    if (with_means) dxhat -= mean_dxhat[j] + a.xhat * mean_dxhat_xhat[j];
    dxv.v[j] = static_cast<scalar_t>(dxhat * invstd[j]);
    dgv.v[j] = static_cast<scalar_t>(dz * a.xhat);
    dbv.v[j] = static_cast<scalar_t>(dz);
  }
  *reinterpret_cast<Pack<scalar_t, VEC>*>(dx + off) = dxv;
  const int64_t goff = in.grads_at_params ? poff : static_cast<int64_t>(off);
  *reinterpret_cast<Pack<scalar_t, VEC>*>(dgamma + goff) = dgv;
  *reinterpret_cast<Pack<scalar_t, VEC>*>(dbeta + goff) = dbv;
}

// Offset of the gamma/beta element paired with x's element at `off` (see Inputs).
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ int64_t param_offset(const Inputs<scalar_t, acc_t>& in, index_t off, index_t C,
                                                index_t HW, bool cl) {
  if (cl) {
    return in.param_pixel_stride == C ? static_cast<int64_t>(off)
                                      : static_cast<int64_t>(off / C) * in.param_pixel_stride + off % C;
  }
  return in.param_extra == 0 ? static_cast<int64_t>(off)
                             : static_cast<int64_t>(off) + static_cast<int64_t>(off / (C * HW)) * in.param_extra;
}

// The groups' values of `per_group` for the VEC elements from `off` (group g, step 0 or 1).
template <int VEC, typename acc_t, typename index_t>
__device__ __forceinline__ void gather_groups(const acc_t* per_group, index_t g, bool cl, acc_t (&out)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = per_group[cl ? g + j : g];
}

template <int VEC, typename index_t, typename scalar_t, typename acc_t>
__global__ void apply_kernel(Inputs<scalar_t, acc_t> in, index_t numel, index_t C, index_t HW,
                             bool cl, bool instance, scalar_t* __restrict__ y) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x * VEC;
  for (index_t off = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; off < numel;
       off += stride) {
    const index_t g = group_of(off, C, HW, cl, instance);
    acc_t mean[VEC], invstd[VEC];
    gather_groups(in.mean, g, cl, mean);
    gather_groups(in.invstd, g, cl, invstd);
    apply_pack(in, off, param_offset(in, off, C, HW, cl), mean, invstd, y);
  }
}

template <int VEC, typename index_t, typename scalar_t, typename acc_t>
__global__ void backward_elemt_kernel(Inputs<scalar_t, acc_t> in, const acc_t* __restrict__ mean_dxhat,
                                      const acc_t* __restrict__ mean_dxhat_xhat, index_t numel,
                                      index_t C, index_t HW, bool cl, bool instance,
                                      scalar_t* __restrict__ dx, scalar_t* __restrict__ dgamma,
                                      scalar_t* __restrict__ dbeta) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x * VEC;
  for (index_t off = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; off < numel;
       off += stride) {
    const index_t g = group_of(off, C, HW, cl, instance);
    const bool with_means = mean_dxhat != nullptr;
    acc_t mean[VEC], invstd[VEC], m1[VEC] = {}, m2[VEC] = {};
    gather_groups(in.mean, g, cl, mean);
    gather_groups(in.invstd, g, cl, invstd);
    if (with_means) {
      gather_groups(mean_dxhat, g, cl, m1);
      gather_groups(mean_dxhat_xhat, g, cl, m2);
    }
    backward_pack(in, off, param_offset(in, off, C, HW, cl), mean, invstd, with_means, m1, m2, dx, dgamma, dbeta);
  }
}

// ---------------------------------------------------------------- one block per group (small NCHW groups)

// Offsets of pack `pack` of group g in x and in gamma/beta: its rows are the one row
// (n, c) = g for instance norm, the N rows (n, c) of channel c = g for batch norm, each
// row_packs packs long.
struct PackOffsets {
  int64_t x, param;
};

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ PackOffsets group_pack_offsets(const Inputs<scalar_t, acc_t>& in, const Shape& s,
                                                          int64_t g, int pack, int row_packs) {
  const int r = pack / row_packs, j = pack - r * row_packs;
  const int64_t sample = s.instance ? g / s.C : r;
  const int64_t off = (s.instance ? g : static_cast<int64_t>(r) * s.C + g) * s.HW + static_cast<int64_t>(j) * VEC;
  return {off, off + sample * in.param_extra};
}

template <int VEC>
__host__ __device__ __forceinline__ int group_packs(const Shape& s) {
  return static_cast<int>(s.rows_per_group() * (s.HW / VEC));
}

// Block totals (in every thread) of accumulate's two backward terms over group g's elements.
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void group_sums(const Inputs<scalar_t, acc_t>& in, const Shape& s, int64_t g,
                                           const acc_t (&mean)[VEC], const acc_t (&invstd)[VEC], acc_t& a,
                                           acc_t& b) {
  const int row_packs = static_cast<int>(s.HW / VEC), packs = group_packs<VEC>(s);
  acc_t s1[VEC] = {}, s2[VEC] = {};
  for (int pack = threadIdx.x; pack < packs; pack += blockDim.x) {
    const PackOffsets at = group_pack_offsets<VEC>(in, s, g, pack, row_packs);
    accumulate<VEC>(in, at.x, at.param, mean, invstd, s1, s2);
  }
  a = 0, b = 0;
#pragma unroll
  for (int j = 0; j < VEC; ++j) a += s1[j], b += s2[j];
  block_sum_pair(a, b);
}

// Forward of group g = blockIdx.x: the group's moments, mean, var and invstd (written
// out), then y.
template <int VEC, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    fused_forward_kernel(Inputs<scalar_t, acc_t> in, Shape s, acc_t eps, scalar_t* __restrict__ y,
                         acc_t* __restrict__ mean_out, acc_t* __restrict__ var_out,
                         acc_t* __restrict__ invstd_out) {
  const int64_t g = blockIdx.x;
  const int row_packs = static_cast<int>(s.HW / VEC), packs = group_packs<VEC>(s);
  LaneMoments<VEC, acc_t> lanes;
  acc_t shift[VEC];
  fill(shift, static_cast<acc_t>(in.x[g * s.HW]));  // group_first_element: NCHW only here
  for (int pack = threadIdx.x; pack < packs; pack += blockDim.x) {
    lanes.add(load_pack<VEC>(in.x + group_pack_offsets<VEC>(in, s, g, pack, row_packs).x), shift);
  }
  const Moments<acc_t> moments = block_merge(lanes.total());
  const acc_t var = moments.m2 / (static_cast<acc_t>(packs) * VEC);
  acc_t mean[VEC], invstd[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) mean[j] = shift[0] + moments.mean, invstd[j] = inverse_std(var, eps);
  if (threadIdx.x == 0) mean_out[g] = mean[0], var_out[g] = var, invstd_out[g] = invstd[0];
  for (int pack = threadIdx.x; pack < packs; pack += blockDim.x) {
    const PackOffsets at = group_pack_offsets<VEC>(in, s, g, pack, row_packs);
    apply_pack(in, at.x, at.param, mean, invstd, y);
  }
}

// Backward of group g = blockIdx.x with batch statistics: the sums of dxhat and
// dxhat * xhat, then dx, dgamma, dbeta.
template <int VEC, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    fused_backward_kernel(Inputs<scalar_t, acc_t> in, Shape s, scalar_t* __restrict__ dx,
                          scalar_t* __restrict__ dgamma, scalar_t* __restrict__ dbeta) {
  const int64_t g = blockIdx.x;
  const int row_packs = static_cast<int>(s.HW / VEC), packs = group_packs<VEC>(s);
  acc_t mean[VEC], invstd[VEC], a, b;
#pragma unroll
  for (int j = 0; j < VEC; ++j) mean[j] = in.mean[g], invstd[j] = in.invstd[g];
  group_sums(in, s, g, mean, invstd, a, b);
  const acc_t m = static_cast<acc_t>(packs) * VEC;
  acc_t m1[VEC], m2[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) m1[j] = a / m, m2[j] = b / m;
  for (int pack = threadIdx.x; pack < packs; pack += blockDim.x) {
    const PackOffsets at = group_pack_offsets<VEC>(in, s, g, pack, row_packs);
    backward_pack(in, at.x, at.param, mean, invstd, true, m1, m2, dx, dgamma, dbeta);
  }
}

// running = (1 - momentum) * running + momentum * scale * stat for each of the n
// channels, in float64 (a few thousand values at most; the buffers may have any
// floating dtype), as F.batch_norm updates its buffers.
template <typename running_t, typename acc_t>
__global__ void update_running_kernel(running_t* __restrict__ running, const acc_t* __restrict__ stat, int64_t n,
                                      double momentum, double scale) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= n) return;
  running[c] = static_cast<running_t>((1 - momentum) * static_cast<double>(running[c]) +
                                      momentum * scale * static_cast<double>(stat[c]));
}

// ---------------------------------------------------------------- host side

Shape shape_of(const at::Tensor& x, bool instance) {
  return {x.size(0), x.size(1), x.size(2) * x.size(3), instance,
          spade_memory_format(x) == at::MemoryFormat::ChannelsLast};
}

// 16-byte packs when the inner extent (H*W in NCHW, C in channels_last) is a multiple
// of the pack, so is gamma's and beta's pixel stride (channels_last), and every pointer
// (the inputs' and `outputs`) is 16-byte aligned; else one element at a time.
template <typename scalar_t, typename acc_t>
int pack_width(const Shape& s, const Inputs<scalar_t, acc_t>& in, std::initializer_list<const void*> outputs) {
  constexpr int kMax = 16 / sizeof(scalar_t);
  const int64_t inner = s.channels_last ? s.C : s.HW;
  if (inner % kMax != 0 || (s.channels_last && in.param_pixel_stride % kMax != 0)) return 1;
  for (const void* p : {static_cast<const void*>(in.dy), static_cast<const void*>(in.x),
                        static_cast<const void*>(in.gamma), static_cast<const void*>(in.beta)}) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  }
  for (const void* p : outputs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  }
  return kMax;
}

int sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Threads for a block that walks `packs` packs: whole warps, no more than it has packs
// (small rows and groups get smaller blocks rather than idle threads), at most kThreads.
int threads_for(int64_t packs) {
  return static_cast<int>(std::clamp<int64_t>((packs + 31) / 32 * 32, 32, kThreads));
}

// Calls fn(vec constant) with the widest pack the tensors allow.
template <typename scalar_t, typename acc_t, typename Fn>
void with_pack(const Shape& s, const Inputs<scalar_t, acc_t>& in, std::initializer_list<const void*> outputs,
               const Fn& fn) {
  constexpr int kMax = 16 / sizeof(scalar_t);
  if (pack_width(s, in, outputs) == kMax) {
    fn(std::integral_constant<int, kMax>());
  } else {
    fn(std::integral_constant<int, 1>());
  }
}

// Runs the reduce + finalize kernels; out1/out2 are (C,) or (N, C) accumulate-type tensors.
template <bool kBackward, int VEC, typename scalar_t, typename acc_t>
void launch_reduce(const Inputs<scalar_t, acc_t>& in, const Shape& s, const at::Tensor& x,
                   at::Tensor& out1, at::Tensor& out2, Finish<acc_t> finish) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor partial;
  int64_t parts = 0;
  if (!s.channels_last) {
    const int64_t rows = s.N * s.C;
    const int64_t min_slice = static_cast<int64_t>(kThreads) * VEC;
    const int64_t max_splits = (s.HW + min_slice - 1) / min_slice;
    const int64_t splits = std::clamp<int64_t>(kTargetBlocks / rows, 1, max_splits);
    const int64_t slice = ((s.HW + splits - 1) / splits + VEC - 1) / VEC * VEC;
    const int64_t used = (s.HW + slice - 1) / slice;
    partial = at::empty({rows * used * kPartialWidth<kBackward>}, x.options().dtype(out1.scalar_type()));
    const dim3 grid(static_cast<unsigned>(used), static_cast<unsigned>(std::min<int64_t>(rows, kMaxGridYZ)));
    const int threads = threads_for((slice + VEC - 1) / VEC);
    reduce_nchw_kernel<kBackward, VEC><<<grid, threads, 0, stream>>>(in, s, slice,
                                                                     partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    parts = s.rows_per_group() * used;
  } else {
    // Lanes across the channels' packs: 32, or as many as C has (GauGAN's 64 channels are 8
    // packs of bf16), with the rest of the block's threads on more pixel rows, not idle.
    const int lanes = static_cast<int>(std::min<int64_t>(32, (s.C + VEC - 1) / VEC));
    const int row_lanes = kThreads / lanes;
    const int64_t tiles = (s.C + int64_t{lanes} * VEC - 1) / (int64_t{lanes} * VEC);
    const int64_t z = s.instance ? s.N : 1, rows = s.group_elems();
    const int64_t splits = std::clamp<int64_t>(kTargetBlocks / (tiles * z), 1,
                                               std::min<int64_t>(kMaxGridYZ, (rows + row_lanes - 1) / row_lanes));
    const int64_t rows_per_block = (rows + splits - 1) / splits;
    const int64_t used = (rows + rows_per_block - 1) / rows_per_block;
    partial = at::empty({z * used * s.C * kPartialWidth<kBackward>}, x.options().dtype(out1.scalar_type()));
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(used),
                    static_cast<unsigned>(std::min<int64_t>(z, kMaxGridYZ)));
    reduce_nhwc_kernel<kBackward, VEC><<<grid, dim3(lanes, row_lanes), 0, stream>>>(
        in, s, rows_per_block, partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    parts = used;
  }
  const int64_t groups = s.groups();
  constexpr int kWarps = kThreads / 32;
  finalize_kernel<kBackward><<<static_cast<unsigned>((groups + kWarps - 1) / kWarps), kThreads, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), in.x, s, parts, out1.mutable_data_ptr<acc_t>(),
      out2.mutable_data_ptr<acc_t>(), finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kBackward, typename scalar_t, typename acc_t>
void reduce(const Inputs<scalar_t, acc_t>& in, const Shape& s, const at::Tensor& x, at::Tensor& out1,
            at::Tensor& out2, Finish<acc_t> finish = {}) {
  with_pack(s, in, {}, [&](auto vec) {
    launch_reduce<kBackward, decltype(vec)::value>(in, s, x, out1, out2, finish);
  });
}

unsigned elementwise_blocks(int64_t numel, int vec) {
  const int64_t packs = (numel + vec - 1) / vec;
  const int64_t wanted = (packs + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(wanted, static_cast<int64_t>(sm_count()) * 32));
}

// Calls fn(vec constant, index type) with the widest pack the tensors allow and 32-bit
// indices when they suffice (cheaper division on the GPU).
template <typename scalar_t, typename acc_t, typename Fn>
void with_pack_and_index(const Shape& s, int64_t numel, const Inputs<scalar_t, acc_t>& in,
                         std::initializer_list<const void*> outputs, const Fn& fn) {
  // 32-bit offsets while offset + grid stride cannot overflow (stride < 2^26).
  const bool small = numel < (int64_t{1} << 31) - (int64_t{1} << 26);
  with_pack(s, in, outputs, [&](auto vec) {
    if (small) {
      fn(vec, int32_t{0});
    } else {
      fn(vec, int64_t{0});
    }
  });
}

// The kernels' view of an op's tensors (laid out by spade_lay_out); the undefined ones
// (dy, mean, invstd in the forward passes; gamma and beta in the statistics pass) as null.
template <typename scalar_t, typename acc_t>
Inputs<scalar_t, acc_t> inputs_of(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                                  std::optional<double> slope, bool grads_at_params = false) {
  const auto data = [](const at::Tensor& u) { return u.defined() ? u.const_data_ptr<scalar_t>() : nullptr; };
  const auto stats = [](const at::Tensor& u) { return u.defined() ? u.const_data_ptr<acc_t>() : nullptr; };
  return {data(t.dy), data(t.x), data(t.params.gamma), data(t.params.beta), stats(mean), stats(invstd),
          static_cast<acc_t>(slope.value_or(0.0)), slope.has_value(), t.params.extra, t.params.pixel_stride,
          grads_at_params};
}

void check_cuda_inputs(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": `x` must be a CUDA tensor for the CUDA kernel; got ", x.device());
}

// mean and var per group; with `eps`, also invstd = 1 / sqrt(var + eps) (same kernels).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_impl(const at::Tensor& x_in, bool instance,
                                                          std::optional<double> eps = std::nullopt) {
  const at::Tensor x = x_in.contiguous(spade_memory_format(x_in));
  at::Tensor mean = spade_empty_stats(x, instance), var = spade_empty_stats(x, instance), invstd;
  if (x.numel() == 0) {
    mean.zero_();
    var.zero_();
    if (eps.has_value()) invstd = (var + *eps).rsqrt();
    return {mean, var, invstd};
  }
  if (eps.has_value()) invstd = spade_empty_stats(x, instance);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_stats_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const SpadeLaidOut t{{}, x, SpadeParams{{}, {}, 0, x.size(1)}};
    const Finish<acc_t> finish{invstd.defined() ? invstd.mutable_data_ptr<acc_t>() : nullptr,
                               static_cast<acc_t>(eps.value_or(0.0)), false};
    reduce<false>(inputs_of<scalar_t, acc_t>(t, {}, {}, std::nullopt), shape_of(x, instance), x, mean, var,
                  finish);
  });
  return {mean, var, invstd};
}

at::Tensor apply_impl(const SpadeLaidOut& t, const at::Tensor& mean_in, const at::Tensor& invstd_in,
                      std::optional<double> slope) {
  const at::Tensor& x = t.x;
  const at::Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  at::Tensor y = spade_empty_like_x(x);
  if (x.numel() == 0) return y;
  const Shape s = shape_of(x, mean.dim() == 2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_apply_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto in = inputs_of<scalar_t, acc_t>(t, mean, invstd, slope);
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    with_pack_and_index(s, x.numel(), in, {yp}, [&](auto vec, auto index) {
      constexpr int VEC = decltype(vec)::value;
      using index_t = decltype(index);
      apply_kernel<VEC, index_t><<<elementwise_blocks(x.numel(), VEC), kThreads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
          in, static_cast<index_t>(x.numel()), static_cast<index_t>(s.C), static_cast<index_t>(s.HW),
          s.channels_last, s.instance, yp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

// Whether the single-process forward and backward take the one-block-per-group kernels:
// NCHW groups of at most kFusedGroupElems elements, unless AUTOENC_FAST_SPADE_NORM_FUSED
// says 0 (never) or 1 (every NCHW input). Read per call, so a benchmark can switch it.
bool use_fused_groups(const at::Tensor& x, bool instance) {
  const Shape s = shape_of(x, instance);
  const int64_t elems = s.group_elems();
  // One block per group, and int pack indices stepping by blockDim inside it: both stay far
  // from overflowing (only AUTOENC_FAST_SPADE_NORM_FUSED=1 sends large groups here).
  if (s.channels_last || x.numel() == 0 || elems > (int64_t{1} << 30) ||
      s.groups() > std::numeric_limits<int32_t>::max())
    return false;
  const std::string mode = env_switch("spade_norm", "AUTOENC_FAST_SPADE_NORM_FUSED", {"0", "1", "auto"});
  if (mode == "0" || mode == "1") return mode == "1";
  return elems <= kFusedGroupElems;
}

// y, mean and invstd of the per-group kernel; var into `var`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_forward(const SpadeLaidOut& t, bool instance, double eps,
                                                             std::optional<double> slope, at::Tensor& var) {
  const at::Tensor& x = t.x;
  at::Tensor y = spade_empty_like_x(x), mean = spade_empty_stats(x, instance), invstd = spade_empty_stats(x, instance);
  var = spade_empty_stats(x, instance);
  const Shape s = shape_of(x, instance);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_fused_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto in = inputs_of<scalar_t, acc_t>(t, {}, {}, slope);
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    with_pack(s, in, {yp}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      fused_forward_kernel<VEC><<<static_cast<unsigned>(s.groups()), threads_for(group_packs<VEC>(s)), 0,
                                  c10::cuda::getCurrentCUDAStream()>>>(
          in, s, static_cast<acc_t>(eps), yp, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
          invstd.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mean, invstd};
}

// One running buffer updated with its batch statistic (update_running_kernel).
void update_running(const at::Tensor& running, const at::Tensor& stat, double momentum, double scale) {
  spade_update_running(running, [&](at::Tensor& target) {
    const int64_t n = target.numel();
    const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "spade_norm_running_cuda", [&] {
      using running_t = scalar_t;
      running_t* r = target.mutable_data_ptr<running_t>();
      AT_DISPATCH_FLOATING_TYPES(stat.scalar_type(), "spade_norm_running_stat_cuda", [&] {
        update_running_kernel<running_t, scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            r, stat.const_data_ptr<scalar_t>(), n, momentum, scale);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

// y, mean and invstd with batch statistics: the per-group kernel where use_fused_groups
// says so, else the statistics and the elementwise pass; var into `var`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_stats_forward(const SpadeLaidOut& t, bool instance, double eps,
                                                                   std::optional<double> slope, at::Tensor& var) {
  if (use_fused_groups(t.x, instance)) return fused_forward(t, instance, eps, slope, var);
  at::Tensor mean, invstd;
  std::tie(mean, var, invstd) = stats_impl(t.x, instance, eps);
  return {apply_impl(t, mean, invstd, slope), mean, invstd};
}

// The single-process forward (spade_norm and spade_norm_merged).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const SpadeLaidOut& t, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance, double momentum,
    double eps, std::optional<double> slope) {
  return spade_single_process_forward(
      t.x, running_mean, running_var, use_input_stats, momentum, eps,
      [&](const at::Tensor& mean, const at::Tensor& invstd) { return apply_impl(t, mean, invstd, slope); },
      [&](at::Tensor& var) { return batch_stats_forward(t, instance, eps, slope, var); }, update_running);
}

// dx of the per-group kernels; dgamma and dbeta into `grads`.
at::Tensor fused_backward(const SpadeLaidOut& t, const at::Tensor& mean_in, const at::Tensor& invstd_in,
                          const SpadeParamGrads& grads, std::optional<double> slope) {
  const at::Tensor& x = t.x;
  const at::Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  at::Tensor dx = spade_empty_like_x(x);
  const Shape s = shape_of(x, mean.dim() == 2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_fused_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto in = inputs_of<scalar_t, acc_t>(t, mean, invstd, slope, grads.at_params);
    scalar_t *dxp = dx.mutable_data_ptr<scalar_t>(), *dgp = grads.dgamma.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = grads.dbeta.mutable_data_ptr<scalar_t>();
    with_pack(s, in, {dxp, dgp, dbp}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      fused_backward_kernel<VEC><<<static_cast<unsigned>(s.groups()), threads_for(group_packs<VEC>(s)), 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(in, s, dxp, dgp, dbp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dx;
}

// The sums A = sum dxhat and B = sum dxhat * xhat per group, or with `means` A / M and B / M.
std::tuple<at::Tensor, at::Tensor> backward_reduce_impl(const SpadeLaidOut& t, const at::Tensor& mean_in,
                                                        const at::Tensor& invstd_in, std::optional<double> slope,
                                                        bool means = false) {
  const at::Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  if (t.x.numel() == 0) return {at::zeros_like(mean), at::zeros_like(mean)};
  // finalize_kernel writes every group: no zero fill (a launch each) first.
  at::Tensor sum1 = at::empty_like(mean), sum2 = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.x.scalar_type(), "spade_norm_backward_reduce_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    reduce<true>(inputs_of<scalar_t, acc_t>(t, mean, invstd, slope), shape_of(t.x, mean.dim() == 2), t.x, sum1,
                 sum2, Finish<acc_t>{nullptr, 0, means});
  });
  return {sum1, sum2};
}

// dx of the elementwise pass; dgamma and dbeta into `grads`.
at::Tensor backward_elemt_impl(const SpadeLaidOut& t, const at::Tensor& mean_in, const at::Tensor& invstd_in,
                               const std::optional<at::Tensor>& mean_dxhat,
                               const std::optional<at::Tensor>& mean_dxhat_xhat, const SpadeParamGrads& grads,
                               std::optional<double> slope) {
  const at::Tensor& x = t.x;
  const at::Tensor mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const at::Tensor m1 = mean_dxhat.has_value() ? mean_dxhat->contiguous() : at::Tensor();
  const at::Tensor m2 = mean_dxhat_xhat.has_value() ? mean_dxhat_xhat->contiguous() : at::Tensor();
  at::Tensor dx = spade_empty_like_x(x);
  if (x.numel() == 0) return dx;
  const Shape s = shape_of(x, mean.dim() == 2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_norm_backward_elemt_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto in = inputs_of<scalar_t, acc_t>(t, mean, invstd, slope, grads.at_params);
    const acc_t* m1p = m1.defined() ? m1.const_data_ptr<acc_t>() : nullptr;
    const acc_t* m2p = m2.defined() ? m2.const_data_ptr<acc_t>() : nullptr;
    scalar_t *dxp = dx.mutable_data_ptr<scalar_t>(), *dgp = grads.dgamma.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = grads.dbeta.mutable_data_ptr<scalar_t>();
    with_pack_and_index(s, x.numel(), in, {dxp, dgp, dbp}, [&](auto vec, auto index) {
      constexpr int VEC = decltype(vec)::value;
      using index_t = decltype(index);
      backward_elemt_kernel<VEC, index_t><<<elementwise_blocks(x.numel(), VEC), kThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
          in, m1p, m2p, static_cast<index_t>(x.numel()), static_cast<index_t>(s.C),
          static_cast<index_t>(s.HW), s.channels_last, s.instance, dxp, dgp, dbp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dx;
}

// Single-process backward (spade_norm_backward and spade_norm_merged_backward): the
// per-group kernels, or the reduce pass and then the elementwise pass. Returns dx.
at::Tensor backward_impl(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                         bool use_input_stats, const SpadeParamGrads& grads, std::optional<double> slope) {
  if (use_input_stats && use_fused_groups(t.x, mean.dim() == 2)) return fused_backward(t, mean, invstd, grads, slope);
  std::optional<at::Tensor> mean_dxhat, mean_dxhat_xhat;
  if (use_input_stats) {
    std::tie(mean_dxhat, mean_dxhat_xhat) = backward_reduce_impl(t, mean, invstd, slope, /*means=*/true);
  }
  return backward_elemt_impl(t, mean, invstd, mean_dxhat, mean_dxhat_xhat, grads, slope);
}

// ---------------------------------------------------------------- the ops

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_cuda(
    const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool use_input_stats, bool instance, double momentum, double eps, std::optional<double> slope) {
  check_spade_forward_inputs(x, gamma, beta, running_mean, running_var, use_input_stats, instance);
  check_cuda_inputs(x, "spade_norm");
  const c10::cuda::CUDAGuard guard(x.device());
  return forward_impl(spade_lay_out({}, x, gamma, beta), running_mean, running_var, use_input_stats, instance,
                      momentum, eps, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_merged_cuda(
    const at::Tensor& x, const at::Tensor& gamma_beta, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance, double momentum,
    double eps, std::optional<double> slope) {
  check_spade_forward_inputs(x, gamma_beta, {}, running_mean, running_var, use_input_stats, instance,
                             "spade_norm_merged");
  check_cuda_inputs(x, "spade_norm_merged");
  const c10::cuda::CUDAGuard guard(x.device());
  return forward_impl(spade_lay_out_merged({}, x, gamma_beta), running_mean, running_var, use_input_stats,
                      instance, momentum, eps, slope);
}

std::tuple<at::Tensor, at::Tensor> spade_norm_stats_cuda(const at::Tensor& x, bool instance) {
  check_spade_x(x, "spade_norm_stats");
  check_cuda_inputs(x, "spade_norm_stats");
  const c10::cuda::CUDAGuard guard(x.device());
  auto [mean, var, unused] = stats_impl(x, instance);
  return {mean, var};
}

at::Tensor spade_norm_apply_cuda(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                 const at::Tensor& mean, const at::Tensor& invstd,
                                 std::optional<double> slope) {
  check_spade_apply_inputs(x, gamma, beta, mean, invstd, "spade_norm_apply");
  check_cuda_inputs(x, "spade_norm_apply");
  const c10::cuda::CUDAGuard guard(x.device());
  return apply_impl(spade_lay_out({}, x, gamma, beta), mean, invstd, slope);
}

std::tuple<at::Tensor, at::Tensor> spade_norm_backward_reduce_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma, beta, mean, invstd, "spade_norm_backward_reduce");
  check_cuda_inputs(x, "spade_norm_backward_reduce");
  const c10::cuda::CUDAGuard guard(x.device());
  return backward_reduce_impl(spade_lay_out(grad_y, x, gamma, beta), mean, invstd, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_backward_elemt_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, const std::optional<at::Tensor>& mean_dxhat,
    const std::optional<at::Tensor>& mean_dxhat_xhat, std::optional<double> slope) {
  check_spade_elemt_inputs(grad_y, x, gamma, beta, mean, invstd, mean_dxhat, mean_dxhat_xhat);
  check_cuda_inputs(x, "spade_norm_backward_elemt");
  const c10::cuda::CUDAGuard guard(x.device());
  return spade_backward_separate(grad_y, x, gamma, beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_elemt_impl(t, mean, invstd, mean_dxhat, mean_dxhat_xhat, grads, slope);
  });
}

std::tuple<at::Tensor, at::Tensor> spade_norm_merged_backward_elemt_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma_beta, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& mean_dxhat,
    const std::optional<at::Tensor>& mean_dxhat_xhat, std::optional<double> slope) {
  check_spade_elemt_inputs(grad_y, x, gamma_beta, {}, mean, invstd, mean_dxhat, mean_dxhat_xhat);
  check_cuda_inputs(x, "spade_norm_merged_backward_elemt");
  const c10::cuda::CUDAGuard guard(x.device());
  return spade_backward_merged(grad_y, x, gamma_beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_elemt_impl(t, mean, invstd, mean_dxhat, mean_dxhat_xhat, grads, slope);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, bool use_input_stats,
    std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma, beta, mean, invstd, "spade_norm_backward");
  check_cuda_inputs(x, "spade_norm_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return spade_backward_separate(grad_y, x, gamma, beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_impl(t, mean, invstd, use_input_stats, grads, slope);
  });
}

std::tuple<at::Tensor, at::Tensor> spade_norm_merged_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma_beta, const at::Tensor& mean,
    const at::Tensor& invstd, bool use_input_stats, std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma_beta, {}, mean, invstd, "spade_norm_merged_backward");
  check_cuda_inputs(x, "spade_norm_merged_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return spade_backward_merged(grad_y, x, gamma_beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_impl(t, mean, invstd, use_input_stats, grads, slope);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, CUDA, m) {
  m.impl("spade_norm", &spade_norm_cuda);
  m.impl("spade_norm_merged", &spade_norm_merged_cuda);
  m.impl("spade_norm_stats", &spade_norm_stats_cuda);
  m.impl("spade_norm_apply", &spade_norm_apply_cuda);
  m.impl("spade_norm_backward", &spade_norm_backward_cuda);
  m.impl("spade_norm_merged_backward", &spade_norm_merged_backward_cuda);
  m.impl("spade_norm_backward_reduce", &spade_norm_backward_reduce_cuda);
  m.impl("spade_norm_backward_elemt", &spade_norm_backward_elemt_cuda);
  m.impl("spade_norm_merged_backward_elemt", &spade_norm_merged_backward_elemt_cuda);
}

}  // namespace autoenc_fast

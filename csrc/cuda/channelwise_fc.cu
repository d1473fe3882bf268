// CUDA kernels of autoenc_fast::channelwise_fc and its backward. With P = H * W and,
// per channel c, X_c = x[:, c] as a (B, P) matrix and W_c = weight[c] (P, P):
//
//   forward   Y_c  = X_c @ W_c + bias_c            (M = B,     N = P, K = P)
//   backward  dX_c = dY_c @ W_c^T                  (M = B,     N = P, K = P)
//             [dW_c; db_c] = [X_c^T; 1] @ dY_c     (M = P + 1, N = P, K = B)
//
// All three are one batched-per-channel tiled GEMM, channel_gemm_block, that reads
// its operands through small loader functors: x, grad_y and the outputs are accessed
// through their own (b, c, h, w) strides, so contiguous, channels_last and strided
// views need no permute copy. The extra row of ones in the weight-gradient product
// makes its last output row the bias gradient (sum over the batch) in the same pass.
//
// Block (channel c, row tile, column tile): the K dimension is walked in tiles of at
// most 64; each step stages a (tile_m x tile_k) tile of the left operand and a
// (tile_k x tile_n) tile of the right one in shared memory. In the forward pass the
// right operand is W_c: for maps up to 8x8 (P <= 64) the channel's whole weight
// matrix sits in shared memory and is reused by every batch row of the block. Each
// thread owns kRowsPerThread rows of one output column (or of 2 or 4 columns, a variant
// the GPU check times); it accumulates in float (double for float64) and the bias is
// added in the store. Reductions run in a fixed order inside one thread: results are
// deterministic (no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>

#include "../channelwise_fc_checks.h"
#include "env_switch.h"

namespace autoenc_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerThread = 4;
constexpr int kMaxTile = 64;              // largest tile_n and tile_k
constexpr int kMicro = 0;                 // the "kCols" of the 4x4 micro-tiled variant (see channel_gemm_micro)
constexpr int kSharedBytes = 48 * 1024;   // the default dynamic shared memory limit
constexpr int64_t kMaxGridYZ = 65535;

// Element (b, c, p) of a (B, C, H, W) tensor, p = h * W + w, through its strides. Every
// contiguous and channels_last tensor has flat positions (sp >= 0, flat_position_stride)
// and is addressed with multiplies only; the general case divides p by W. A 64-bit
// division and remainder per element loaded or stored is a long instruction sequence on
// the GPU, and at the Context Encoder's shapes a tile has only 36 multiply-adds per
// element to hide it behind.
template <typename T>
struct StridedMap {
  T* data;
  int64_t sb, sc, sp, sh, sw, W;

  StridedMap(T* ptr, const at::Tensor& t)
      : data(ptr), sb(t.stride(0)), sc(t.stride(1)), sp(flat_position_stride(t)), sh(t.stride(2)),
        sw(t.stride(3)), W(t.size(3)) {}
  __device__ __forceinline__ T& operator()(int64_t b, int64_t c, int64_t p) const {
    const int64_t at = sp >= 0 ? p * sp : (p / W) * sh + (p % W) * sw;
    return data[b * sb + c * sc + at];
  }
};

// Every operand loader says which of its two indices walks adjacent elements of a
// contiguous (NCHW) tensor, kFirstAdjacent: tiles are staged with consecutive threads on
// that index, so a warp's loads fall into a few 32-byte sectors instead of one sector each.

// Left operand (m, k) = map[m, c, k]: x in the forward pass, grad_y for grad_x.
template <typename scalar_t, typename acc_t>
struct BatchRows {
  static constexpr bool kFirstAdjacent = false;  // positions k are adjacent
  StridedMap<const scalar_t> map;
  __device__ acc_t operator()(int64_t c, int64_t m, int64_t k) const { return static_cast<acc_t>(map(m, c, k)); }
};

// Left operand (m, k) = x[k, c, m] for m < P and 1 for m == P: [X_c^T; 1].
template <typename scalar_t, typename acc_t>
struct PositionRowsWithOnes {
  static constexpr bool kFirstAdjacent = true;  // positions m are adjacent; samples k lie C*H*W apart
  StridedMap<const scalar_t> map;
  int64_t P;
  __device__ acc_t operator()(int64_t c, int64_t m, int64_t k) const {
    return m < P ? static_cast<acc_t>(map(k, c, m)) : acc_t(1);
  }
};

// Right operand (k, n) = W_c[k, n], or W_c[n, k] (W_c^T) when kTranspose.
template <typename scalar_t, typename acc_t, bool kTranspose>
struct WeightCols {
  static constexpr bool kFirstAdjacent = kTranspose;
  const scalar_t* weight;  // contiguous (C, P, P)
  int64_t P;
  __device__ acc_t operator()(int64_t c, int64_t k, int64_t n) const {
    const int64_t at = kTranspose ? n * P + k : k * P + n;
    return static_cast<acc_t>(weight[c * P * P + at]);
  }
};

// Right operand (k, n) = grad_y[k, c, n]: the batch is the K dimension.
template <typename scalar_t, typename acc_t>
struct BatchCols {
  static constexpr bool kFirstAdjacent = false;  // positions n are adjacent
  StridedMap<const scalar_t> map;
  __device__ acc_t operator()(int64_t c, int64_t k, int64_t n) const { return static_cast<acc_t>(map(k, c, n)); }
};

// out[m, c, n] = v + bias[c, n] (bias may be null): y, or grad_x without bias.
template <typename scalar_t, typename acc_t>
struct StoreMap {
  StridedMap<scalar_t> map;
  const scalar_t* bias;  // contiguous (C, P) or null
  int64_t P;
  __device__ void operator()(int64_t c, int64_t m, int64_t n, acc_t v) const {
    if (bias != nullptr) v += static_cast<acc_t>(bias[c * P + n]);
    map(m, c, n) = static_cast<scalar_t>(v);
  }
};

// Rows m < P go to grad_weight[c, m, n], the row of ones (m == P) to grad_bias[c, n].
template <typename scalar_t, typename acc_t>
struct StoreWeightGrad {
  scalar_t* grad_weight;  // contiguous (C, P, P)
  scalar_t* grad_bias;    // contiguous (C, P)
  int64_t P;
  __device__ void operator()(int64_t c, int64_t m, int64_t n, acc_t v) const {
    if (m < P) {
      grad_weight[(c * P + m) * P + n] = static_cast<scalar_t>(v);
    } else {
      grad_bias[c * P + n] = static_cast<scalar_t>(v);
    }
  }
};

// tile[i * ld + j] (kTransposed: tile[j * ld + i]) = load(i, j) for i < rows, j < cols, by
// every thread of the block. Consecutive threads take consecutive i when kFirstAdjacent,
// else consecutive j. Each thread divides once and then steps its (i, j) by the block
// size with adds only.
template <bool kFirstAdjacent, bool kTransposed = false, typename acc_t, typename Load>
__device__ __forceinline__ void stage_tile(int rows, int cols, acc_t* tile, int ld, const Load& load) {
  const int fast_extent = kFirstAdjacent ? rows : cols, slow_extent = kFirstAdjacent ? cols : rows;
  const int fast_step = static_cast<int>(blockDim.x) % fast_extent;
  const int slow_step = static_cast<int>(blockDim.x) / fast_extent;
  int fast = static_cast<int>(threadIdx.x) % fast_extent, slow = static_cast<int>(threadIdx.x) / fast_extent;
  while (slow < slow_extent) {
    const int i = kFirstAdjacent ? fast : slow, j = kFirstAdjacent ? slow : fast;
    tile[kTransposed ? j * ld + i : i * ld + j] = load(i, j);
    fast += fast_step;
    slow += slow_step;
    if (fast >= fast_extent) fast -= fast_extent, ++slow;
  }
}

// Row length of the B tile in shared memory: staged down its columns (kFirstAdjacent),
// consecutive threads store tile_n apart, so the row gets one element of padding to spread
// those stores over the banks; the compute loop reads along rows either way.
template <typename BLoad>
constexpr int b_tile_ld(int tile_n) {
  return tile_n + (BLoad::kFirstAdjacent ? 1 : 0);
}

// One batched-per-channel product out_c (M, N) = A_c (M, K) @ B_c (K, N), c < C, with its
// tile sizes: a kernel argument.
template <typename ALoad, typename BLoad, typename Store>
struct ChannelGemm {
  using A = ALoad;
  using B = BLoad;
  int64_t M, N, K;
  int tile_n, tile_k;
  ALoad a;
  BLoad b;
  Store store;
};

// Channel c's product, by one block (every thread), its rows from blockIdx.y on in steps of
// gridDim.y tiles, its columns the tile blockIdx.z.
// Thread (g, tn) computes rows g + groups * q (q < kRowsPerThread) of the columns
// tn + col_threads * j (j < kCols), col_threads = ceil(tile_n / kCols). With kCols = 1
// each A value read from shared memory feeds one multiply-add per row; with kCols
// columns it feeds kCols (kRowsPerThread + kCols shared loads per kRowsPerThread * kCols
// multiply-adds), at the price of fewer threads per column tile. Every output sums its
// products in the same order (k ascending) whatever kCols is: the results are identical.
template <int kCols, typename acc_t, typename Gemm>
__device__ __forceinline__ void channel_gemm_columns(const Gemm& gemm, int64_t c, acc_t* shared) {
  using ALoad = typename Gemm::A;
  using BLoad = typename Gemm::B;
  const int64_t M = gemm.M, N = gemm.N, K = gemm.K;
  const int tile_n = gemm.tile_n, tile_k = gemm.tile_k;
  const int col_threads = (tile_n + kCols - 1) / kCols;
  const int groups = blockDim.x / col_threads;  // row groups; threads past groups * col_threads only load
  const int tile_m = groups * kRowsPerThread;
  const int lda = tile_k + 1;  // padded row: fewer bank conflicts on the column reads
  acc_t* a_s = shared;         // [tile_m][tile_k + 1]
  const int ldb = b_tile_ld<BLoad>(tile_n);
  acc_t* b_s = a_s + tile_m * lda;  // [tile_k][ldb]
  const int tn = threadIdx.x % col_threads, g = threadIdx.x / col_threads;
  const int64_t n0 = static_cast<int64_t>(blockIdx.z) * tile_n;
  const bool computes = g < groups;
  // Every thread of the block runs the same m0 and k0 iterations, so the barriers hold.
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * tile_m; m0 < M; m0 += static_cast<int64_t>(gridDim.y) * tile_m) {
    acc_t acc[kRowsPerThread][kCols];
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) {
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[q][j] = acc_t(0);
    }
    for (int64_t k0 = 0; k0 < K; k0 += tile_k) {
      stage_tile<ALoad::kFirstAdjacent>(tile_m, tile_k, a_s, lda, [&](int r, int kk) {
        return m0 + r < M && k0 + kk < K ? gemm.a(c, m0 + r, k0 + kk) : acc_t(0);
      });
      stage_tile<BLoad::kFirstAdjacent>(tile_k, tile_n, b_s, ldb, [&](int kk, int col) {
        return k0 + kk < K && n0 + col < N ? gemm.b(c, k0 + kk, n0 + col) : acc_t(0);
      });
      __syncthreads();
      if (computes) {
        for (int kk = 0; kk < tile_k; ++kk) {
          acc_t bv[kCols];
#pragma unroll
          for (int j = 0; j < kCols; ++j) {
            const int col = tn + col_threads * j;
            bv[j] = col < tile_n ? b_s[kk * ldb + col] : acc_t(0);
          }
#pragma unroll
          for (int q = 0; q < kRowsPerThread; ++q) {
            const acc_t av = a_s[(g + groups * q) * lda + kk];
#pragma unroll
            for (int j = 0; j < kCols; ++j) acc[q][j] += av * bv[j];
          }
        }
      }
      __syncthreads();  // the next step overwrites the tiles
    }
    if (computes) {
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int col = tn + col_threads * j;
        if (col >= tile_n || n0 + col >= N) continue;
#pragma unroll
        for (int q = 0; q < kRowsPerThread; ++q) {
          const int64_t m = m0 + g + groups * q;
          if (m < M) gemm.store(c, m, n0 + col, acc[q][j]);
        }
      }
    }
  }
}

__host__ __device__ constexpr int round_up4(int n) { return (n + 3) / 4 * 4; }

// Row lengths of the micro-tiled variant's shared tiles. A (transposed, a_t[k][m]) is
// staged with consecutive threads on k, and B (b_s[k][n]) too when its loader walks k
// adjacently (W_c^T for grad_x): a row length that is a multiple of 32 words put a warp's
// stores in one bank. Four words of padding (rows stay 16-byte aligned for the quad reads)
// spread them over eight banks.
__host__ __device__ constexpr int micro_a_ld(int tile_m) { return tile_m + 4; }
template <typename BLoad>
__host__ __device__ constexpr int micro_b_ld(int tile_n) {
  return round_up4(tile_n) + (BLoad::kFirstAdjacent ? 4 : 0);
}

template <typename acc_t>
struct alignas(16) Quad {
  acc_t v[4];
};

// Channel c's product with 4x4 micro-tiles (AUTOENC_FAST_CHANNELWISE_FC_COLS=4x4): thread
// (rg, cg) computes rows 4rg..4rg+3 of columns 4cg..4cg+3. A is staged transposed
// (a_t[k][m]) and B as it is (b_s[k][n]), both in rows a multiple of 4 long, so each k
// step reads its four A and four B values with two 16-byte shared loads for 16
// multiply-adds (the column variants: 4 + kCols scalar loads for 4 * kCols). The same
// sums in the same order as they: identical results.
template <typename acc_t, typename Gemm>
__device__ __forceinline__ void channel_gemm_micro(const Gemm& gemm, int64_t c, acc_t* shared) {
  using ALoad = typename Gemm::A;
  using BLoad = typename Gemm::B;
  const int64_t M = gemm.M, N = gemm.N, K = gemm.K;
  const int tile_n = gemm.tile_n, tile_k = gemm.tile_k;
  const int ldn = micro_b_ld<BLoad>(tile_n), col_groups = round_up4(tile_n) / 4;
  const int row_groups = blockDim.x / col_groups;  // threads past row_groups * col_groups only load
  const int tile_m = row_groups * 4, ldm = micro_a_ld(tile_m);
  acc_t* a_t = shared;              // [tile_k][ldm]
  acc_t* b_s = a_t + tile_k * ldm;  // [tile_k][ldn]
  const int cg = threadIdx.x % col_groups, rg = threadIdx.x / col_groups;
  const bool computes = rg < row_groups;
  const int64_t n0 = static_cast<int64_t>(blockIdx.z) * tile_n;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * tile_m; m0 < M; m0 += static_cast<int64_t>(gridDim.y) * tile_m) {
    acc_t acc[4][4] = {};
    for (int64_t k0 = 0; k0 < K; k0 += tile_k) {
      stage_tile<ALoad::kFirstAdjacent, true>(tile_m, tile_k, a_t, ldm, [&](int r, int kk) {
        return m0 + r < M && k0 + kk < K ? gemm.a(c, m0 + r, k0 + kk) : acc_t(0);
      });
      stage_tile<BLoad::kFirstAdjacent>(tile_k, round_up4(tile_n), b_s, ldn, [&](int kk, int col) {
        return k0 + kk < K && col < tile_n && n0 + col < N ? gemm.b(c, k0 + kk, n0 + col) : acc_t(0);
      });
      __syncthreads();
      if (computes) {
        for (int kk = 0; kk < tile_k; ++kk) {
          const Quad<acc_t> av = *reinterpret_cast<const Quad<acc_t>*>(a_t + kk * ldm + rg * 4);
          const Quad<acc_t> bv = *reinterpret_cast<const Quad<acc_t>*>(b_s + kk * ldn + cg * 4);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += av.v[i] * bv.v[j];
          }
        }
      }
      __syncthreads();  // the next step overwrites the tiles
    }
    if (computes) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + rg * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int col = cg * 4 + j;
          if (m < M && col < tile_n && n0 + col < N) gemm.store(c, m, n0 + col, acc[i][j]);
        }
      }
    }
  }
}

template <int kCols, typename acc_t, typename Gemm>
__device__ __forceinline__ void channel_gemm_block(const Gemm& gemm, int64_t c, acc_t* shared) {
  if constexpr (kCols == kMicro) {
    channel_gemm_micro(gemm, c, shared);
  } else {
    channel_gemm_columns<kCols>(gemm, c, shared);
  }
}

// The product for channel c = blockIdx.x.
template <int kCols, typename acc_t, typename Gemm>
__global__ void __launch_bounds__(kThreads) channel_gemm_kernel(Gemm gemm) {
  extern __shared__ __align__(16) unsigned char shared_raw[];  // read as 16-byte quads
  channel_gemm_block<kCols>(gemm, blockIdx.x, reinterpret_cast<acc_t*>(shared_raw));
}

// Two products over the same C channels in one launch (the backward's grad_x and weight
// gradient): blocks [0, C) run the first, [C, 2C) the second. One launch instead of two;
// blocks past a product's own row tiles (the grid has the larger count) do nothing.
template <int kCols, typename acc_t, typename Gemm1, typename Gemm2>
__global__ void __launch_bounds__(kThreads) channel_gemm_pair_kernel(Gemm1 first, Gemm2 second, int64_t C) {
  extern __shared__ __align__(16) unsigned char shared_raw[];  // read as 16-byte quads
  acc_t* shared = reinterpret_cast<acc_t*>(shared_raw);
  const int64_t block = blockIdx.x;
  if (block < C) {
    channel_gemm_block<kCols>(first, block, shared);
  } else {
    channel_gemm_block<kCols>(second, block - C, shared);
  }
}

// Threads per block for a product of M rows and tile_n columns. A block of kThreads can
// span more rows than M has (the weight gradient's P + 1 = 17 rows at 4x4 maps against 64
// row slots; 37 against 2 x 28 at 6x6, the second tile one row), and the idle row slots
// still stage and multiply zeros. So: as few row tiles as kThreads threads allow, the rows
// split evenly between them, and the threads those rows need (at least two warps).
template <int kCols>
int threads_for(int64_t M, int tile_n) {
  if (kCols == kMicro) {  // the row groups M needs, in whole warps
    const int64_t wanted = (round_up4(tile_n) / 4) * ((M + 3) / 4);
    return static_cast<int>(std::clamp<int64_t>((wanted + 31) / 32 * 32, kMaxTile, kThreads));
  }
  const int64_t col_threads = (tile_n + kCols - 1) / kCols;
  const int64_t max_rows = std::max<int64_t>(1, kThreads / col_threads) * kRowsPerThread;
  const int64_t tiles = std::max<int64_t>(1, (M + max_rows - 1) / max_rows);
  const int64_t groups = ((M + tiles - 1) / tiles + kRowsPerThread - 1) / kRowsPerThread;
  return static_cast<int>(std::clamp<int64_t>(col_threads * groups, kMaxTile, kThreads));
}

struct GemmLaunch {
  int64_t row_tiles, col_tiles;
  size_t shared;
};

// Fills in the product's tiles for blocks of `threads` threads: tile_n up to 64 columns,
// tile_k the largest (<= 64) whose two tiles fit the shared memory budget. Returns its
// row and column tile counts and its shared memory bytes.
template <int kCols, typename acc_t, typename Gemm>
GemmLaunch plan(Gemm& gemm, int threads) {
  constexpr bool kMicroTiles = kCols == kMicro;
  const int col_threads = kMicroTiles ? round_up4(gemm.tile_n) / 4 : (gemm.tile_n + kCols - 1) / kCols;
  const int tile_m = (threads / col_threads) * (kMicroTiles ? 4 : kRowsPerThread);
  // Shared memory: A in tile_m rows of tile_k + 1 (the column variants) or, transposed, in
  // tile_k rows of micro_a_ld(tile_m) (the micro tiles); then B in tile_k rows of ldb.
  // Per k: a_per_k words of A (plus a_fixed in all) and ldb of B.
  const int a_per_k = kMicroTiles ? micro_a_ld(tile_m) : tile_m, a_fixed = kMicroTiles ? 0 : tile_m;
  const int ldb = kMicroTiles ? micro_b_ld<typename Gemm::B>(gemm.tile_n) : b_tile_ld<typename Gemm::B>(gemm.tile_n);
  const int64_t budget = kSharedBytes / static_cast<int64_t>(sizeof(acc_t));
  const int64_t fit = (budget - a_fixed) / (a_per_k + ldb);
  gemm.tile_k = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({std::max<int64_t>(gemm.K, 1), kMaxTile, fit})));
  const size_t shared = sizeof(acc_t) * (static_cast<size_t>(a_per_k) * gemm.tile_k + a_fixed +
                                         static_cast<size_t>(gemm.tile_k) * ldb);
  return {(gemm.M + tile_m - 1) / tile_m, (gemm.N + gemm.tile_n - 1) / gemm.tile_n, shared};
}

template <typename ALoad, typename BLoad, typename Store>
ChannelGemm<ALoad, BLoad, Store> channel_gemm(int64_t M, int64_t N, int64_t K, const ALoad& a, const BLoad& b,
                                              const Store& store) {
  return {M, N, K, static_cast<int>(std::min<int64_t>(N, kMaxTile)), 0, a, b, store};
}

dim3 gemm_grid(int64_t blocks_x, const GemmLaunch& launch, int64_t N) {
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max() && launch.col_tiles <= kMaxGridYZ,
              "channelwise_fc: too many channels or positions for one launch (channels x products = ", blocks_x,
              ", H*W = ", N, ")");
  return dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(std::min<int64_t>(launch.row_tiles, kMaxGridYZ)),
              static_cast<unsigned>(launch.col_tiles));
}

template <int kCols, typename acc_t, typename Gemm>
void launch_with(int64_t C, Gemm gemm) {
  const int threads = threads_for<kCols>(gemm.M, gemm.tile_n);
  const GemmLaunch launch = plan<kCols, acc_t>(gemm, threads);
  channel_gemm_kernel<kCols, acc_t><<<gemm_grid(C, launch, gemm.N), threads, launch.shared,
                                      c10::cuda::getCurrentCUDAStream()>>>(gemm);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int kCols, typename acc_t, typename Gemm1, typename Gemm2>
void launch_pair_with(int64_t C, Gemm1 first, Gemm2 second) {
  TORCH_CHECK(first.N == second.N, "channelwise_fc: paired products need the same columns");
  const int threads = std::max(threads_for<kCols>(first.M, first.tile_n), threads_for<kCols>(second.M, second.tile_n));
  const GemmLaunch one = plan<kCols, acc_t>(first, threads), two = plan<kCols, acc_t>(second, threads);
  const GemmLaunch both{std::max(one.row_tiles, two.row_tiles), one.col_tiles, std::max(one.shared, two.shared)};
  channel_gemm_pair_kernel<kCols, acc_t><<<gemm_grid(2 * C, both, first.N), threads, both.shared,
                                           c10::cuda::getCurrentCUDAStream()>>>(first, second, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Columns per thread: 1 unless AUTOENC_FAST_CHANNELWISE_FC_COLS says 2 or 4, a switch for
// the GPU check to time the register-blocked variants against each other on the card
// before one becomes the default (read per call, so a benchmark can change it).
int columns_per_thread() {
  const std::string value =
      env_switch("channelwise_fc", "AUTOENC_FAST_CHANNELWISE_FC_COLS", {"1", "2", "4", "4x4"});
  if (value.empty()) return 1;
  return value == "4x4" ? kMicro : std::stoi(value);
}

// Calls fn(kCols constant) with the variant columns_per_thread() selects.
template <typename Fn>
void with_columns(const Fn& fn) {
  switch (columns_per_thread()) {
    case 2: return fn(std::integral_constant<int, 2>());
    case 4: return fn(std::integral_constant<int, 4>());
    case kMicro: return fn(std::integral_constant<int, kMicro>());
    default: return fn(std::integral_constant<int, 1>());
  }
}

template <typename acc_t, typename Gemm>
void launch_channel_gemm(int64_t C, const Gemm& gemm) {
  with_columns([&](auto cols) { launch_with<decltype(cols)::value, acc_t>(C, gemm); });
}

// The backward's two products in one launch when AUTOENC_FAST_CHANNELWISE_FC_PAIRED=1,
// else one launch each (the default until the GPU check measures the pair faster: it
// saves a launch but holds both products' registers, 60 instead of 40 and 48 per thread
// for float32 on sm_90, so fewer blocks fit an SM).
template <typename acc_t, typename Gemm1, typename Gemm2>
void launch_channel_gemm_pair(int64_t C, const Gemm1& first, const Gemm2& second) {
  if (env_switch("channelwise_fc", "AUTOENC_FAST_CHANNELWISE_FC_PAIRED", {"0", "1"}) != "1") {
    launch_channel_gemm<acc_t>(C, first);
    launch_channel_gemm<acc_t>(C, second);
    return;
  }
  with_columns([&](auto cols) { launch_pair_with<decltype(cols)::value, acc_t>(C, first, second); });
}

at::Tensor channelwise_fc_cuda(const at::Tensor& x, const at::Tensor& weight_in,
                               const std::optional<at::Tensor>& bias_in) {
  check_channelwise_fc_inputs(x, weight_in, bias_in);
  TORCH_CHECK(x.is_cuda(), "channelwise_fc: `x` must be a CUDA tensor for the CUDA kernel; got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(channelwise_fc_output_format(x)));
  if (y.numel() == 0) return y;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channelwise_fc_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const BatchRows<scalar_t, acc_t> a{StridedMap<const scalar_t>(x.const_data_ptr<scalar_t>(), x)};
    const WeightCols<scalar_t, acc_t, false> b{weight.const_data_ptr<scalar_t>(), P};
    const StoreMap<scalar_t, acc_t> store{StridedMap<scalar_t>(y.mutable_data_ptr<scalar_t>(), y),
                                          bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, P};
    launch_channel_gemm<acc_t>(C, channel_gemm(B, P, P, a, b, store));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channelwise_fc_backward_cuda(const at::Tensor& grad_y,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& weight_in) {
  check_channelwise_fc_backward_inputs(grad_y, x, weight_in);
  TORCH_CHECK(x.is_cuda(), "channelwise_fc_backward: `x` must be a CUDA tensor for the CUDA kernel; got ",
              x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(channelwise_fc_output_format(x)));
  at::Tensor grad_weight = at::empty({C, P, P}, x.options());
  at::Tensor grad_bias = at::empty({C, P}, x.options());
  if (x.numel() == 0) {
    // An empty batch contributes nothing to the parameter gradients: they are zeros.
    grad_weight.zero_();
    grad_bias.zero_();
    return {grad_x, grad_weight, grad_bias};
  }
  const at::Tensor weight = weight_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channelwise_fc_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const StridedMap<const scalar_t> gy(grad_y.const_data_ptr<scalar_t>(), grad_y);
    const StridedMap<const scalar_t> xs(x.const_data_ptr<scalar_t>(), x);
    // grad_x = grad_y @ W^T and [grad_weight; grad_bias] = [x^T; 1] @ grad_y
    launch_channel_gemm_pair<acc_t>(
        C,
        channel_gemm(B, P, P, BatchRows<scalar_t, acc_t>{gy},
                     WeightCols<scalar_t, acc_t, true>{weight.const_data_ptr<scalar_t>(), P},
                     StoreMap<scalar_t, acc_t>{StridedMap<scalar_t>(grad_x.mutable_data_ptr<scalar_t>(), grad_x),
                                               nullptr, P}),
        channel_gemm(P + 1, P, B, PositionRowsWithOnes<scalar_t, acc_t>{xs, P}, BatchCols<scalar_t, acc_t>{gy},
                     StoreWeightGrad<scalar_t, acc_t>{grad_weight.mutable_data_ptr<scalar_t>(),
                                                      grad_bias.mutable_data_ptr<scalar_t>(), P}));
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, CUDA, m) {
  m.impl("channelwise_fc", &channelwise_fc_cuda);
  m.impl("channelwise_fc_backward", &channelwise_fc_backward_cuda);
}

}  // namespace autoenc_fast

// CPU kernels of autoenc_fast::channelwise_fc and its backward. With P = H * W and,
// per channel c, X_c = x[:, c] viewed as a (B, P) matrix and W_c = weight[c] (P, P):
//
//   forward   Y_c  = X_c @ W_c + 1 * bias_c          y[b, c, j] = sum_i x[b, c, i] W[c, i, j] + bias[c, j]
//   backward  dX_c = dY_c @ W_c^T                    (B, P)
//             dW_c = X_c^T @ dY_c                    (P, P), summed over the whole batch
//             db_c = sum_b dY_c[b, :]                (P)
//
// Channels are independent, so at::parallel_for splits blocks of channels over
// threads and every reduction (over the batch for dW and db) runs in one thread in a
// fixed order: results do not depend on the thread count. Each channel's product is a
// register-tiled at::vec micro-kernel. Its right matrix is W_c read in place (forward;
// the last vector of each row loaded masked), or W_c^T or dY_c copied with rows padded to
// a multiple of the vector width (backward).
//
// NCHW x (rows of a sample adjacent; any batch stride): the micro-kernel reads X_c
// straight from x (and X_c^T, for dW, in place) and writes Y_c and dX_c straight into
// the output rows, leaving their padding columns unwritten; the forward walks the batch
// in strips of kStripRows rows with the block's channels inner, so each strip touches
// runs of adjacent memory. This was 1.4-1.9x faster than the gather path below.
// Other layouts (channels_last, strided views): a task walks the batch in chunks of
// kBatchChunk rows, gathers each row's channel block from x's own strides into a dense
// block, multiplies, and scatters the result through the output's strides.
// float32 and float64, each accumulating in its own type.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "../channelwise_fc_checks.h"

namespace autoenc_fast {
namespace {

// Batch rows per gathered chunk, and the budget (in elements) of one channel block's
// padded weights: together they keep a task's working set in L2.
constexpr int64_t kBatchChunk = 64;
constexpr int64_t kBlockWeightElems = 32768;
constexpr int64_t kMaxChannelBlock = 8;
// Batch rows per strip of the direct (NCHW) forward: a multiple of both tile heights.
constexpr int64_t kStripRows = 12;
// Micro-kernel tile: tile_rows<kVecs> output rows x kVecs vectors of columns, at most
// 12 accumulators so they, the right-hand vectors and a broadcast fit AVX2's 16 registers.
template <int kVecs>
constexpr int tile_rows() {
  return kVecs >= 3 ? 4 : 6;
}

// The first n (0 < n < Vec::size()) lanes of a vector from or to memory. at::vec's
// loadu(p, n) and store(p, n) go through a stack buffer and a memcpy call; a row of 36
// positions ends in such a partial vector, in the micro-kernel's stores and every row
// copy. Loads: AVX2's masked move (one instruction, no fault past n). Stores: the
// vector's 128-, 64- and 32-bit pieces that n spans; AVX2's masked store is microcoded
// on AMD Zen (measured here: 3.3 ns per store against 0.4 for a plain one), and a
// forward + backward step at the Context Encoder's 6x6 shape made 59,000 of them.
#if defined(CPU_CAPABILITY_AVX2)
inline __m256i first_lanes_mask32(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i first_lanes_mask64(int64_t n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
// The first `bytes` (a multiple of 4 below 32) of v, as its 16-, 8- and 4-byte pieces.
inline void store_first_bytes(__m256i v, char* p, int64_t bytes) {
  __m128i piece = _mm256_castsi256_si128(v);
  if (bytes & 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), piece);
    piece = _mm256_extracti128_si256(v, 1);
    p += 16;
  }
  if (bytes & 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), piece);
    piece = _mm_srli_si128(piece, 8);
    p += 8;
  }
  if (bytes & 4) {
    const int32_t word = _mm_cvtsi128_si32(piece);
    std::memcpy(p, &word, sizeof(word));
  }
}
#endif

template <typename scalar_t>
inline at::vec::Vectorized<scalar_t> load_first(const scalar_t* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) return _mm256_maskload_ps(p, first_lanes_mask32(n));
  if constexpr (std::is_same_v<scalar_t, double>) return _mm256_maskload_pd(p, first_lanes_mask64(n));
#endif
  return at::vec::Vectorized<scalar_t>::loadu(p, n);
}

template <typename scalar_t>
inline void store_first(const at::vec::Vectorized<scalar_t>& v, scalar_t* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    return store_first_bytes(_mm256_castps_si256(v), reinterpret_cast<char*>(p), n * 4);
  }
  if constexpr (std::is_same_v<scalar_t, double>) {
    return store_first_bytes(_mm256_castpd_si256(v), reinterpret_cast<char*>(p), n * 8);
  }
#endif
  v.store(p, n);
}

// dst[0 .. n) = src[0 .. n) with vector moves: rows are short (16 or 36 positions for the
// Context Encoder), where a libc memmove call per row costs more than the copy.
template <typename scalar_t>
inline void copy_row(const scalar_t* src, int64_t n, scalar_t* dst) {
  using Vec = at::vec::Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) Vec::loadu(src + i).store(dst + i);
  if (i < n) store_first(load_first(src + i, n - i), dst + i, n - i);
}

// dst (P, ld_dst) = src (P, P)^T: 8x8 register transposes (at::vec's AVX2 one for
// float), then the ragged edges. Element by element, the strided reads cost 7 % of the
// backward at the 6x6 Context Encoder shape.
template <typename scalar_t>
void transpose_square(const scalar_t* src, int64_t P, scalar_t* dst, int64_t ld_dst) {
  constexpr int kBlock = 8;
  for (int64_t i = 0; i < P; i += kBlock) {
    const int rows = static_cast<int>(std::min<int64_t>(kBlock, P - i));
    for (int64_t j = 0; j < P; j += kBlock) {
      const int cols = static_cast<int>(std::min<int64_t>(kBlock, P - j));
      if (rows == kBlock && cols == kBlock) {
        at::vec::transpose_mxn<scalar_t, kBlock, kBlock>(src + i * P + j, P, dst + j * ld_dst + i, ld_dst);
      } else {
        at::vec::transpose_mxn<scalar_t>(src + i * P + j, P, dst + j * ld_dst + i, ld_dst, rows, cols);
      }
    }
  }
}

// A (B, C, H, W) tensor seen as rows (b, c) of P = H * W positions, through its strides.
template <typename T>
struct RowView {
  using Value = std::remove_const_t<T>;
  T* data;
  int64_t sb, sc, sp, sh, sw, H, W;  // sp: flat_position_stride (the CUDA kernels' rule too)
  bool rows_contiguous;  // positions of a row are adjacent (contiguous x, strided batch/channel)

  RowView(T* base, const at::Tensor& t)
      : data(base), sb(t.stride(0)), sc(t.stride(1)), sp(flat_position_stride(t)), sh(t.stride(2)),
        sw(t.stride(3)), H(t.size(2)), W(t.size(3)), rows_contiguous(sp == 1) {}

  T* row(int64_t b, int64_t c) const { return data + b * sb + c * sc; }
  // Row (b, c + 1) follows row (b, c) in memory: NCHW, or a batch-strided view of it.
  bool channels_adjacent() const { return rows_contiguous && sc == H * W; }
  // dst[p * ld] = x[b, c, p]: ld = 1 gathers a row, ld > 1 a column of a transposed block.
  void gather(int64_t b, int64_t c, Value* dst, int64_t ld) const {
    const T* src = row(b, c);
    if (rows_contiguous && ld == 1) {
      copy_row<Value>(src, H * W, dst);
    } else if (sp >= 0) {  // channels_last: positions C apart
      for (int64_t p = 0; p < H * W; ++p) dst[p * ld] = src[p * sp];
    } else {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) dst[(h * W + w) * ld] = src[h * sh + w * sw];
    }
  }
  void scatter(int64_t b, int64_t c, const Value* src) const {
    T* dst = row(b, c);
    if (rows_contiguous) {
      copy_row<Value>(src, H * W, dst);
    } else if (sp >= 0) {
      for (int64_t p = 0; p < H * W; ++p) dst[p * sp] = src[p];
    } else {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) dst[h * sh + w * sw] = src[h * W + w];
    }
  }
};

// c[r, :] (+)= sum_k a[r * lda + k * ak] * b[k * ldb + :] for kRows rows and kVecs vectors;
// ak != 1 reads the left operand transposed in place (X^T for the weight gradient).
// The accumulators start at c (accumulate), at the row `init` (bias), or at zero.
//
// Every loop over the tile's rows and vectors is unrolled by pragma: GCC keeps an array
// of vectors in registers only when it sees those loops unrolled early. Without them it
// passed the accumulators through the stack at the tile's start and end (an isolated
// 6x6-shape tile ran at 92 % of the FMA peak instead of 99 %; a raw-intrinsics variant of
// the same loops even spilled inside the k loop, at 40 %).
#define AEF_UNROLLED _Pragma("GCC unroll 16")
//
// kMaskLast: B's rows (and init) hold only `b_last` lanes of the last vector (B read in
// place from a tensor whose rows are not padded); the rest load as zero, without touching
// memory past the row.
template <typename scalar_t, int kRows, int kVecs, bool kMaskLast>
void gemm_tile(const scalar_t* a, int64_t lda, int64_t ak, const scalar_t* b, int64_t ldb, int64_t b_last,
               int64_t K, const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc, int64_t valid) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  const auto load_b = [b_last](const scalar_t* p, int v) {
    return kMaskLast && v == kVecs - 1 ? load_first(p, b_last) : Vec::loadu(p);
  };
  Vec acc[kRows][kVecs];
  AEF_UNROLLED for (int r = 0; r < kRows; ++r)
    AEF_UNROLLED for (int v = 0; v < kVecs; ++v)
      acc[r][v] = accumulate ? Vec::loadu(c + r * ldc + v * L)
                             : (init != nullptr ? load_b(init + v * L, v) : Vec(scalar_t(0)));
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[kVecs];
    AEF_UNROLLED for (int v = 0; v < kVecs; ++v) bv[v] = load_b(b + k * ldb + v * L, v);
    AEF_UNROLLED for (int r = 0; r < kRows; ++r) {
      const Vec av(a[r * lda + k * ak]);
      AEF_UNROLLED for (int v = 0; v < kVecs; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
  // Columns from `valid` on are padding: not written (c may be a row of y itself).
  AEF_UNROLLED for (int r = 0; r < kRows; ++r) {
    AEF_UNROLLED for (int v = 0; v < kVecs; ++v) {
      const int64_t left = valid - v * L;
      if (left >= L) {
        acc[r][v].store(c + r * ldc + v * L);
      } else if (left > 0) {
        store_first(acc[r][v], c + r * ldc + v * L, left);
      }
    }
  }
}

template <typename scalar_t, int kVecs, bool kMaskLast>
void gemm_column_block(const scalar_t* a, int64_t lda, int64_t ak, const scalar_t* b, int64_t ldb, int64_t b_last,
                       int64_t M, int64_t K, const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc,
                       int64_t valid) {
  constexpr int kTileRows = tile_rows<kVecs>();
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows) {
    gemm_tile<scalar_t, kTileRows, kVecs, kMaskLast>(a + m * lda, lda, ak, b, ldb, b_last, K, init, accumulate,
                                                     c + m * ldc, ldc, valid);
  }
#define AEF_TAIL_TILE(rows)                                                                                     \
  case rows:                                                                                                    \
    gemm_tile<scalar_t, rows, kVecs, kMaskLast>(a + m * lda, lda, ak, b, ldb, b_last, K, init, accumulate,       \
                                                c + m * ldc, ldc, valid);                                       \
    break;
  switch (M - m) {
    AEF_TAIL_TILE(5)
    AEF_TAIL_TILE(4)
    AEF_TAIL_TILE(3)
    AEF_TAIL_TILE(2)
    AEF_TAIL_TILE(1)
    default: break;
  }
#undef AEF_TAIL_TILE
}

// The right-hand operand of small_gemm: rows of `cols` values `ld` apart. Padded
// buffers have cols == Np (a multiple of the vector width); a tensor read in place has
// its own row length (cols < Np: the last vector of a row is loaded masked).
template <typename scalar_t>
struct RightOperand {
  const scalar_t* data;
  int64_t ld, cols;
};

template <typename scalar_t, int kVecs>
void column_block(const scalar_t* a, int64_t lda, int64_t ak, const RightOperand<scalar_t>& b, int64_t n,
                  int64_t M, int64_t K, const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc,
                  int64_t valid) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  const int64_t b_last = b.cols - n - (kVecs - 1) * L;  // lanes of the block's last vector in B
  const scalar_t* init_n = init ? init + n : nullptr;
  if (b_last < L) {
    gemm_column_block<scalar_t, kVecs, true>(a, lda, ak, b.data + n, b.ld, b_last, M, K, init_n, accumulate, c + n,
                                             ldc, valid - n);
  } else {
    gemm_column_block<scalar_t, kVecs, false>(a, lda, ak, b.data + n, b.ld, L, M, K, init_n, accumulate, c + n,
                                              ldc, valid - n);
  }
}

// C (M, Np) (+)= A (M, K) @ B (K, Np) with A[m, k] = a[m * lda + k * ak] and B as above
// (columns past b.cols are zero); Np is a multiple of the vector width. C's leading
// dimension is ldc (default Np), and only its first `valid` columns (default Np) are
// written. init: a row of b.cols values broadcast as C's start, or null.
template <typename scalar_t>
void small_gemm(const scalar_t* a, int64_t lda, int64_t ak, const RightOperand<scalar_t>& b, int64_t M, int64_t K,
                int64_t Np, const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc = -1,
                int64_t valid = -1) {
  ldc = ldc < 0 ? Np : ldc;
  valid = valid < 0 ? Np : valid;
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  // Column blocks of 3 or 2 vectors (1 only for a single-vector row): wider blocks load
  // fewer broadcasts per multiply-add. 36 positions in float32 (5 vectors) are 3 + 2.
  for (int64_t n = 0; n < Np;) {
    const int64_t left = (Np - n) / L;
    if (left >= 3 && left != 4) {
      column_block<scalar_t, 3>(a, lda, ak, b, n, M, K, init, accumulate, c, ldc, valid);
      n += 3 * L;
    } else if (left >= 2) {
      column_block<scalar_t, 2>(a, lda, ak, b, n, M, K, init, accumulate, c, ldc, valid);
      n += 2 * L;
    } else {
      column_block<scalar_t, 1>(a, lda, ak, b, n, M, K, init, accumulate, c, ldc, valid);
      n += L;
    }
  }
}

// sums[0 .. Np) += the column sums of `rows` padded rows of Np (the bias gradient). Four
// partial sums per vector of columns, so the adds do not wait on one another: one running
// sum (64 dependent adds per vector at the Context Encoder's batch) was 12 % of the backward.
template <typename scalar_t>
void add_column_sums(const scalar_t* rows_p, int64_t rows, int64_t Np, scalar_t* sums) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int kParts = 4;
  for (int64_t n = 0; n < Np; n += Vec::size()) {
    Vec part[kParts] = {Vec::loadu(sums + n), Vec(scalar_t(0)), Vec(scalar_t(0)), Vec(scalar_t(0))};
    int64_t r = 0;
    for (; r + kParts <= rows; r += kParts)
      AEF_UNROLLED for (int j = 0; j < kParts; ++j) part[j] = part[j] + Vec::loadu(rows_p + (r + j) * Np + n);
    for (; r < rows; ++r) part[0] = part[0] + Vec::loadu(rows_p + r * Np + n);
    ((part[0] + part[1]) + (part[2] + part[3])).store(sums + n);
  }
}

template <typename scalar_t>
int64_t padded(int64_t n) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  return (n + L - 1) / L * L;
}

// Channels per task block: as many as fit kBlockWeightElems of (padded) weights.
int64_t channel_block(int64_t P, int64_t Np) {
  return std::clamp<int64_t>(kBlockWeightElems / std::max<int64_t>(1, P * Np), 1, kMaxChannelBlock);
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), Np = padded<scalar_t>(P);
  const int64_t Cb = channel_block(P, Np), blocks = (C + Cb - 1) / Cb;
  const scalar_t* w_p = weight.const_data_ptr<scalar_t>();
  const scalar_t* b_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  const RowView<const scalar_t> xs(x.const_data_ptr<scalar_t>(), x);
  const RowView<scalar_t> ys(y.mutable_data_ptr<scalar_t>(), y);
  // NCHW x (and so y): the micro-kernel reads x's rows and writes y's in place; other
  // layouts gather each row into a dense block first and scatter the result.
  const bool direct = xs.channels_adjacent() && ys.channels_adjacent();
  // W_c (P rows of P) and the bias row are read in place, the last vector of each row masked.
  const auto weight_of = [&](int64_t c) { return RightOperand<scalar_t>{w_p + c * P * P, P, P}; };
  const auto bias_of = [&](int64_t c) { return b_p != nullptr ? b_p + c * P : nullptr; };
  at::parallel_for(0, blocks, 1, [&](int64_t blk_begin, int64_t blk_end) {
    // Per channel of the block, for layouts other than NCHW: x rows (kBatchChunk, P), y rows
    // (kBatchChunk, Np).
    std::vector<scalar_t> x_blk(direct ? 0 : Cb * kBatchChunk * P), y_blk(direct ? 0 : Cb * kBatchChunk * Np);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t c0 = blk * Cb, cn = std::min(Cb, C - c0);
      if (direct) {
        // Straight from x into y: strips of kStripRows batch rows, the block's channels
        // inner, so each strip reads and writes runs of cn * P adjacent elements.
        for (int64_t r0 = 0; r0 < B; r0 += kStripRows) {
          const int64_t rows = std::min(kStripRows, B - r0);
          for (int64_t ci = 0; ci < cn; ++ci)
            small_gemm<scalar_t>(xs.row(r0, c0 + ci), xs.sb, 1, weight_of(c0 + ci), rows, P, Np, bias_of(c0 + ci),
                                 false, ys.row(r0, c0 + ci), ys.sb, P);
        }
        continue;
      }
      for (int64_t b0 = 0; b0 < B; b0 += kBatchChunk) {
        const int64_t rows = std::min(kBatchChunk, B - b0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t ci = 0; ci < cn; ++ci) xs.gather(b0 + r, c0 + ci, x_blk.data() + (ci * kBatchChunk + r) * P, 1);
        for (int64_t ci = 0; ci < cn; ++ci)
          small_gemm<scalar_t>(x_blk.data() + ci * kBatchChunk * P, P, 1, weight_of(c0 + ci), rows, P, Np,
                               bias_of(c0 + ci), false, y_blk.data() + ci * kBatchChunk * Np);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t ci = 0; ci < cn; ++ci) ys.scatter(b0 + r, c0 + ci, y_blk.data() + (ci * kBatchChunk + r) * Np);
      }
    }
  });
}

// The per-channel buffers of the backward pass. x_blk and gx_blk (the gathered X rows and
// the dX rows to scatter) only for layouts other than NCHW (`direct`: read and written in place).
template <typename scalar_t>
struct BackwardScratch {
  std::vector<scalar_t> wt_pad, gw_acc, gb_acc, gy_blk, x_blk, gx_blk;
  BackwardScratch(int64_t P, int64_t Np, bool direct)
      : wt_pad(P * Np, scalar_t(0)), gw_acc(P * Np), gb_acc(Np), gy_blk(kBatchChunk * Np, scalar_t(0)),
        x_blk(direct ? 0 : kBatchChunk * P), gx_blk(direct ? 0 : kBatchChunk * Np) {}
};

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                     at::Tensor& grad_x, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), Np = padded<scalar_t>(P);
  const int64_t Cb = channel_block(P, Np), blocks = (C + Cb - 1) / Cb;
  const scalar_t* w_p = weight.const_data_ptr<scalar_t>();
  scalar_t* gw_p = grad_weight.mutable_data_ptr<scalar_t>();
  scalar_t* gb_p = grad_bias.mutable_data_ptr<scalar_t>();
  const RowView<const scalar_t> gys(grad_y.const_data_ptr<scalar_t>(), grad_y), xs(x.const_data_ptr<scalar_t>(), x);
  const RowView<scalar_t> gxs(grad_x.mutable_data_ptr<scalar_t>(), grad_x);
  // NCHW x (and so dx): X^T is read from x in place and dX written straight into dx. dY is
  // always gathered, into rows padded to Np: as dW's right-hand operand, read in place, its
  // rows lie C * H * W apart, fall into the same cache sets and are re-read by every tile
  // (the backward took 1.65x as long).
  const bool direct = xs.channels_adjacent() && gxs.channels_adjacent();
  at::parallel_for(0, blocks, 1, [&](int64_t blk_begin, int64_t blk_end) {
    std::vector<BackwardScratch<scalar_t>> scratch(Cb, BackwardScratch<scalar_t>(P, Np, direct));
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t c0 = blk * Cb, cn = std::min(Cb, C - c0);
      for (int64_t ci = 0; ci < cn; ++ci) {
        BackwardScratch<scalar_t>& s = scratch[ci];
        const scalar_t* w_c = w_p + (c0 + ci) * P * P;
        transpose_square(w_c, P, s.wt_pad.data(), Np);
        std::fill(s.gw_acc.begin(), s.gw_acc.end(), scalar_t(0));
        std::fill(s.gb_acc.begin(), s.gb_acc.end(), scalar_t(0));
      }
      for (int64_t b0 = 0; b0 < B; b0 += kBatchChunk) {
        const int64_t rows = std::min(kBatchChunk, B - b0);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t ci = 0; ci < cn; ++ci) {
            gys.gather(b0 + r, c0 + ci, scratch[ci].gy_blk.data() + r * Np, 1);
            if (!direct) xs.gather(b0 + r, c0 + ci, scratch[ci].x_blk.data() + r * P, 1);
          }
        for (int64_t ci = 0; ci < cn; ++ci) {
          BackwardScratch<scalar_t>& s = scratch[ci];
          // dX rows of this chunk: dY (rows, P) @ W^T (P, Np), into dx's rows (NCHW) or the
          // block scattered below.
          small_gemm<scalar_t>(s.gy_blk.data(), Np, 1, RightOperand<scalar_t>{s.wt_pad.data(), Np, Np}, rows, P, Np,
                               nullptr, false, direct ? gxs.row(b0, c0 + ci) : s.gx_blk.data(),
                               direct ? gxs.sb : Np, direct ? P : Np);
          // dW += X^T (P, rows) @ dY (rows, Np), X^T read from x in place (NCHW) or from the
          // gathered block; db += column sums of dY.
          small_gemm<scalar_t>(direct ? xs.row(b0, c0 + ci) : s.x_blk.data(), 1, direct ? xs.sb : P,
                               RightOperand<scalar_t>{s.gy_blk.data(), Np, Np}, P, rows, Np, nullptr, true,
                               s.gw_acc.data());
          add_column_sums(s.gy_blk.data(), rows, Np, s.gb_acc.data());
        }
        if (!direct) {
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t ci = 0; ci < cn; ++ci) gxs.scatter(b0 + r, c0 + ci, scratch[ci].gx_blk.data() + r * Np);
        }
      }
      for (int64_t ci = 0; ci < cn; ++ci) {
        const int64_t c = c0 + ci;
        for (int64_t i = 0; i < P; ++i) copy_row(scratch[ci].gw_acc.data() + i * Np, P, gw_p + (c * P + i) * P);
        copy_row(scratch[ci].gb_acc.data(), P, gb_p + c * P);
      }
    }
  });
}

void check_cpu_dtype(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the CPU kernel takes float32 or float64 `x`; got ", x.scalar_type());
}

at::Tensor channelwise_fc_cpu(const at::Tensor& x, const at::Tensor& weight_in,
                              const std::optional<at::Tensor>& bias_in) {
  check_channelwise_fc_inputs(x, weight_in, bias_in);
  check_cpu_dtype("channelwise_fc", x);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(channelwise_fc_output_format(x)));
  if (y.numel() == 0) return y;
  // Parameters are small and normally contiguous already (no copy); x is read through its strides.
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_fc_cpu",
                             [&] { forward_kernel<scalar_t>(x, weight, bias, y); });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channelwise_fc_backward_cpu(const at::Tensor& grad_y,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& weight_in) {
  check_channelwise_fc_backward_inputs(grad_y, x, weight_in);
  check_cpu_dtype("channelwise_fc_backward", x);
  const int64_t C = x.size(1), P = x.size(2) * x.size(3);
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_fc_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_y, x, weight, grad_x, grad_weight, grad_bias);
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, CPU, m) {
  m.impl("channelwise_fc", &channelwise_fc_cpu);
  m.impl("channelwise_fc_backward", &channelwise_fc_backward_cpu);
}

}  // namespace autoenc_fast

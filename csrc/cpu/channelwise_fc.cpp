// CPU kernels of autoenc_fast::channelwise_fc and its backward. With P = H * W and,
// per channel c, X_c = x[:, c] viewed as a (B, P) matrix and W_c = weight[c] (P, P):
//
//   forward   Y_c  = X_c @ W_c + 1 * bias_c          y[b, c, j] = sum_i x[b, c, i] W[c, i, j] + bias[c, j]
//   backward  dX_c = dY_c @ W_c^T                    (B, P)
//             dW_c = X_c^T @ dY_c                    (P, P), summed over the whole batch
//             db_c = sum_b dY_c[b, :]                (P)
//
// Channels are independent, so at::parallel_for splits the channels over threads and
// every reduction (over the batch for dW and db) runs in one thread in a fixed order:
// results do not depend on the thread count. Within a channel the batch is taken in
// chunks of kBatchChunk rows, gathered from x's own strides (any layout, no copy of
// the whole tensor) into a small contiguous buffer, multiplied by a register-tiled
// at::vec micro-kernel, and scattered back through the output's strides. The right
// matrix (W_c, W_c^T or dY_c) is copied with its rows padded to a multiple of the
// vector width so the micro-kernel needs no tail handling. float32 and float64, each
// accumulating in its own type.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../channelwise_fc_checks.h"

namespace autoenc_fast {
namespace {

// Batch rows per gathered block: keeps a channel's working set in L1/L2.
constexpr int64_t kBatchChunk = 128;
// Micro-kernel tile: kTileRows output rows x up to 2 vectors of columns
// (8 accumulators + 2 right-hand vectors + 1 broadcast fit AVX2's 16 registers).
constexpr int kTileRows = 4;

// One channel of a (B, C, H, W) tensor seen as a (B, P) matrix through its strides.
template <typename T>
struct ChannelView {
  using Value = std::remove_const_t<T>;
  T* data;  // already offset to channel c
  int64_t sb, sh, sw, H, W;

  ChannelView(T* base, const at::Tensor& t, int64_t c)
      : data(base + c * t.stride(1)), sb(t.stride(0)), sh(t.stride(2)), sw(t.stride(3)),
        H(t.size(2)), W(t.size(3)) {}

  // dst[(b - b0) * ld + p] = view[b, p] for b in [b0, b1).
  void gather_rows(int64_t b0, int64_t b1, Value* dst, int64_t ld) const {
    for (int64_t b = b0; b < b1; ++b) {
      Value* out = dst + (b - b0) * ld;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) out[h * W + w] = data[b * sb + h * sh + w * sw];
    }
  }
  // dst[p * ld + (b - b0)] = view[b, p]: the transposed block, rows are positions.
  void gather_cols(int64_t b0, int64_t b1, Value* dst, int64_t ld) const {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) dst[(h * W + w) * ld + (b - b0)] = data[b * sb + h * sh + w * sw];
  }
  // view[b, p] = src[(b - b0) * ld + p] for b in [b0, b1).
  template <typename S>
  void scatter_rows(int64_t b0, int64_t b1, const S* src, int64_t ld) const {
    for (int64_t b = b0; b < b1; ++b) {
      const S* in = src + (b - b0) * ld;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) data[b * sb + h * sh + w * sw] = in[h * W + w];
    }
  }
};

// c[r, :] (+)= sum_k a[r * lda + k] * b[k * ldb + :] for kRows rows and kVecs vectors.
// The accumulators start at c (accumulate), at the row `init` (bias), or at zero.
template <typename scalar_t, int kRows, int kVecs>
void gemm_tile(const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, int64_t K,
               const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  Vec acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v)
      acc[r][v] = accumulate ? Vec::loadu(c + r * ldc + v * L)
                             : (init != nullptr ? Vec::loadu(init + v * L) : Vec(scalar_t(0)));
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = Vec::loadu(b + k * ldb + v * L);
    for (int r = 0; r < kRows; ++r) {
      const Vec av(a[r * lda + k]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v].store(c + r * ldc + v * L);
}

template <typename scalar_t, int kVecs>
void gemm_column_block(const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, int64_t M,
                       int64_t K, const scalar_t* init, bool accumulate, scalar_t* c, int64_t ldc) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows)
    gemm_tile<scalar_t, kTileRows, kVecs>(a + m * lda, lda, b, ldb, K, init, accumulate, c + m * ldc, ldc);
  switch (M - m) {
    case 3: gemm_tile<scalar_t, 3, kVecs>(a + m * lda, lda, b, ldb, K, init, accumulate, c + m * ldc, ldc); break;
    case 2: gemm_tile<scalar_t, 2, kVecs>(a + m * lda, lda, b, ldb, K, init, accumulate, c + m * ldc, ldc); break;
    case 1: gemm_tile<scalar_t, 1, kVecs>(a + m * lda, lda, b, ldb, K, init, accumulate, c + m * ldc, ldc); break;
    default: break;
  }
}

// C (M, Np) (+)= A (M, K) @ B (K, Np); Np is a multiple of the vector width and the
// leading dimension of both B and C. init: a row of Np broadcast as C's start, or null.
template <typename scalar_t>
void small_gemm(const scalar_t* a, int64_t lda, const scalar_t* b, int64_t M, int64_t K, int64_t Np,
                const scalar_t* init, bool accumulate, scalar_t* c) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  int64_t n = 0;
  for (; n + 2 * L <= Np; n += 2 * L)
    gemm_column_block<scalar_t, 2>(a, lda, b + n, Np, M, K, init ? init + n : nullptr, accumulate, c + n, Np);
  if (n < Np)
    gemm_column_block<scalar_t, 1>(a, lda, b + n, Np, M, K, init ? init + n : nullptr, accumulate, c + n, Np);
}

template <typename scalar_t>
int64_t padded(int64_t n) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  return (n + L - 1) / L * L;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& y) {
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), Np = padded<scalar_t>(P);
  const scalar_t* x_p = x.const_data_ptr<scalar_t>();
  const scalar_t* w_p = weight.const_data_ptr<scalar_t>();
  const scalar_t* b_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
    // Padding columns stay zero: they only ever produce discarded output columns.
    std::vector<scalar_t> w_pad(P * Np, scalar_t(0)), bias_pad(Np, scalar_t(0));
    std::vector<scalar_t> x_blk(kBatchChunk * P), y_blk(kBatchChunk * Np);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t i = 0; i < P; ++i) std::copy_n(w_p + (c * P + i) * P, P, w_pad.data() + i * Np);
      if (b_p != nullptr) std::copy_n(b_p + c * P, P, bias_pad.data());
      const ChannelView<const scalar_t> xs(x_p, x, c);
      const ChannelView<scalar_t> ys(y_p, y, c);
      for (int64_t b0 = 0; b0 < B; b0 += kBatchChunk) {
        const int64_t b1 = std::min(B, b0 + kBatchChunk);
        xs.gather_rows(b0, b1, x_blk.data(), P);
        small_gemm<scalar_t>(x_blk.data(), P, w_pad.data(), b1 - b0, P, Np,
                             b_p != nullptr ? bias_pad.data() : nullptr, false, y_blk.data());
        ys.scatter_rows(b0, b1, y_blk.data(), Np);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                     at::Tensor& grad_x, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), Np = padded<scalar_t>(P);
  const scalar_t* gy_p = grad_y.const_data_ptr<scalar_t>();
  const scalar_t* x_p = x.const_data_ptr<scalar_t>();
  const scalar_t* w_p = weight.const_data_ptr<scalar_t>();
  scalar_t* gx_p = grad_x.mutable_data_ptr<scalar_t>();
  scalar_t* gw_p = grad_weight.mutable_data_ptr<scalar_t>();
  scalar_t* gb_p = grad_bias.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<scalar_t> wt_pad(P * Np, scalar_t(0)), gw_acc(P * Np), gb_acc(Np);
    std::vector<scalar_t> gy_blk(kBatchChunk * Np, scalar_t(0)), xt_blk(P * kBatchChunk);
    std::vector<scalar_t> gx_blk(kBatchChunk * Np);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const scalar_t* w_c = w_p + c * P * P;
      for (int64_t j = 0; j < P; ++j)
        for (int64_t i = 0; i < P; ++i) wt_pad[j * Np + i] = w_c[i * P + j];
      std::fill(gw_acc.begin(), gw_acc.end(), scalar_t(0));
      std::fill(gb_acc.begin(), gb_acc.end(), scalar_t(0));
      const ChannelView<const scalar_t> gys(gy_p, grad_y, c), xs(x_p, x, c);
      const ChannelView<scalar_t> gxs(gx_p, grad_x, c);
      for (int64_t b0 = 0; b0 < B; b0 += kBatchChunk) {
        const int64_t b1 = std::min(B, b0 + kBatchChunk), rows = b1 - b0;
        gys.gather_rows(b0, b1, gy_blk.data(), Np);
        xs.gather_cols(b0, b1, xt_blk.data(), rows);
        // dX rows of this chunk: dY (rows, P) @ W^T (P, Np).
        small_gemm<scalar_t>(gy_blk.data(), Np, wt_pad.data(), rows, P, Np, nullptr, false, gx_blk.data());
        gxs.scatter_rows(b0, b1, gx_blk.data(), Np);
        // dW += X^T (P, rows) @ dY (rows, Np); db += column sums of dY.
        small_gemm<scalar_t>(xt_blk.data(), rows, gy_blk.data(), P, rows, Np, nullptr, true, gw_acc.data());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t n = 0; n < Np; n += Vec::size())
            (Vec::loadu(gb_acc.data() + n) + Vec::loadu(gy_blk.data() + r * Np + n)).store(gb_acc.data() + n);
      }
      for (int64_t i = 0; i < P; ++i) std::copy_n(gw_acc.data() + i * Np, P, gw_p + (c * P + i) * P);
      std::copy_n(gb_acc.data(), P, gb_p + c * P);
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

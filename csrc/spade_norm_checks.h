// Argument checks and layout rules of the spade_norm ops, shared by every C++
// backend: each message names the argument and says what was expected.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace autoenc_fast {

// Outputs (and the layout the kernels read) follow x: channels_last when x is
// channels_last-contiguous and not also NCHW-contiguous, else NCHW-contiguous.
// autoenc_fast/ops/spade_norm.py applies the same rule in the fake kernels.
inline at::MemoryFormat spade_memory_format(const at::Tensor& x) {
  return (x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous())
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Statistics are float32 for float32 and half types, float64 for float64.
inline at::ScalarType spade_stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An output like x, in the layout the kernels write (spade_memory_format).
inline at::Tensor spade_empty_like_x(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(spade_memory_format(x)));
}

// Per-group statistics: (C,) for batch norm, (N, C) for instance norm.
inline at::Tensor spade_empty_stats(const at::Tensor& x, bool instance) {
  const auto opts = x.options().dtype(spade_stats_dtype(x));
  return instance ? at::empty({x.size(0), x.size(1)}, opts) : at::empty({x.size(1)}, opts);
}

// gamma and beta as the kernels read them: the two channel halves of nn.SPADE's merged
// (N, 2C, H, W) modulation convolution output are read in place, which would otherwise
// be copied every step.
// - NCHW x: in place when both have rows of H*W adjacent elements and one batch stride,
//   a multiple of H*W (so the CUDA kernels' 16-byte packs stay aligned). `extra` is then
//   that stride's excess over C*H*W: x's element at n*C*H*W + r is gamma's and beta's at
//   n*(C*H*W + extra) + r.
// - channels_last x: in place when both have their C channels adjacent and one pixel
//   stride S >= C for every pixel (rows of W*S, samples H*W*S apart): x's element at
//   p*C + c (pixel p) is theirs at p*S + c; `pixel_stride` is S.
// Else they are made contiguous in x's layout (a copy unless they are already), extra 0
// and pixel_stride C. x: already in its kernel layout (spade_memory_format).
struct SpadeParams {
  at::Tensor gamma, beta;
  int64_t extra, pixel_stride;
};

inline SpadeParams spade_params_of(const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& x) {
  const auto fmt = spade_memory_format(x);
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const bool same_strides = gamma.strides() == beta.strides();
  if (fmt == at::MemoryFormat::Contiguous) {
    const auto rows_adjacent = [&](const at::Tensor& t) {
      return t.stride(3) == 1 && t.stride(2) == W && t.stride(1) == H * W && t.stride(0) >= C * H * W &&
             t.stride(0) % (H * W) == 0;
    };
    if (x.size(0) > 1 && H * W > 0 && same_strides && rows_adjacent(gamma)) {
      return {gamma, beta, gamma.stride(0) - C * H * W, C};
    }
  } else {
    const int64_t S = gamma.stride(3);
    if (same_strides && gamma.stride(1) == 1 && S >= C && gamma.stride(2) == W * S && gamma.stride(0) == H * W * S) {
      return {gamma, beta, 0, S};
    }
  }
  return {gamma.contiguous(fmt), beta.contiguous(fmt), 0, C};
}

// Where a backward op writes dgamma and dbeta: two tensors laid out like x (spade_norm_
// backward), or the two channel halves of one merged (N, 2C, H, W) gradient laid out
// like the merged gamma_beta the kernels read (spade_norm_merged_backward): then at
// gamma's and beta's own offsets (`at_params`).
struct SpadeParamGrads {
  at::Tensor dgamma, dbeta;
  bool at_params;
};

// spade_norm_merged's gamma_beta = cat([gamma, beta], 1), (N, 2C, H, W), in x's kernel
// layout with that layout's own strides: copied only when it is not already so, which
// nn.SPADE's convolution output is. Its halves are then read in place, and a merged
// gradient allocated in the same layout has its halves at the same offsets.
inline at::Tensor spade_merged_laid_out(const at::Tensor& gamma_beta, const at::Tensor& x) {
  const auto fmt = spade_memory_format(x);
  const auto sizes = gamma_beta.sizes();
  const std::vector<int64_t> natural =
      fmt == at::MemoryFormat::ChannelsLast
          ? c10::get_channels_last_strides_2d(sizes)
          : std::vector<int64_t>{sizes[1] * sizes[2] * sizes[3], sizes[2] * sizes[3], sizes[3], 1};
  if (gamma_beta.strides() == at::IntArrayRef(natural)) return gamma_beta;
  return at::empty(sizes, gamma_beta.options().memory_format(fmt)).copy_(gamma_beta);
}

// The halves of a laid-out gamma_beta (or of its gradient).
inline std::pair<at::Tensor, at::Tensor> spade_halves(const at::Tensor& merged) {
  const int64_t C = merged.size(1) / 2;
  return {merged.narrow(1, 0, C), merged.narrow(1, C, C)};
}

// mean and invstd = 1 / sqrt(var + eps) of the running statistics (eval-mode batch
// norm), in the statistics dtype: copies (outputs of a custom op may not alias its inputs).
inline std::pair<at::Tensor, at::Tensor> spade_running_stats(const at::Tensor& x, const at::Tensor& running_mean,
                                                             const at::Tensor& running_var, double eps) {
  const auto dtype = spade_stats_dtype(x);
  return {running_mean.to(dtype, false, true).contiguous(), running_var.to(dtype).add(eps).rsqrt_()};
}

// Whether a single-process forward updates running_mean and running_var: batch
// statistics (use_input_stats, batch norm: the checks refuse them with instance norm)
// with the buffers given, and a non-empty batch to take them from (F.batch_norm leaves
// them alone for an empty one).
inline bool spade_updates_running(const at::Tensor& x, const std::optional<at::Tensor>& running_mean,
                                  bool use_input_stats) {
  return use_input_stats && running_mean.has_value() && x.numel() > 0;
}

// The update F.batch_norm makes, running = (1 - momentum) * running + momentum * scale * stat
// (scale = M / (M - 1) makes the biased batch variance unbiased, 1 for the mean), by
// `update(target)` on a contiguous target: the buffer itself, or a copy written back.
template <typename Update>
void spade_update_running(at::Tensor running, const Update& update) {
  if (running.is_contiguous()) {
    update(running);
    return;
  }
  at::Tensor target = running.contiguous();
  update(target);
  running.copy_(target);
}

// M / (M - 1) for a batch-norm channel of M = N * H * W elements (M > 1: the checks).
inline double spade_unbiased_factor(const at::Tensor& x) {
  const double m = static_cast<double>(x.size(0) * x.size(2) * x.size(3));
  return m / (m - 1);
}

// The single-process forward of every backend, (y, mean, invstd): eval-mode batch norm
// normalizes with the running statistics, `apply(mean, invstd)` -> y; otherwise
// `batch_forward(var)` -> (y, mean, invstd) takes the batch statistics (writing their
// biased variance into var), and `update(running, stat, scale)` then updates each
// running buffer given, as spade_update_running describes.
template <typename Apply, typename BatchForward, typename Update>
std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_single_process_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool use_input_stats, double momentum, double eps, const Apply& apply, const BatchForward& batch_forward,
    const Update& update) {
  if (!use_input_stats) {
    auto [mean, invstd] = spade_running_stats(x, *running_mean, *running_var, eps);
    return {apply(mean, invstd), mean, invstd};
  }
  at::Tensor var;
  auto out = batch_forward(var);
  if (spade_updates_running(x, running_mean, use_input_stats)) {
    update(*running_mean, std::get<1>(out), momentum, 1.0);
    update(*running_var, var, momentum, spade_unbiased_factor(x));
  }
  return out;
}

// The tensors of one op call as the kernels read them: dy (backward only) and x
// contiguous in x's kernel layout, gamma and beta as spade_params_of gives them.
struct SpadeLaidOut {
  at::Tensor dy, x;
  SpadeParams params;
};

inline SpadeLaidOut spade_lay_out(const at::Tensor& dy, const at::Tensor& x_in, const at::Tensor& gamma,
                                  const at::Tensor& beta) {
  const auto fmt = spade_memory_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  return {dy.defined() ? dy.contiguous(fmt) : at::Tensor(), x, spade_params_of(gamma, beta, x)};
}

// The same for the merged ops: gamma_beta laid out by spade_merged_laid_out, whose halves
// are then read in place, so that the halves of spade_backward_merged's gradient lie at
// the same offsets.
inline SpadeLaidOut spade_lay_out_merged(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& gamma_beta) {
  const auto [gamma, beta] = spade_halves(spade_merged_laid_out(gamma_beta, x));
  SpadeLaidOut t = spade_lay_out(dy, x, gamma, beta);
  TORCH_INTERNAL_ASSERT(x.numel() == 0 || (t.params.gamma.is_same(gamma) && t.params.beta.is_same(beta)),
                        "spade_norm_merged: the halves of gamma_beta were not read in place");
  return t;
}

// A backward op around one backward pass, `pass(t, grads)` -> dx, which writes dgamma and
// dbeta into `grads`. Separate gamma and beta: two gradients laid out like x.
template <typename Pass>
std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_backward_separate(const at::Tensor& grad_y, const at::Tensor& x,
                                                                       const at::Tensor& gamma,
                                                                       const at::Tensor& beta, const Pass& pass) {
  const SpadeLaidOut t = spade_lay_out(grad_y, x, gamma, beta);
  const SpadeParamGrads grads{spade_empty_like_x(t.x), spade_empty_like_x(t.x), false};
  at::Tensor dx = pass(t, grads);
  return {dx, grads.dgamma, grads.dbeta};
}

// The same for the merged ops: one (N, 2C, H, W) gradient in x's kernel layout, whose
// halves lie at the offsets of gamma_beta's halves as spade_lay_out_merged reads them.
template <typename Pass>
std::tuple<at::Tensor, at::Tensor> spade_backward_merged(const at::Tensor& grad_y, const at::Tensor& x,
                                                         const at::Tensor& gamma_beta, const Pass& pass) {
  const SpadeLaidOut t = spade_lay_out_merged(grad_y, x, gamma_beta);
  at::Tensor merged = at::empty(gamma_beta.sizes(), t.x.options().memory_format(spade_memory_format(t.x)));
  const auto [dgamma, dbeta] = spade_halves(merged);
  at::Tensor dx = pass(t, SpadeParamGrads{dgamma, dbeta, true});
  return {dx, merged};
}

inline void check_spade_merged(const at::Tensor& gamma_beta, const at::Tensor& x, const char* op) {
  TORCH_CHECK(gamma_beta.dim() == 4 && gamma_beta.size(0) == x.size(0) && gamma_beta.size(1) == 2 * x.size(1) &&
                  gamma_beta.size(2) == x.size(2) && gamma_beta.size(3) == x.size(3),
              op, ": `gamma_beta` must have shape (N, 2C, H, W) = (", x.size(0), ", ", 2 * x.size(1), ", ",
              x.size(2), ", ", x.size(3), "); got ", gamma_beta.sizes());
  TORCH_CHECK(gamma_beta.scalar_type() == x.scalar_type(), op, ": `gamma_beta` must have x's dtype ",
              x.scalar_type(), "; got ", gamma_beta.scalar_type());
  TORCH_CHECK(gamma_beta.device() == x.device(), op, ": `gamma_beta` must be on x's device ", x.device(),
              "; got ", gamma_beta.device());
}

inline void check_spade_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": `x` must be 4-D (N, C, H, W); got ", x.dim(), "-D of shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": `x` must be a floating-point tensor; got ",
              x.scalar_type());
}

inline void check_spade_like_x(const at::Tensor& t, const char* name, const at::Tensor& x,
                               const char* op) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": `", name, "` must have x's shape ", x.sizes(), "; got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": `", name, "` must have x's dtype ",
              x.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": `", name, "` must be on x's device ", x.device(),
              "; got ", t.device());
}

// Per-group statistics: shape (C,) for batch norm, (N, C) for instance norm.
inline void check_spade_group_stat(const at::Tensor& t, const char* name, const at::Tensor& x,
                                   const char* op) {
  const bool batch = t.dim() == 1 && t.size(0) == x.size(1);
  const bool instance = t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1);
  TORCH_CHECK(batch || instance, op, ": `", name, "` must have shape (C,) = (", x.size(1),
              ",) or (N, C) = (", x.size(0), ", ", x.size(1), "); got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == spade_stats_dtype(x), op, ": `", name, "` must be ",
              spade_stats_dtype(x), " for x of dtype ", x.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": `", name, "` must be on x's device ", x.device(),
              "; got ", t.device());
}

inline void check_spade_running(const std::optional<at::Tensor>& t, const char* name,
                                const at::Tensor& x, bool use_input_stats, const char* op) {
  TORCH_CHECK(t.has_value(), op, ": `", name, "` is required ",
              use_input_stats ? "with the other running statistic (give both or neither)"
                              : "when batch statistics are not used (eval-mode batch norm)");
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), op, ": `", name,
              "` must have shape (C,) = (", x.size(1), ",); got ", t->sizes());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": `", name,
              "` must be a floating-point tensor; got ", t->scalar_type());
  TORCH_CHECK(t->device() == x.device(), op, ": `", name, "` must be on x's device ", x.device(),
              "; got ", t->device());
  TORCH_CHECK(!use_input_stats || t->size(0) <= 1 || t->stride(0) != 0, op, ": `", name,
              "` is updated in place in training, so its elements must not share memory; got an expanded "
              "tensor (stride 0)");
}

// x, then gamma and beta of x's shape; or, for the merged ops (beta undefined), gamma
// holding gamma_beta of shape (N, 2C, H, W).
inline void check_spade_x_and_params(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                     const char* op) {
  check_spade_x(x, op);
  if (!beta.defined()) {
    check_spade_merged(gamma, x, op);
    return;
  }
  check_spade_like_x(gamma, "gamma", x, op);
  check_spade_like_x(beta, "beta", x, op);
}

// spade_norm (beta given) and spade_norm_merged (beta undefined, gamma = gamma_beta).
inline void check_spade_forward_inputs(const at::Tensor& x, const at::Tensor& gamma,
                                       const at::Tensor& beta,
                                       const std::optional<at::Tensor>& running_mean,
                                       const std::optional<at::Tensor>& running_var,
                                       bool use_input_stats, bool instance, const char* op = "spade_norm") {
  check_spade_x_and_params(x, gamma, beta, op);
  if (instance) {
    TORCH_CHECK(use_input_stats, op,
                ": instance norm always uses input statistics (`use_input_stats` must be True)");
    TORCH_CHECK(!running_mean.has_value() && !running_var.has_value(), op,
                ": `running_mean`/`running_var` are not used by instance norm; pass None");
  }
  if (!use_input_stats || running_mean.has_value() || running_var.has_value()) {
    check_spade_running(running_mean, "running_mean", x, use_input_stats, op);
    check_spade_running(running_var, "running_var", x, use_input_stats, op);
  }
  // As F.batch_norm and F.instance_norm: one value has no variance to normalize by.
  const int64_t group_elems = x.size(2) * x.size(3) * (instance ? 1 : x.size(0));
  TORCH_CHECK(!use_input_stats || x.numel() == 0 || group_elems > 1, op, ": expected more than 1 value per ",
              instance ? "instance" : "channel", " when using batch statistics; `x` has shape ", x.sizes());
}

inline void check_spade_apply_inputs(const at::Tensor& x, const at::Tensor& gamma,
                                     const at::Tensor& beta, const at::Tensor& mean,
                                     const at::Tensor& invstd, const char* op) {
  check_spade_x_and_params(x, gamma, beta, op);
  check_spade_group_stat(mean, "mean", x, op);
  check_spade_group_stat(invstd, "invstd", x, op);
  TORCH_CHECK(mean.sizes() == invstd.sizes(), op, ": `invstd` must have mean's shape ", mean.sizes(),
              "; got ", invstd.sizes());
}

// As check_spade_forward_inputs, beta undefined for spade_norm_merged_backward.
inline void check_spade_backward_inputs(const at::Tensor& grad_y, const at::Tensor& x,
                                        const at::Tensor& gamma, const at::Tensor& beta,
                                        const at::Tensor& mean, const at::Tensor& invstd,
                                        const char* op) {
  check_spade_apply_inputs(x, gamma, beta, mean, invstd, op);
  check_spade_like_x(grad_y, "grad_y", x, op);
}

// beta undefined: spade_norm_merged_backward_elemt, gamma holding gamma_beta.
inline void check_spade_elemt_inputs(const at::Tensor& grad_y, const at::Tensor& x,
                                     const at::Tensor& gamma, const at::Tensor& beta,
                                     const at::Tensor& mean, const at::Tensor& invstd,
                                     const std::optional<at::Tensor>& mean_dxhat,
                                     const std::optional<at::Tensor>& mean_dxhat_xhat) {
  const char* op = beta.defined() ? "spade_norm_backward_elemt" : "spade_norm_merged_backward_elemt";
  check_spade_backward_inputs(grad_y, x, gamma, beta, mean, invstd, op);
  TORCH_CHECK(mean_dxhat.has_value() == mean_dxhat_xhat.has_value(), op,
              ": `mean_dxhat` and `mean_dxhat_xhat` must be given together");
  if (mean_dxhat.has_value()) {
    check_spade_group_stat(*mean_dxhat, "mean_dxhat", x, op);
    check_spade_group_stat(*mean_dxhat_xhat, "mean_dxhat_xhat", x, op);
    TORCH_CHECK(mean_dxhat->sizes() == mean.sizes() && mean_dxhat_xhat->sizes() == mean.sizes(), op,
                ": `mean_dxhat` and `mean_dxhat_xhat` must have mean's shape ", mean.sizes());
  }
}

}  // namespace autoenc_fast

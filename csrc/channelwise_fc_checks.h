// Argument checks of channelwise_fc shared by every C++ backend (and mirrored in
// autoenc_fast/ops/channelwise_fc.py for the fake kernels): each message names the
// argument and says what was expected.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace autoenc_fast {

// Output layout rule shared with the fake kernel: channels_last when x is
// channels_last and not also plain contiguous (C == 1 or 1x1 maps are both), else contiguous.
inline at::MemoryFormat channelwise_fc_output_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// The stride between flat positions p = h * W + w of a (B, C, H, W) tensor when its two
// map dimensions collapse into one (NCHW rows, channels_last, a single row or column of
// positions), else -1 (a crop of a wider map, say): element (b, c, p) is then at
// b * stride(0) + c * stride(1) + p * flat_position_stride(t), with no division of p.
inline int64_t flat_position_stride(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  if (W == 1) return t.stride(2);
  if (H == 1 || t.stride(2) == W * t.stride(3)) return t.stride(3);
  return -1;
}

inline void check_like_x(const at::Tensor& t, const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": `", name, "` must have x's dtype ",
              x.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": `", name, "` must be on x's device ", x.device(),
              "; got ", t.device());
}

// x (B, C, H, W) floating; weight (C, H*W, H*W) like x; bias (C, H*W) like x.
inline void check_channelwise_fc_x_weight(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 4, op, ": `x` must be 4-D (B, C, H, W); got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": `x` must be a floating-point tensor; got ", x.scalar_type());
  const int64_t C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == C && weight.size(1) == P && weight.size(2) == P,
              op, ": `weight` must have shape (C, H*W, H*W) = (", C, ", ", P, ", ", P,
              ") for x of shape ", x.sizes(), "; got ", weight.sizes());
  check_like_x(weight, op, "weight", x);
}

inline void check_channelwise_fc_inputs(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias) {
  check_channelwise_fc_x_weight("channelwise_fc", x, weight);
  if (bias.has_value()) {
    const int64_t C = x.size(1), P = x.size(2) * x.size(3);
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == C && bias->size(1) == P,
                "channelwise_fc: `bias` must have shape (C, H*W) = (", C, ", ", P,
                ") or be None; got ", bias->sizes());
    check_like_x(*bias, "channelwise_fc", "bias", x);
  }
}

inline void check_channelwise_fc_backward_inputs(const at::Tensor& grad_y, const at::Tensor& x,
                                                 const at::Tensor& weight) {
  check_channelwise_fc_x_weight("channelwise_fc_backward", x, weight);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "channelwise_fc_backward: `grad_y` must have x's shape ",
              x.sizes(), "; got ", grad_y.sizes());
  check_like_x(grad_y, "channelwise_fc_backward", "grad_y", x);
}

}  // namespace autoenc_fast

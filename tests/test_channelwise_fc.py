"""autoenc_fast::channelwise_fc against its float64 einsum reference: values, every
layout, gradients, registration (opcheck, compile), known wrong implementations,
bad inputs, empty batches, and the modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autoenc_fast
from autoenc_fast import _ext, functional, reference
from autoenc_fast.nn import ChannelwiseFC, ChannelwiseFCBottleneck
from conftest import (HAS_CUDA, LAYOUTS, TOLERANCES, assert_double_backward_refused, devices, make_x,
                      requires_cuda)

pytestmark = pytest.mark.skipif(not _ext.LOADED, reason=f"compiled extension not loaded: {_ext.STATUS}")

OPS = torch.ops.autoenc_fast
# (B, C, H, W): H != W, B = 1, C = 1, 1x1 maps, the Context Encoder's 6x6 and 4x4
# maps, batches past the CPU kernel's 6-row tiles and 64-row chunks, maps past
# one 64-position CUDA tile (9x9), and single-row and single-column maps (whose strided
# views still have flat positions: flat_position_stride's H == 1 and W == 1 cases).
SHAPES = [(2, 3, 4, 5), (1, 3, 4, 4), (3, 1, 2, 3), (4, 5, 1, 1), (5, 4, 6, 6), (3, 7, 4, 4),
          (2, 2, 3, 7), (9, 2, 5, 3), (130, 2, 3, 3), (2, 2, 9, 9), (2, 3, 1, 5), (3, 2, 5, 1),
          (2, 3, 2, 5), (3, 2, 3, 9)]  # the last two: rows ending in 2 and 3 of 8 lanes
def make_params(C, H, W, bias=True, dtype=torch.float32, device="cpu"):
    P = H * W
    weight = torch.randn(C, P, P, dtype=dtype, device=device) / P**0.5
    b = torch.randn(C, P, dtype=dtype, device=device) if bias else None
    return weight, b


def ref64(x, weight, bias):
    return reference.channelwise_fc(x.double(), weight.double(), None if bias is None else bias.double())


def poison_allocator(numel, dtype, device):
    """Fill a block of the output's size with NaN and free it, so an output the kernel
    allocates next is likely to reuse that memory: an element the kernel never
    writes then shows as NaN instead of a lucky leftover."""
    torch.full((numel,), float("nan"), dtype=dtype, device=device)


def assert_close64(actual, expected, dtype):
    assert torch.isfinite(actual).all(), "an output element was not written (NaN poison survived)"
    torch.testing.assert_close(actual.double(), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape, layout, bias, dtype, device):
    x = make_x(shape, layout, dtype, device)
    weight, b = make_params(*shape[1:], bias=bias, dtype=dtype, device=device)
    poison_allocator(x.numel(), dtype, device)
    y = OPS.channelwise_fc(x, weight, b)
    assert y.shape == x.shape and y.dtype == dtype
    expected_cl = layout == "channels_last" and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if expected_cl else torch.contiguous_format)
    assert_close64(y, ref64(x, weight, b), dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(5, 4, 6, 6), (3, 1, 2, 3), (4, 5, 1, 1), (130, 2, 3, 3), (2, 2, 9, 9)])
def test_backward_matches_reference(shape, layout, dtype, device):
    x = make_x(shape, layout, dtype, device)
    weight, b = make_params(*shape[1:], dtype=dtype, device=device)
    # grad_y in another layout than x: the kernels read it through its own strides.
    grad_y = make_x(shape, "strided" if layout != "strided" else "channels_last", dtype, device)
    poison_allocator(x.numel(), dtype, device)
    gx, gw, gb = OPS.channelwise_fc_backward(grad_y, x, weight)
    x64, w64, b64 = (t.double().detach().requires_grad_() for t in (x, weight, b))
    expected = torch.autograd.grad(ref64(x64, w64, b64), (x64, w64, b64), grad_y.double())
    for actual, exp in zip((gx, gw, gb), expected):
        assert actual.shape == exp.shape
        assert_close64(actual, exp, dtype)


@pytest.mark.parametrize("device", devices())
def test_autograd_through_functional(device):
    x = make_x((4, 3, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    weight, b = (t.requires_grad_() for t in make_params(3, 6, 6, device=device))
    grad_y = torch.randn(x.shape, device=device)
    grads = torch.autograd.grad(functional.channelwise_fc(x, weight, b), (x, weight, b), grad_y)
    expected = torch.autograd.grad(reference.channelwise_fc(x, weight, b), (x, weight, b), grad_y)
    for actual, exp in zip(grads, expected):
        torch.testing.assert_close(actual, exp, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("device", devices())
def test_double_backward_raises_naming_the_op(device):
    x = make_x((3, 2, 3, 3), "contiguous", torch.float64, device).requires_grad_()
    weight, b = (t.requires_grad_() for t in make_params(2, 3, 3, dtype=torch.float64, device=device))
    assert_double_backward_refused(lambda: functional.channelwise_fc(x, weight, b).square().sum(), (x, weight, b),
                                   "channelwise_fc")


def test_no_graph_is_recorded_without_grad():
    x = make_x((2, 3, 2, 2), "contiguous").requires_grad_()
    weight, b = make_params(3, 2, 2)
    assert functional.channelwise_fc(x, weight, b).grad_fn is not None
    with torch.no_grad():
        assert functional.channelwise_fc(x, weight, b).grad_fn is None
    assert functional.channelwise_fc(x.detach(), weight, b).grad_fn is None


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape,layout", [((2, 3, 2, 3), "contiguous"), ((3, 2, 3, 3), "channels_last"),
                                          ((2, 2, 1, 1), "strided")])
def test_gradcheck_float64(shape, layout, bias, device):
    x = make_x(shape, layout, torch.float64, device).requires_grad_()
    weight, b = make_params(*shape[1:], bias=bias, dtype=torch.float64, device=device)
    inputs = (x, weight.requires_grad_(), b.requires_grad_() if bias else None)
    assert torch.autograd.gradcheck(functional.channelwise_fc, inputs)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape,layout,bias", [((2, 3, 4, 5), "contiguous", True),
                                               ((3, 2, 6, 6), "channels_last", False),
                                               ((2, 2, 3, 3), "strided", True),
                                               ((0, 2, 3, 3), "contiguous", True)])
def test_opcheck(shape, layout, bias, device):
    x = make_x(shape, layout, torch.float32, device)
    weight, b = make_params(*shape[1:], bias=bias, device=device)
    torch.library.opcheck(OPS.channelwise_fc.default, (x.requires_grad_(), weight.requires_grad_(),
                                                       b.requires_grad_() if bias else None))
    grad_y = torch.randn(x.shape, device=device)
    torch.library.opcheck(OPS.channelwise_fc_backward.default, (grad_y, x.detach(), weight.detach()))


def _loss(module, x):
    y = module(x)
    return y, (y * y).sum()


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_aot_eager(device):
    torch.manual_seed(0)
    ours = ChannelwiseFC(4, 6, 6).to(device)
    twin = reference.ChannelwiseFC(4, 6, 6).to(device)
    twin.load_state_dict(ours.state_dict(), strict=True)
    x = make_x((3, 4, 6, 6), "channels_last", torch.float32, device)
    # The compiled graph holds the forward; AOT autograd traces the backward op into
    # the compiled backward graph that .backward() runs.
    y, loss = torch.compile(_loss, backend="aot_eager", fullgraph=True)(ours, x)
    loss.backward()
    y_ref, loss_ref = _loss(twin, x)
    loss_ref.backward()
    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float32])
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, dict(twin.named_parameters())[name].grad, atol=1e-4, rtol=1e-4)


def test_compile_fullgraph_inductor():
    x = make_x((2, 3, 4, 4), "contiguous")
    weight, b = make_params(3, 4, 4)
    compiled = torch.compile(lambda x, w, b: functional.channelwise_fc(x, w, b) * 2, backend="inductor",
                             fullgraph=True)
    torch.testing.assert_close(compiled(x, weight, b), 2 * reference.channelwise_fc(x, weight, b),
                               **TOLERANCES[torch.float32])


# --- the two wrong implementations public ports ship -------------------------------

def depthwise_1x1(x, weight, bias):
    """Wrong: a depthwise 1x1 convolution, one scalar per channel (here the mean of
    the diagonal of W_c), so no information moves across positions."""
    scale = weight.diagonal(dim1=1, dim2=2).mean(-1).reshape(-1, 1, 1, 1)
    y = F.conv2d(x, scale, groups=x.shape[1])
    return y if bias is None else y + bias.reshape(bias.shape[0], *x.shape[2:])


def bmm_batch_channel_swapped(x, weight, bias):
    """Wrong: torch.bmm over the batch axis instead of the channel axis, so sample b
    is multiplied by channel b's weights (only runs when B == C)."""
    B, C, H, W = x.shape
    y = torch.bmm(x.reshape(B, C, H * W), weight)
    return (y if bias is None else y + bias).reshape(x.shape)


def semantics_violations(impl) -> list[str]:
    """Checks of channelwise_fc's definition that need no reference implementation:
    an explicit per-sample, per-channel vector-matrix product, channel independence,
    and sample independence. Returns what `impl` got wrong."""
    B = C = 3  # B == C, so the swapped-axes version runs and must be caught by value
    x = torch.randn(B, C, 4, 5, dtype=torch.float64)
    weight, b = make_params(C, 4, 5, dtype=torch.float64)
    y = impl(x, weight, b).reshape(B, C, 20)
    problems = []
    explicit = torch.stack([torch.stack([x[s, c].reshape(20) @ weight[c] + b[c] for c in range(C)])
                            for s in range(B)])
    if not torch.allclose(y, explicit, atol=1e-10, rtol=1e-8):
        problems.append("y[b, c] != x[b, c] @ weight[c] + bias[c]")
    # Changing the weights of channel 0 must change channel 0 of every sample and nothing else.
    w2 = weight.clone()
    w2[0] += torch.randn_like(w2[0])
    y2 = impl(x, w2, b).reshape(B, C, 20)
    changed = (y2 != y).any(-1)
    if not (changed[:, 0].all() and not changed[:, 1:].any()):
        problems.append("weight[0] does not act on exactly channel 0 of every sample")
    # Changing sample 0 must change sample 0 only.
    x2 = x.clone()
    x2[0] += torch.randn_like(x2[0])
    if (impl(x2, weight, b).reshape(B, C, 20)[1:] != y[1:]).any():
        problems.append("samples are not independent")
    return problems


def test_ours_satisfies_definition():
    assert semantics_violations(functional.channelwise_fc) == []
    assert semantics_violations(reference.channelwise_fc) == []


@pytest.mark.parametrize("wrong", [depthwise_1x1, bmm_batch_channel_swapped])
def test_known_wrong_implementations_are_caught(wrong):
    problems = semantics_violations(wrong)
    assert problems, f"{wrong.__name__} passed the checks that ours must pass"
    # And on the same inputs they disagree with ours.
    x = torch.randn(4, 4, 6, 6, dtype=torch.float64)
    weight, b = make_params(4, 6, 6, dtype=torch.float64)
    assert not torch.allclose(wrong(x, weight, b), OPS.channelwise_fc(x, weight, b))


# --- bad inputs --------------------------------------------------------------------

def _bad_cases():
    x = torch.randn(2, 3, 4, 4)
    w, b = make_params(3, 4, 4)
    return {
        "x not 4-D": ((x[0], w, b), "x", "4-D"),
        "integer x": ((x.to(torch.int32), w.to(torch.int32), None), "x", "floating"),
        "weight shape": ((x, w[:, :, :15], b), "weight", r"\(3, 16, 16\)"),
        "weight channels": ((x, w[:2], b), "weight", r"\(3, 16, 16\)"),
        "weight dtype": ((x, w.double(), b), "weight", "dtype"),
        "bias shape": ((x, w, b[:, :4]), "bias", r"\(3, 16\)"),
        "bias dtype": ((x, w, b.double()), "bias", "dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
@pytest.mark.parametrize("path", ["functional", "op"])
def test_bad_input_names_argument(case, path):
    args, name, expected = _bad_cases()[case]
    fn = functional.channelwise_fc if path == "functional" else OPS.channelwise_fc
    with pytest.raises((ValueError, TypeError, RuntimeError), match=rf"`{name}`.*{expected}"):
        fn(*args)


def test_bad_device_names_argument():
    x = torch.randn(2, 3, 4, 4)
    w, b = make_params(3, 4, 4)
    with pytest.raises(ValueError, match="`weight` must be on x's device"):
        functional.channelwise_fc(x, w.to("meta"), b)
    with pytest.raises(ValueError, match="`bias` must be on x's device"):
        functional.channelwise_fc(x, w, b.to("meta"))


def test_bad_backward_inputs_name_argument():
    x = torch.randn(2, 3, 4, 4)
    w, _ = make_params(3, 4, 4)
    with pytest.raises(RuntimeError, match="`grad_y` must have x's shape"):
        OPS.channelwise_fc_backward(x[:1], x, w)
    with pytest.raises(RuntimeError, match="`grad_y` must have x's dtype"):
        OPS.channelwise_fc_backward(x.double(), x, w)
    with pytest.raises(RuntimeError, match="`weight` must have shape"):
        OPS.channelwise_fc_backward(x, x, w[:, :3])


# --- empty batch, half types, fallback -------------------------------------------

@pytest.mark.parametrize("device", devices())
def test_empty_batch(device):
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    weight, b = (t.requires_grad_() for t in make_params(3, 4, 4, device=device))
    y = functional.channelwise_fc(x, weight, b)
    assert y.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", devices())
def test_half_types(dtype, device):
    x = make_x((8, 4, 6, 6), "channels_last", dtype, device)
    weight, b = make_params(4, 6, 6, dtype=dtype, device=device)
    y = functional.channelwise_fc(x, weight, b)
    assert y.dtype == dtype
    assert_close64(y, ref64(x, weight, b), dtype)
    if device == "cuda":
        grad_y = torch.randn(x.shape, dtype=dtype, device=device)
        grads = OPS.channelwise_fc_backward(grad_y, x, weight)
        x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, b))
        expected = torch.autograd.grad(ref64(x64, w64, b64), (x64, w64, b64), grad_y.double())
        for actual, exp in zip(grads, expected):
            torch.testing.assert_close(actual.double(), exp, atol=5e-2, rtol=2e-2)


def test_fallback_without_extension(monkeypatch):
    monkeypatch.setattr(_ext, "LOADED", False)
    x = make_x((2, 3, 4, 5), "strided")
    weight, b = make_params(3, 4, 5)
    torch.testing.assert_close(functional.channelwise_fc(x, weight, b).double(), ref64(x, weight, b),
                               **TOLERANCES[torch.float32])


# --- modules ---------------------------------------------------------------------

def test_module_init_keeps_scale_and_repr():
    fc = ChannelwiseFC(64, 6, 6)
    x = torch.randn(32, 64, 6, 6) * 3.0
    ratio = fc(x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    assert 0.9 < ratio < 1.1, f"output rms / input rms = {ratio:.3f} at initialisation"
    assert torch.equal(fc.bias, torch.zeros_like(fc.bias))
    text = repr(fc)
    assert "channels=64, height=6, width=6" in text and f"params={64 * 36 * 36 + 64 * 36:,}" in text
    assert "bias=False" in repr(ChannelwiseFC(2, 3, 4, bias=False))


@pytest.mark.parametrize("module_class", [ChannelwiseFC, reference.ChannelwiseFC])
@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (4, 6, 6), (2, 4, 6, 6, 1)])
def test_module_rejects_wrong_map_shape(module_class, shape):
    with pytest.raises(ValueError, match=r"ChannelwiseFC: `x` must have shape \(B, 4, 6, 6\); got"):
        module_class(4, 6, 6)(torch.randn(shape))


@pytest.mark.parametrize("bias", [True, False])
def test_modules_match_reference_twins_state_dict_both_ways(bias):
    ours = ChannelwiseFCBottleneck(4, 4, 4, dropout=0.5, out_channels=6, bias=bias)
    twin = reference.ChannelwiseFCBottleneck(4, 4, 4, dropout=0.5, out_channels=6, bias=bias)
    twin.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(twin.state_dict(), strict=True)
    x = make_x((5, 4, 4, 4), "channels_last")
    ours.eval(), twin.eval()
    torch.testing.assert_close(ours(x), twin(x), **TOLERANCES[torch.float32])
    # In training the dropout sits between the two layers: outputs change, shape stays.
    ours.train()
    y = ours(x)
    assert not torch.allclose(y, twin(x))
    assert y.shape == (5, 6, 4, 4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_bottleneck_twins_drop_the_same_elements_for_the_same_seed(layout):
    """Dropout's mask follows memory order: the reference lays the einsum's output out as
    the fused op's, so in training the same seed gives the same outputs and gradients."""
    ours = ChannelwiseFCBottleneck(3, 4, 5, dropout=0.5)
    twin = reference.ChannelwiseFCBottleneck(3, 4, 5, dropout=0.5)
    twin.load_state_dict(ours.state_dict())
    x = make_x((6, 3, 4, 5), layout)
    seed = torch.seed()
    results = []
    for module in (ours, twin):
        torch.manual_seed(seed)
        module(x).square().sum().backward()
        results.append([module(x)] + [p.grad for p in module.parameters()])  # a second draw too
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


def test_bottleneck_out_channels_must_be_positive():
    with pytest.raises(ValueError, match="`out_channels` must be >= 1; got 0"):
        ChannelwiseFCBottleneck(4, 2, 2, out_channels=0)


def test_info_lists_op():
    assert autoenc_fast.info()["kernels"]["channelwise_fc"]["cpu"] == "C++ CPU"
    if HAS_CUDA:
        assert autoenc_fast.info()["kernels"]["channelwise_fc"]["cuda"] == "CUDA C++"


def test_autocast_runs_in_the_lower_precision_like_a_matmul():
    x = torch.randn(2, 3, 4, 4)
    weight, bias = torch.randn(3, 16, 16) / 4, torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = functional.channelwise_fc(x.bfloat16(), weight, bias)  # float32 parameters, bf16 activations
    assert y.dtype == torch.bfloat16
    expected = reference.channelwise_fc(x.bfloat16().double(), weight.bfloat16().double(),
                                        bias.bfloat16().double())
    torch.testing.assert_close(y.double(), expected, atol=5e-2, rtol=2e-2)


def test_autocast_casts_only_what_autocast_casts():
    """Autocast lowers floating-point tensors other than float64 (torch.mm's policy):
    integer inputs still get the checks' error, float64 ones run in float64."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="`x` must be a floating-point tensor; got torch.int32"):
            functional.channelwise_fc(torch.ones(2, 3, 2, 2, dtype=torch.int32), torch.ones(3, 4, 4, dtype=torch.int32))
        with pytest.raises(TypeError, match="`weight` must have x's dtype"):
            functional.channelwise_fc(torch.randn(2, 3, 2, 2), torch.ones(3, 4, 4, dtype=torch.int32))
        x, weight = torch.randn(2, 3, 2, 2, dtype=torch.float64), torch.randn(3, 4, 4, dtype=torch.float64)
        y = functional.channelwise_fc(x, weight)
        mm_dtype = torch.mm(x.view(-1, 4), weight[0]).dtype
    assert y.dtype == mm_dtype == torch.float64
    torch.testing.assert_close(y, reference.channelwise_fc(x, weight, None))


@pytest.mark.parametrize("bias", [True, False])
def test_bmm_baseline_of_the_benchmarks_matches_reference(bias):
    """The benchmarks time torch.bmm on a permuted copy as a baseline: it must compute
    the same op, or the comparison means nothing."""
    from autoenc_fast.bench import channelwise_fc_bmm

    shape = (5, 3, 4, 6)
    x = make_x(shape, "contiguous", torch.float64)
    weight, b = make_params(*shape[1:], bias=bias, dtype=torch.float64)
    torch.testing.assert_close(channelwise_fc_bmm(x, weight, b), ref64(x, weight, b), rtol=1e-12, atol=1e-12)


# The kernel variants the GPU check times, as the environment selects them.
CUDA_VARIANTS = {"cols2": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "2"},
                 "cols4": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "4"},
                 "micro4x4": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "4x4"},
                 "paired": {"AUTOENC_FAST_CHANNELWISE_FC_PAIRED": "1"}}


@requires_cuda
@pytest.mark.parametrize("variant", list(CUDA_VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_kernel_variants_equal_the_default_kernel(variant, dtype, monkeypatch):
    """AUTOENC_FAST_CHANNELWISE_FC_COLS=2, 4 or 4x4 (register-blocked columns, 4x4 micro
    tiles) and AUTOENC_FAST_CHANNELWISE_FC_PAIRED=1 (the backward in one launch) select the
    variants the GPU check times. Each output sums the same products in the same order as
    the default kernel's, so forward and backward must equal it bit for bit, for every test
    shape, the benchmark shapes and every layout; other values are refused, naming the
    variable."""
    for shape in SHAPES + [(64, 256, 6, 6), (64, 512, 4, 4), (3, 2, 12, 12)]:
        for layout in LAYOUTS:
            x = make_x(shape, layout, dtype, "cuda")
            weight, bias = make_params(*shape[1:], dtype=dtype, device="cuda")
            grad_y = torch.randn(shape, dtype=dtype, device="cuda")
            results = []
            for variables in ({}, CUDA_VARIANTS[variant]):
                for name, value in variables.items():
                    monkeypatch.setenv(name, value)
                results.append((OPS.channelwise_fc(x, weight, bias), *OPS.channelwise_fc_backward(grad_y, x, weight)))
            for name, default, result in zip(("y", "grad_x", "grad_weight", "grad_bias"), *results):
                assert torch.equal(default, result), f"{name} differs at {shape} {layout} with {variant}"
            for name in CUDA_VARIANTS[variant]:
                monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", "3")
    with pytest.raises(RuntimeError, match="AUTOENC_FAST_CHANNELWISE_FC_COLS must be 1, 2, 4 or 4x4; got '3'"):
        OPS.channelwise_fc(x, weight, bias)


@pytest.mark.parametrize("module", [ChannelwiseFC, reference.ChannelwiseFC])
@pytest.mark.parametrize("args, error, message", [
    ((0, 4, 4), ValueError, "`channels` must be >= 1; got 0"),
    ((3, 4, -1), ValueError, "`width` must be >= 1; got -1"),
    ((3.0, 4, 4), TypeError, "`channels` must be an int; got float"),
])
def test_module_bad_constructor_arguments_name_them(module, args, error, message):
    with pytest.raises(error, match=f"ChannelwiseFC: {message}"):
        module(*args)

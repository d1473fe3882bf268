"""The CUDA C++ kernels (csrc/cuda/*.cu) run under the CUDA emulator (tests/cuda_emulation)
on the CPU, against this project's CPU kernels, which the rest of the suite holds to the
float64 reference: same op, same arguments, same outputs. On a machine without a GPU this
checks the CUDA kernels' indexing, tiling, bounds, barriers and warp reductions on every
commit; only speed, races and the GPU's arithmetic wait for the GPU check.

The emulator runs every thread of every block, so shapes are small; each still takes the
paths the real sizes take (several tiles in every dimension, vector packs and the scalar
fallback, split reductions, grid-stride loops).
"""
from __future__ import annotations

import shutil

import pytest
import torch

import autoenc_fast  # noqa: F401  (registers the CPU ops compared against)
from conftest import LAYOUTS, assert_gamma_beta_readers_agree, assert_merged_ops_agree_with_separate, make_x

pytestmark = pytest.mark.skipif(shutil.which("ninja") is None,
                                reason="the CUDA emulator's build needs ninja (pip install ninja)")

# Emulated outputs in reduced precision against the float64 result: rounding of the
# inputs and outputs only (the kernels accumulate in float32).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module")
def emu():
    from cuda_emulation import load

    return load()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert not actual.isnan().any(), "an element was never written (poisoned NaN) or is NaN"
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


# -------------------------------------------------------------------- channelwise_fc

# (B, C, H, W): the Context Encoder's 6x6 and 4x4 maps at a small batch, 1x1 maps, H != W,
# 9x9 = 81 positions (two column tiles and two K tiles of 64), and 6x6 maps at batches that
# split into row tiles of blocks that are not whole warps (B = 64: three tiles of 24 rows
# by 216 threads; B = 30: two of 16 by 144; the weight gradient's 37 rows: two of 20).
CHANNELWISE_SHAPES = [(5, 3, 6, 6), (9, 2, 4, 4), (1, 1, 1, 1), (3, 2, 3, 5), (4, 2, 9, 9), (64, 2, 6, 6),
                      (30, 1, 6, 6)]


@pytest.mark.parametrize("shape", CHANNELWISE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channelwise_fc_matches_the_cpu_kernel(emu, shape, layout):
    B, C, H, W = shape
    P = H * W
    x = make_x(shape, layout, torch.float64)
    weight, bias = torch.randn(C, P, P, dtype=torch.float64) / P**0.5, torch.randn(C, P, dtype=torch.float64)
    grad_y = make_x(shape, layout, torch.float64)
    ops = torch.ops.autoenc_fast
    for with_bias in (bias, None):
        assert relative_error(emu.channelwise_fc(x, weight, with_bias), ops.channelwise_fc(x, weight, with_bias)) < 1e-13
    for actual, expected in zip(emu.channelwise_fc_backward(grad_y, x, weight),
                                ops.channelwise_fc_backward(grad_y, x, weight)):
        assert relative_error(actual, expected) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("columns", ["1", "4x4"])
def test_channelwise_fc_reduced_precision_against_float64(emu, dtype, columns, monkeypatch):
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", columns)
    B, C, H, W = 6, 3, 6, 6
    x, grad_y = torch.randn(B, C, H, W), torch.randn(B, C, H, W)
    weight, bias = torch.randn(C, H * W, H * W) / 6, torch.randn(C, H * W)
    low = [t.to(dtype) for t in (x, weight, bias, grad_y)]
    exact = [t.to(dtype).double() for t in (x, weight, bias, grad_y)]  # the same rounded inputs
    ops = torch.ops.autoenc_fast
    assert relative_error(emu.channelwise_fc(*low[:3]), ops.channelwise_fc(*exact[:3])) < TOLERANCE[dtype]
    for actual, expected in zip(emu.channelwise_fc_backward(low[3], low[0], low[1]),
                                ops.channelwise_fc_backward(exact[3], exact[0], exact[1])):
        assert actual.dtype == dtype
        assert relative_error(actual, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("shape", [(5, 3, 6, 6), (70, 2, 4, 4), (4, 2, 9, 9)], ids=shape_id)
def test_channelwise_fc_column_variants_are_bit_identical(emu, shape, monkeypatch):
    # AUTOENC_FAST_CHANNELWISE_FC_COLS = 2 or 4 gives each thread more output columns, 4x4 a
    # 4x4 micro-tile from 16-byte shared loads; the sums and their order are the same, so
    # the results must be identical (70 rows of 4x4: the narrower variants' blocks span more
    # than one row tile).
    B, C, H, W = shape
    x, grad_y = torch.randn(shape), torch.randn(shape)
    weight, bias = torch.randn(C, H * W, H * W), torch.randn(C, H * W)
    results = {}
    for columns in ("1", "2", "4", "4x4"):
        monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", columns)
        results[columns] = (emu.channelwise_fc(x, weight, bias), *emu.channelwise_fc_backward(grad_y, x, weight))
    for columns in ("2", "4", "4x4"):
        for actual, expected in zip(results[columns], results["1"]):
            assert torch.equal(actual, expected), columns
    assert relative_error(results["1"][0], torch.ops.autoenc_fast.channelwise_fc(x, weight, bias)) < 1e-5


@pytest.mark.parametrize("columns", ["1", "2", "4", "4x4"])
def test_channelwise_fc_paired_backward_is_bit_identical(emu, columns, monkeypatch):
    # AUTOENC_FAST_CHANNELWISE_FC_PAIRED=1 runs grad_x and the weight gradient in one launch
    # (different row counts, so one product's extra row tiles are empty blocks).
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", columns)
    for shape in [(5, 3, 6, 6), (70, 2, 4, 4), (4, 2, 9, 9)]:
        B, C, H, W = shape
        x, grad_y, weight = torch.randn(shape), torch.randn(shape), torch.randn(C, H * W, H * W)
        separate = emu.channelwise_fc_backward(grad_y, x, weight)
        monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_PAIRED", "1")
        paired = emu.channelwise_fc_backward(grad_y, x, weight)
        monkeypatch.delenv("AUTOENC_FAST_CHANNELWISE_FC_PAIRED")
        for a, b in zip(paired, separate):
            assert torch.equal(a, b), shape
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_PAIRED", "yes")
    with pytest.raises(RuntimeError, match="AUTOENC_FAST_CHANNELWISE_FC_PAIRED must be 0 or 1; got 'yes'"):
        emu.channelwise_fc_backward(grad_y, x, weight)


def test_channelwise_fc_columns_switch_rejects_unknown_values(emu, monkeypatch):
    x, weight = torch.randn(2, 3, 4, 4), torch.randn(3, 16, 16)
    for columns in ("3", "4x2"):
        monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", columns)
        with pytest.raises(RuntimeError, match=f"channelwise_fc: AUTOENC_FAST_CHANNELWISE_FC_COLS must be 1, 2, 4 "
                                               f"or 4x4; got '{columns}'"):
            emu.channelwise_fc(x, weight, None)
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", "")  # empty: the default, as unset
    torch.testing.assert_close(emu.channelwise_fc(x, weight, None),
                               torch.ops.autoenc_fast.channelwise_fc(x, weight, None), rtol=1e-5, atol=1e-5)


def test_channelwise_fc_empty_batch(emu):
    x, weight = torch.randn(0, 3, 4, 4), torch.randn(3, 16, 16)
    assert emu.channelwise_fc(x, weight, None).shape == x.shape
    grad_x, grad_weight, grad_bias = emu.channelwise_fc_backward(torch.randn(0, 3, 4, 4), x, weight)
    assert grad_x.shape == x.shape and not grad_weight.any() and not grad_bias.any()


# -------------------------------------------------------------------- spade_norm

# (N, C, H, W): 4x4 maps (packs of two float64 / four float32), 3x5 (no pack: one element
# at a time), 40x40 (a row split over two reduction blocks), C = 8 (channels_last packs)
# and C = 3 (channels_last scalar).
# The last two: channels_last blocks of 10 channel lanes by 25 row lanes (C = 20 in packs of
# two float64), and two channel tiles, the second partial (C = 72 > 32 lanes x 2).
SPADE_SHAPES = [(3, 4, 4, 4), (2, 3, 3, 5), (2, 2, 40, 40), (2, 8, 6, 6), (3, 20, 5, 5), (2, 72, 3, 3)]


def spade_inputs(shape, dtype=torch.float64, layout="contiguous"):
    x = make_x(shape, layout, dtype) * 2 + 0.5  # keeps the layout
    gamma, beta, grad_y = (make_x(shape, layout, dtype) for _ in range(3))
    return x, gamma, beta, grad_y


@pytest.mark.parametrize("shape", SPADE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize("slope", [None, 0.2])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
def test_spade_norm_forward_and_backward_match_the_cpu_kernel(emu, shape, layout, instance, slope, fused,
                                                              monkeypatch):
    # Both NCHW paths of the single-process ops: the split kernels, and one block per group
    # (AUTOENC_FAST_SPADE_NORM_FUSED; channels_last always takes the split kernels).
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    x, gamma, beta, grad_y = spade_inputs(shape, layout=layout)
    ops = torch.ops.autoenc_fast
    args = (x, gamma, beta, None, None, True, instance, 0.1, 1e-5, slope)
    y, mean, invstd = emu.spade_norm(*args)
    for actual, expected in zip((y, mean, invstd), ops.spade_norm(*args)):
        assert relative_error(actual, expected) < 1e-12
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for use_input_stats in (True, False):
        backward = (grad_y, x, gamma, beta, mean, invstd, use_input_stats, slope)
        for actual, expected in zip(emu.spade_norm_backward(*backward), ops.spade_norm_backward(*backward)):
            assert relative_error(actual, expected) < 1e-12


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
def test_spade_norm_nan_stays_in_its_channel_statistics(emu, layout, fused, monkeypatch):
    # A NaN stays in its group's statistics (a max() with 0 on the GPU would return 0).
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    x, gamma, beta, _ = spade_inputs((2, 4, 4, 4), torch.float32, layout)
    x[1, 2, 3, 0] = float("nan")
    for instance, poisoned in ((False, [2]), (True, [4 + 2])):
        y, mean, invstd = emu.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, None)
        for stat in (mean, invstd, emu.spade_norm_stats(x, instance)[1]):
            assert stat.flatten().isnan().nonzero().flatten().tolist() == poisoned
        expected = torch.ops.autoenc_fast.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, None)
        for actual, want in zip((y, mean, invstd), expected):
            torch.testing.assert_close(actual, want, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spade_norm_running_statistics_and_pieces_match_the_cpu_kernel(emu, layout):
    # Eval mode (running statistics), and the ops the synchronized batch norm calls one by one.
    x, gamma, beta, grad_y = spade_inputs((3, 8, 4, 4), layout=layout)
    running_mean, running_var = torch.randn(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64) + 0.5
    ops = torch.ops.autoenc_fast
    args = (x, gamma, beta, running_mean, running_var, False, False, 0.1, 1e-5, 0.2)
    for actual, expected in zip(emu.spade_norm(*args), ops.spade_norm(*args)):
        assert relative_error(actual, expected) < 1e-12
    mean, var = emu.spade_norm_stats(x, False)
    for actual, expected in zip((mean, var), ops.spade_norm_stats(x, False)):
        assert relative_error(actual, expected) < 1e-12
    invstd = (var + 1e-5).rsqrt()
    apply = (x, gamma, beta, mean, invstd, 0.2)
    assert relative_error(emu.spade_norm_apply(*apply), ops.spade_norm_apply(*apply)) < 1e-12
    reduce = (grad_y, x, gamma, beta, mean, invstd, 0.2)
    sums = emu.spade_norm_backward_reduce(*reduce)
    for actual, expected in zip(sums, ops.spade_norm_backward_reduce(*reduce)):
        assert relative_error(actual, expected) < 1e-12
    means = [s / (3 * 16) for s in sums]
    elemt = (grad_y, x, gamma, beta, mean, invstd, *means, 0.2)
    for actual, expected in zip(emu.spade_norm_backward_elemt(*elemt), ops.spade_norm_backward_elemt(*elemt)):
        assert relative_error(actual, expected) < 1e-12


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
@pytest.mark.parametrize("buffers", ["float32", "float64", "float16", "bfloat16", "mixed", "strided"])
def test_spade_norm_updates_the_running_statistics_as_the_cpu_kernel(emu, layout, fused, buffers, monkeypatch):
    # Training with running buffers: the forward updates them in place (update_running_kernel
    # after either statistics path), each in its own dtype, a strided buffer through a
    # contiguous copy written back; the same values as the CPU kernel's update.
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    x, gamma, beta, _ = spade_inputs((3, 8, 4, 4), torch.float32, layout)
    special = {"mixed": (torch.float32, torch.float64), "strided": (torch.float32, torch.float32)}
    dtypes = special[buffers] if buffers in special else (getattr(torch, buffers),) * 2
    running = [torch.randn(16 if buffers == "strided" else 8, dtype=dtypes[0]),
               torch.rand(16 if buffers == "strided" else 8, dtype=dtypes[1]) + 0.5]
    if buffers == "strided":
        running = [t[::2] for t in running]
    expected, initial = [t.clone() for t in running], [t.clone() for t in running]
    outputs = emu.spade_norm(x, gamma, beta, *running, True, False, 0.3, 1e-5, 0.2)
    for actual, want in zip(outputs, torch.ops.autoenc_fast.spade_norm(x, gamma, beta, *expected, True, False, 0.3,
                                                                      1e-5, 0.2)):
        # float32 x: statistics summed in another order than the CPU kernel's (1.03e-6 seen)
        assert relative_error(actual, want) < TOLERANCE[torch.float32]
    for actual, want, dtype in zip(running, expected, dtypes):
        # float32 batch statistics summed in another order: their rounding, or the buffer's
        assert actual.dtype == dtype and relative_error(actual, want) < max(TOLERANCE[dtype], 1e-6)
    for actual, before in zip(running, initial):  # every channel of both buffers was updated (a
        changed = actual != before                   # 16-bit buffer may round back to its old value)
        assert changed.all() if actual.element_size() >= 4 else changed.any()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
@pytest.mark.parametrize("data", ["spike", "far_mean"])
def test_spade_norm_float32_statistics_stay_accurate(emu, layout, instance, fused, data, monkeypatch):
    # Welford moments of x minus the group's first element k, merged pairwise. Sums of
    # (x - k)^2 lost (k - mean)^2 / var * 2^-24 of the variance when k is a spike (1e-5 to
    # 5e-5 here); Welford on x itself lost 1e-3 when |mean| / std = 1e5. The mean, k + the
    # moments' mean, rounds at k's scale, so its error is held to float32's rounding of
    # itself (3e-3 stds at the far mean) plus a share of the group's std (which a spike
    # raises with k: 1.5e-5 stds seen).
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    x, gamma, beta, _ = spade_inputs((8, 4, 16, 16), torch.float32, layout)
    if data == "spike":
        x[:, :, 0, 0] = 1e4 * (1 + torch.rand(8, 4))
    else:
        layout_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = (torch.randn(8, 4, 16, 16) * 0.01 + 1000.0).contiguous(memory_format=layout_format)
    dims = (2, 3) if instance else (0, 2, 3)
    mean_ref, var_ref = x.double().mean(dims).flatten(), x.double().var(dims, unbiased=False).flatten()

    def mean_error_in_stds(mean):
        excess = (mean.flatten().double() - mean_ref).abs() - 2.0**-22 * mean_ref.abs()
        return (excess / var_ref.sqrt()).max().item()

    mean, var = emu.spade_norm_stats(x, instance)
    assert mean_error_in_stds(mean) < 5e-5 and relative_error(var.flatten(), var_ref) < 2e-6
    _, mean, invstd = emu.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, None)
    assert mean_error_in_stds(mean) < 5e-5
    assert relative_error(invstd.flatten(), torch.rsqrt(var_ref + 1e-5)) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
def test_spade_norm_reduced_precision_against_float64(emu, dtype, layout, fused, monkeypatch):
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    x, gamma, beta, grad_y = (t.to(dtype) for t in spade_inputs((2, 8, 4, 4), torch.float32, layout))
    exact = [t.double() for t in (x, gamma, beta, grad_y)]
    ops = torch.ops.autoenc_fast
    y, mean, invstd = emu.spade_norm(x, gamma, beta, None, None, True, False, 0.1, 1e-5, 0.2)
    y_ref, mean_ref, invstd_ref = ops.spade_norm(*exact[:3], None, None, True, False, 0.1, 1e-5, 0.2)
    assert y.dtype == dtype and mean.dtype == invstd.dtype == torch.float32  # statistics in float32
    assert relative_error(y, y_ref) < TOLERANCE[dtype]
    assert relative_error(mean, mean_ref) < TOLERANCE[dtype] and relative_error(invstd, invstd_ref) < TOLERANCE[dtype]
    grads = emu.spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, True, 0.2)
    grads_ref = ops.spade_norm_backward(exact[3], *exact[:3], mean_ref, invstd_ref, True, 0.2)
    for actual, expected in zip(grads, grads_ref):
        assert relative_error(actual, expected) < 2 * TOLERANCE[dtype]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
@pytest.mark.parametrize("instance", [False, True])
def test_spade_norm_reads_gamma_and_beta_as_halves_of_one_tensor(emu, layout, fused, instance, monkeypatch):
    # nn.SPADE hands the op the two channel halves of one (N, 2C, H, W) convolution output:
    # the CUDA kernels read them in place (NCHW rows, channels_last pixels 2C apart)
    # instead of copying them. Same results as the CPU kernels on contiguous copies, every
    # op that reads gamma and beta.
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    N, C, H, W = 3, 4, 4, 6
    x, grad_y = (make_x((N, C, H, W), layout, torch.float64) for _ in range(2))
    merged = make_x((N, 2 * C, H, W), layout, torch.float64)
    gamma, beta = merged.chunk(2, dim=1)
    assert not gamma.is_contiguous() and gamma.stride(0) == 2 * C * H * W or layout == "channels_last"
    dense = (gamma.contiguous(), beta.contiguous())

    def close(actual, expected):
        assert relative_error(actual, expected) < 1e-12

    assert_gamma_beta_readers_agree(emu, torch.ops.autoenc_fast, x, grad_y, (gamma, beta), dense, instance, close)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 4, 6), (1, 8, 4, 4), (2, 3, 5, 3)], ids=shape_id)
def test_spade_norm_merged_matches_the_cpu_separate_ops(emu, shape, layout, fused, instance, monkeypatch):
    # spade_norm_merged: the CUDA kernels read gamma_beta's halves in place and write the
    # gradient's halves at the same offsets (16-byte packs where C or H*W allow, else one
    # element at a time; batch 1). The CPU's spade_norm on dense copies is the reference.
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    N, C, H, W = shape
    x, grad_y = (make_x(shape, layout, torch.float64) for _ in range(2))
    gamma_beta = make_x((N, 2 * C, H, W), layout, torch.float64)

    def close(actual, expected):
        assert relative_error(actual, expected) < 1e-12

    assert_merged_ops_agree_with_separate(emu, torch.ops.autoenc_fast, x, grad_y, gamma_beta, instance, close)


def test_spade_norm_channels_last_halves_of_an_odd_pixel_stride_take_the_scalar_path(emu):
    # Halves whose pixel stride (9) is not a multiple of the 16-byte pack (2 float64), though
    # C (4) is: still read in place, element by element (a pack at pixel 1 would be
    # misaligned; the AddressSanitizer run's alignment check would stop there). float64, so
    # the comparison with the CPU kernels is exact to rounding whatever the draw.
    x, grad_y = (make_x((2, 4, 3, 5), "channels_last", torch.float64) for _ in range(2))
    base = make_x((2, 9, 3, 5), "channels_last", torch.float64)
    gamma, beta = base[:, :4], base[:, 4:8]
    assert gamma.stride() == beta.stride() == (135, 1, 45, 9)
    dense = (gamma.contiguous(memory_format=torch.channels_last), beta.contiguous(memory_format=torch.channels_last))
    with torch.profiler.profile(record_shapes=True) as prof:
        emu.spade_norm(x, gamma, beta, None, None, True, False, 0.1, 1e-5, 0.2)
    assert not [event.input_shapes for event in prof.events()
                if event.name == "aten::copy_" and any(shape for shape in event.input_shapes)]

    def close(actual, expected):
        assert relative_error(actual, expected) < 1e-12

    assert_gamma_beta_readers_agree(emu, torch.ops.autoenc_fast, x, grad_y, (gamma, beta), dense, False, close)


@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
def test_spade_norm_misaligned_tensors_take_the_scalar_path(emu, fused, monkeypatch):
    # Views that start one element into their storage: 16-byte packs would fault on the
    # GPU (and fail the AddressSanitizer run's alignment check here); the kernels must
    # notice and read element by element.
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    shape = (2, 4, 4, 4)

    def misaligned():
        return torch.randn(torch.Size(shape).numel() + 1)[1:].view(shape)

    x, gamma, beta, grad_y = misaligned(), misaligned(), misaligned(), misaligned()
    ops = torch.ops.autoenc_fast
    args = (None, None, True, False, 0.1, 1e-5, 0.2)
    y, mean, invstd = emu.spade_norm(x, gamma, beta, *args)
    for actual, expected in zip((y, mean, invstd), ops.spade_norm(x, gamma, beta, *args)):
        assert relative_error(actual, expected) < 1e-5
    for actual, expected in zip(emu.spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, True, 0.2),
                                ops.spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, True, 0.2)):
        assert relative_error(actual, expected) < 1e-5


def test_spade_norm_fused_switch_rejects_unknown_values(emu, monkeypatch):
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", "yes")
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(RuntimeError, match="AUTOENC_FAST_SPADE_NORM_FUSED must be 0, 1 or auto; got 'yes'"):
        emu.spade_norm(x, x, x, None, None, True, False, 0.1, 1e-5, None)


def test_spade_norm_empty_batch(emu):
    x = torch.randn(0, 4, 4, 4)
    running = (torch.randn(4), torch.rand(4) + 0.5)
    saved = tuple(t.clone() for t in running)
    y, mean, invstd = emu.spade_norm(x, x, x, *running, True, False, 0.1, 1e-5, None)
    assert y.shape == x.shape and mean.shape == invstd.shape == (4,)
    assert all(torch.equal(a, b) for a, b in zip(running, saved))  # nothing to average: untouched
    gamma_beta = torch.randn(0, 8, 4, 4)
    y, mean, invstd = emu.spade_norm_merged(x, gamma_beta, None, None, True, False, 0.1, 1e-5, None)
    grad_x, grad_gamma_beta = emu.spade_norm_merged_backward(y, x, gamma_beta, mean, invstd, True, None)
    assert y.shape == grad_x.shape == x.shape and grad_gamma_beta.shape == gamma_beta.shape


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spade_norm_statistics_past_the_grid_limit(emu, layout):
    # More samples (channels_last grid.z) and (n, c) rows (NCHW grid.y) than the grid's cap
    # (shrunk to EMULATED_MAX_GRID_YZ here, 65535 on the GPU): blocks loop on to further
    # samples and rows, which differ from the first ones.
    from cuda_emulation import EMULATED_MAX_GRID_YZ

    x = make_x((3 * EMULATED_MAX_GRID_YZ + 1, 2, 1, 2), layout, torch.float64)
    x[EMULATED_MAX_GRID_YZ:] = x[EMULATED_MAX_GRID_YZ:] * 3 + 1
    for instance in (False, True):
        for actual, expected in zip(emu.spade_norm_stats(x, instance),
                                    torch.ops.autoenc_fast.spade_norm_stats(x, instance)):
            assert relative_error(actual, expected) < 1e-12


# -------------------------------------------------------------------- races

def run_every_kernel(emu):
    """Every emulated op on inputs drawn from a fixed seed (several tiles, both spade_norm
    paths and layouts): their outputs, to compare between thread schedules."""
    torch.manual_seed(0)
    outputs = []
    x, grad_y = torch.randn(4, 2, 9, 9), torch.randn(4, 2, 9, 9)
    weight, bias = torch.randn(2, 81, 81), torch.randn(2, 81)
    outputs += [emu.channelwise_fc(x, weight, bias), *emu.channelwise_fc_backward(grad_y, x, weight)]
    for layout in ("contiguous", "channels_last"):
        x, gamma, beta, grad_y = spade_inputs((2, 8, 12, 12), torch.float32, layout)
        for instance in (False, True):
            y, mean, invstd = emu.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, 0.2)
            grads = emu.spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, True, 0.2)
            outputs += [y, mean, invstd, *grads]
    return outputs


@pytest.mark.parametrize("fused", ["0", "1"], ids=["split", "per-group"])
def test_results_do_not_depend_on_the_thread_schedule(emu, fused, monkeypatch):
    # Threads run in order, then in reverse: a read of shared memory that another thread
    # writes without a barrier between them sees different data under the two orders.
    monkeypatch.setenv("AUTOENC_FAST_SPADE_NORM_FUSED", fused)
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_COLS", "4x4" if fused == "1" else "1")
    monkeypatch.setenv("AUTOENC_FAST_CHANNELWISE_FC_PAIRED", fused)
    in_order = run_every_kernel(emu)
    monkeypatch.setenv("AUTOENC_FAST_EMU_SCHEDULE", "reverse")
    reversed_order = run_every_kernel(emu)
    for a, b in zip(in_order, reversed_order):
        assert torch.equal(a, b)


# -------------------------------------------------------------------- the emulator itself

def test_the_emulator_rejects_what_cuda_rejects():
    # A rewrite that cannot be expressed fails loudly instead of emulating something else.
    from cuda_emulation import rewrite, split_top_level

    assert split_top_level("grid, dim3(32, k), 0, stream") == ["grid", "dim3(32, k)", "0", "stream"]
    launched = rewrite("k<T, 2><<<grid, threads>>>(a, b);")
    assert '::emu::launch("k", grid, threads, 0, c10::cuda::CUDAStream{}, [](auto... emu_args) { k<T, 2>(emu_args...); }, a, b);' in launched
    with pytest.raises(ValueError, match="launch configuration"):
        rewrite("k<<<a, b, c, d, e>>>(x);")


def test_every_emulated_kernel_under_address_sanitizer():
    # The CPU side of compute-sanitizer's memcheck: this file's tests again, in a process
    # with AddressSanitizer's runtime preloaded and the emulated kernels built with
    # -fsanitize=address, so a load or store past a tensor's allocation stops the run and
    # names the kernel (the comparisons cannot see a stray read whose value goes unused).
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cuda_emulation import sanitizing

    if sanitizing():
        pytest.skip("this is the sanitized run itself")
    asan, cxx = (subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
                 for name in ("libasan.so", "libstdc++.so.6"))
    if not (os.path.isabs(asan) and os.path.isabs(cxx)):
        pytest.skip("needs AddressSanitizer's runtime (gcc's libasan) and libstdc++, not found")
    # libstdc++ preloaded too: else the sanitizer finds no C++ runtime to forward thrown
    # exceptions (TORCH_CHECK) to, and aborts at the first one.
    env = {**os.environ, "LD_PRELOAD": f"{asan} {cxx}", "ASAN_OPTIONS": "detect_leaks=0"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", __file__,
                           "-k", "not address_sanitizer"], env=env, cwd=Path(__file__).parent, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert " passed" in done.stdout and "ERROR: AddressSanitizer" not in done.stderr, done.stdout

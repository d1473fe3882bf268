"""ContextEncoder and GauGAN in autoenc_fast.models: paper shapes, fused == reference,
the original GauGAN naming (state_dicts load with strict=True both ways and give the
same images), training steps, torch.compile, state_dict round trips, losses and
argument errors. Tiny configurations keep it fast on a CPU; the paper-size shape
checks run once under no_grad."""
from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES
from torch import nn

from autoenc_fast import nn as afnn
from autoenc_fast import reference as R
from autoenc_fast.models import (ContextDiscriminator, ContextEncoder, ConvEncoder, MultiscaleDiscriminator,
                                 SPADEGenerator, SPADEResnetBlock, apply_mask, center_mask,
                                 context_discriminator_loss, context_generator_loss, feature_matching_loss,
                                 gaugan_kl_loss, hinge_discriminator_loss, hinge_generator_loss,
                                 masked_reconstruction_loss, overlap_weights, random_block_mask)

BACKENDS = ["fused", "reference"]
F64 = TOLERANCES[torch.float64]
TINY_CENTER = dict(variant="center128", image_size=32, widths=(4, 8, 8, 16))  # 32 -> 2x2, centre 16
TINY_ALEXNET = dict(variant="alexnet", image_size=67, widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 4, 4))
TINY_GENERATOR = dict(label_nc=3, ngf=4, z_dim=8, crop_size=32, spade_hidden=8)
MODELS = ["center128", "alexnet", "generator"]


def make_model(name: str, backend: str = "fused", dtype=torch.float64, **overrides):
    if name == "generator":
        return SPADEGenerator(**{**TINY_GENERATOR, **overrides}, backend=backend).to(dtype)
    tiny = TINY_CENTER if name == "center128" else TINY_ALEXNET
    return ContextEncoder(**{**tiny, **overrides}, backend=backend).to(dtype)


def one_hot_segmap(batch: int, label_nc: int, height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    labels = torch.randint(0, label_nc, (batch, height, width))
    return F.one_hot(labels, label_nc).permute(0, 3, 1, 2).to(dtype)


def make_inputs(name: str, model, batch: int = 2, dtype=torch.float64) -> tuple:
    """The forward arguments: a masked image, or a segmap and z."""
    if name == "generator":
        h, w = model.output_size
        return one_hot_segmap(batch, model.label_nc, h, w, dtype), torch.randn(batch, model.z_dim, dtype=dtype)
    image = torch.rand(batch, 3, model.image_size, model.image_size, dtype=dtype) * 2 - 1
    return (apply_mask(image, center_mask(model.image_size).to(dtype)),)


def twin(model, name: str, backend: str, **overrides):
    """A model of `backend` with `model`'s weights and buffers, loaded with strict=True."""
    dtype = next(model.parameters()).dtype
    other = make_model(name, backend, dtype, **overrides)
    other.load_state_dict(model.state_dict(), strict=True)
    return other


def warm_up_statistics(model, inputs, steps: int = 2) -> None:
    """Training forwards so batch-norm running statistics and spectral norm's u, v are not their initial values."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(*inputs)


# ---------------------------------------------------------------- shapes from the papers


def test_center128_paper_shapes_and_inpaint():
    model = ContextEncoder("center128").eval()  # 128 x 128 -> 4 x 4 x 512 -> the 64 x 64 centre
    image = torch.rand(2, 3, 128, 128) * 2 - 1
    mask = center_mask(128)
    with torch.no_grad():
        features = model.encoder(apply_mask(image, mask))
        pred = model(apply_mask(image, mask))
        filled = model.inpaint(image, mask)
    assert features.shape == (2, 512, 4, 4)
    assert model.bottleneck.fc.weight.shape == (512, 16, 16)  # channel-wise: 16 positions per map
    assert pred.shape == (2, 3, 64, 64) and pred.abs().max() <= 1  # tanh
    assert mask.sum() == 56 * 56 and mask[0, 0, 36:92, 36:92].all()  # 4-pixel overlap inside the centre
    assert torch.equal(filled[mask.expand_as(image) == 0], image[mask.expand_as(image) == 0])
    torch.testing.assert_close(filled[..., 36:92, 36:92], pred[..., 4:60, 4:60])


def test_alexnet_paper_shapes():
    model = ContextEncoder("alexnet").eval()  # 227 -> 256 x 6 x 6 -> five up-convolutions -> 192
    image = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        features = model.encoder(image)
        pred = model(image)
    assert features.shape == (1, 256, 6, 6)
    assert model.bottleneck.fc.weight.shape == (256, 36, 36) and model.bottleneck.conv.kernel_size == (1, 1)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.decoder) == 5
    assert pred.shape == (1, 3, 192, 192) and model.prediction_size == 192


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_encoder_uses_the_backends_bottleneck(backend):
    expected = afnn.ChannelwiseFCBottleneck if backend == "fused" else R.ChannelwiseFCBottleneck
    assert type(make_model("center128", backend).bottleneck) is expected


def test_gaugan_256_paper_shapes():
    generator = SPADEGenerator(label_nc=3, ngf=2).eval()  # crop 256, z 256, normal: 8 x 8 -> 256 x 256
    encoder = ConvEncoder(ngf=2).eval()
    seg = one_hot_segmap(1, 3, 256, 256, torch.float32)
    with torch.no_grad():
        image = generator(seg)
        mu, logvar = encoder(torch.rand(1, 3, 200, 300))  # resized to 256 first
    assert (generator.sh, generator.sw) == (8, 8) and generator.fc.out_features == 16 * 2 * 8 * 8
    assert image.shape == (1, 3, 256, 256) and image.abs().max() <= 1
    assert mu.shape == logvar.shape == (1, 256)
    assert encoder.depth == 6 and encoder.fc_mu.in_features == 8 * 2 * 4 * 4


@pytest.mark.parametrize("aspect_ratio, layers, size", [(2.0, "normal", (32, 64)), (1.0, "more", (64, 64)),
                                                        (0.5, "most", (256, 128))])
def test_generator_aspect_ratio_and_upsampling_layers(aspect_ratio, layers, size):
    crop = size[1]
    model = SPADEGenerator(3, ngf=2, z_dim=4, crop_size=crop, aspect_ratio=aspect_ratio,
                           num_upsampling_layers=layers, spade_hidden=4)
    seg = one_hot_segmap(2, 3, *size, torch.float32)
    assert model.output_size == size
    assert model(seg).shape == (2, 3, *size)
    assert hasattr(model, "up_4") == (layers == "most")


def test_generator_without_vae_reads_the_segmap_and_draws_z_when_none():
    model = make_model("generator", use_vae=False)
    assert isinstance(model.fc, nn.Conv2d)
    seg, _ = make_inputs("generator", model)
    model.eval()
    torch.testing.assert_close(model(seg), model(seg), rtol=0, atol=0)
    vae = make_model("generator").eval()
    assert not torch.equal(vae(seg), vae(seg))  # z ~ N(0, I) drawn anew


def test_resnet_block_shortcut_only_when_channels_change():
    changing = SPADEResnetBlock(8, 4, 3, spectral_norm=False, spade_hidden=4)
    keeping = SPADEResnetBlock(8, 8, 3, spectral_norm=False, spade_hidden=4)
    assert changing.conv_s.bias is None and changing.conv_0.out_channels == 4
    assert not hasattr(keeping, "conv_s") and not hasattr(keeping, "norm_s")
    assert changing.norm_0.negative_slope == 0.2 and changing.norm_s.negative_slope is None
    assert "weight_orig" in dict(SPADEResnetBlock(8, 4, 3, spade_hidden=4).conv_s.named_parameters())


def test_multiscale_discriminator_returns_features_per_scale():
    model = MultiscaleDiscriminator(5, ndf=4, n_layers=3, num_D=2)
    outputs = model(torch.rand(2, 5, 32, 32))
    assert len(outputs) == 2 and all(len(scale) == 4 for scale in outputs)
    assert outputs[0][-1].shape[1] == 1 and outputs[1][-1].shape[-1] < outputs[0][-1].shape[-1]
    assert list(dict(model.named_children())) == ["discriminator_0", "discriminator_1"]


# ---------------------------------------------------------------- fused == reference


@pytest.mark.parametrize("name", MODELS)
def test_fused_equals_reference_in_eval_with_shared_weights(name):
    fused = make_model(name, "fused")
    inputs = make_inputs(name, fused)
    warm_up_statistics(fused, inputs)
    reference = twin(fused, name, "reference")
    fused.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(*inputs), reference(*inputs), **F64)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", MODELS)
def test_fused_and_reference_gradients_match_in_training(name, layout):
    """Also with the fused model and its inputs in channels_last (the layout the GPU
    check times too) against the reference in the default layout."""
    no_dropout = {} if name == "generator" else dict(dropout=0.0)  # the same network in both
    fused = make_model(name, "fused", **no_dropout)
    reference = twin(fused, name, "reference", **no_dropout)
    inputs = make_inputs(name, fused)
    fused.to(memory_format=layout)
    fused_out = fused(*(t.contiguous(memory_format=layout) if t.dim() == 4 else t for t in inputs))
    assert fused_out.is_contiguous(memory_format=layout)
    fused_out.square().mean().backward()
    reference(*inputs).square().mean().backward()
    for (param, p), q in zip(fused.named_parameters(), reference.parameters()):
        assert p.grad is not None, param
        torch.testing.assert_close(p.grad, q.grad, **F64, msg=param)


# ---------------------------------------------------------------- the original GauGAN naming
# A plain-PyTorch model written for this test from the paper's description and the
# original code's module names: its state_dict must load into ours with strict=True
# (and ours into it), and then give the same images.


class _OriginalStyleSPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, nhidden):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, 3, padding=1)

    def forward(self, x, seg):
        activations = self.mlp_shared(F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(activations)) + self.mlp_beta(activations)


class _OriginalStyleBlock(nn.Module):
    def __init__(self, fin, fout, label_nc, nhidden):
        super().__init__()
        sn = nn.utils.spectral_norm
        middle = min(fin, fout)
        self.conv_0, self.conv_1 = sn(nn.Conv2d(fin, middle, 3, padding=1)), sn(nn.Conv2d(middle, fout, 3, padding=1))
        self.norm_0, self.norm_1 = _OriginalStyleSPADE(fin, label_nc, nhidden), _OriginalStyleSPADE(middle, label_nc, nhidden)
        self.learned = fin != fout
        if self.learned:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = _OriginalStyleSPADE(fin, label_nc, nhidden)

    def forward(self, x, seg):
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        return shortcut + self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))


class _OriginalStyleGenerator(nn.Module):
    def __init__(self, label_nc, ngf, z_dim, sh, sw, nhidden):
        super().__init__()
        self.ngf, self.sh, self.sw = ngf, sh, sw
        self.fc = nn.Linear(z_dim, 16 * ngf * sh * sw)
        widths = {"head_0": (16, 16), "G_middle_0": (16, 16), "G_middle_1": (16, 16), "up_0": (16, 8),
                  "up_1": (8, 4), "up_2": (4, 2), "up_3": (2, 1)}
        for name, (fin, fout) in widths.items():
            self.add_module(name, _OriginalStyleBlock(fin * ngf, fout * ngf, label_nc, nhidden))
        self.conv_img = nn.Conv2d(ngf, 3, 3, padding=1)

    def forward(self, seg, z):
        up = nn.Upsample(scale_factor=2)
        x = self.fc(z).view(-1, 16 * self.ngf, self.sh, self.sw)
        x = up(self.head_0(x, seg))
        x = self.G_middle_1(self.G_middle_0(x, seg), seg)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class _OriginalStyleEncoder(nn.Module):
    def __init__(self, ndf, z_dim):
        super().__init__()
        widths = [3, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf]
        for i in range(6):
            conv = nn.utils.spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
            del conv.bias  # as the original's get_nonspade_norm_layer does before a norm layer
            conv.register_parameter("bias", None)
            self.add_module(f"layer{i + 1}", nn.Sequential(conv, nn.InstanceNorm2d(widths[i + 1], affine=False)))
        self.fc_mu = nn.Linear(8 * ndf * 16, z_dim)
        self.fc_var = nn.Linear(8 * ndf * 16, z_dim)

    def forward(self, x):
        x = F.interpolate(x, size=(256, 256), mode="bilinear")
        for i in range(1, 7):
            x = F.leaky_relu(getattr(self, f"layer{i}")(x), 0.2)
        return self.fc_mu(x.flatten(1)), self.fc_var(x.flatten(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_original_generator_state_dict_loads_strictly_both_ways(backend):
    original = _OriginalStyleGenerator(3, ngf=2, z_dim=8, sh=1, sw=1, nhidden=4).double()
    ours = SPADEGenerator(3, ngf=2, z_dim=8, crop_size=32, spade_hidden=4, backend=backend).double()
    seg, z = one_hot_segmap(2, 3, 32, 32), torch.randn(2, 8, dtype=torch.float64)
    warm_up_statistics(original, (seg, z))
    ours.load_state_dict(original.state_dict(), strict=True)
    original.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(seg, z), original(seg, z), **F64)
    warm_up_statistics(ours, (seg, z))
    original.load_state_dict(ours.state_dict(), strict=True)
    original.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(original(seg, z), ours(seg, z), **F64)


def test_original_encoder_state_dict_loads_strictly_both_ways():
    original = _OriginalStyleEncoder(ndf=2, z_dim=8).double()
    ours = ConvEncoder(ngf=2, z_dim=8).double()
    image = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    warm_up_statistics(original, (image,))
    ours.load_state_dict(original.state_dict(), strict=True)
    original.eval(), ours.eval()
    with torch.no_grad():
        for a, b in zip(ours(image), original(image)):
            torch.testing.assert_close(a, b, **F64)
    original.load_state_dict(ours.state_dict(), strict=True)


def test_encoder_state_dicts_from_before_the_bias_removal_still_load():
    # The convolutions before instance norm had biases until 2026-11-28 (the original has
    # none); a state dict that has them loads, and they change nothing.
    ours = ConvEncoder(ngf=2, z_dim=8, input_size=32).double()
    old = ours.state_dict() | {f"layer{i}.0.bias": torch.randn(w, dtype=torch.float64)
                               for i, w in zip(range(1, 4), (2, 4, 8))}
    ours.load_state_dict(old, strict=True)
    assert not any(name.endswith("0.bias") for name in ours.state_dict())


# ---------------------------------------------------------------- one optimizer step


def _seeded(seed, fn):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_encoder_step_lowers_both_losses(backend):
    model = make_model("center128", backend, torch.float32)
    disc = ContextDiscriminator(3, model.prediction_size, widths=(8, 16))
    image = torch.rand(4, 3, 32, 32) * 2 - 1
    mask = center_mask(32)
    target, weights = model.reconstruction_target(image, mask)
    seed = int(torch.randint(0, 2**31, ()))  # the same dropout before and after the step

    def generator_loss():
        return context_generator_loss(model(apply_mask(image, mask)), target, weights, disc(model(
            apply_mask(image, mask))))[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _seeded(seed, generator_loss)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert _seeded(seed, generator_loss) < before

    fake = model(apply_mask(image, mask)).detach()
    d_optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    d_before = context_discriminator_loss(disc(target), disc(fake))
    d_before.backward()
    d_optimizer.step()
    with torch.no_grad():
        assert context_discriminator_loss(disc(target), disc(fake)) < d_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaugan_step_lowers_generator_and_discriminator_losses(backend):
    generator = make_model("generator", backend, torch.float32)
    encoder = ConvEncoder(ngf=2, z_dim=8, input_size=32)
    reparametrize = (afnn if backend == "fused" else R).Reparametrize()
    disc = MultiscaleDiscriminator(6, ndf=4, n_layers=3)
    seg, _ = make_inputs("generator", generator, 4, torch.float32)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    eps = torch.randn(4, 8)

    def generator_loss():
        mu, logvar = encoder(real)
        z, kl = reparametrize(mu, logvar, eps=eps)
        fake = generator(seg, z)
        pred_fake, pred_real = disc(torch.cat([seg, fake], 1)), disc(torch.cat([seg, real], 1))
        return hinge_generator_loss(pred_fake) + feature_matching_loss(pred_fake, pred_real) + gaugan_kl_loss(kl)
    params = list(generator.parameters()) + list(encoder.parameters())
    assert_steps_lower(generator_loss, torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.9)))

    with torch.no_grad():
        fake = generator(seg, torch.randn(4, 8))
    d_optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.0, 0.9))
    d_loss = lambda: hinge_discriminator_loss(disc(torch.cat([seg, real], 1)), disc(torch.cat([seg, fake], 1)))  # noqa: E731
    assert_steps_lower(d_loss, d_optimizer)


def assert_steps_lower(loss_fn, optimizer, steps: int = 5):
    """A few optimizer steps on a fixed batch lower the loss. One step at a small rate
    is not enough here: spectral norm's power iteration and batch statistics move the
    loss between two forwards by as much as one step does (a flaky test, seen here)."""
    with torch.no_grad():
        for _ in range(3):  # let spectral norm's power iteration settle
            loss_fn()
        before = loss_fn().item()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_fn().item()
    assert after < before, (before, after)


# ---------------------------------------------------------------- torch.compile


def _all_models():
    return {
        "center128": lambda: make_model("center128"),
        "alexnet": lambda: make_model("alexnet"),
        "generator": lambda: make_model("generator"),
        "context_discriminator": lambda: ContextDiscriminator(3, 16, widths=(4, 8)).double(),
        "encoder": lambda: ConvEncoder(ngf=2, z_dim=4, input_size=16).double(),
        "multiscale_discriminator": lambda: MultiscaleDiscriminator(4, ndf=2, n_layers=2).double(),
    }


def _inputs_for(name, model):
    if name in MODELS:
        return make_inputs(name, model)
    return (torch.rand(2, 4 if name == "multiscale_discriminator" else 3, 16, 16, dtype=torch.float64),)


def _flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


@pytest.mark.parametrize("name", list(_all_models()))
def test_models_run_under_torch_compile(name):
    torch._dynamo.reset()
    model = _all_models()[name]()
    inputs = _inputs_for(name, model)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    torch.manual_seed(0)
    ours = _flat(compiled(*inputs))
    torch.manual_seed(0)
    theirs = _flat(eager(*inputs))
    for a, b in zip(ours, theirs):  # training mode: batch statistics, power iteration, dropout
        torch.testing.assert_close(a, b, **F64)
    sum(t.sum() for t in ours).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval(), eager.eval()
    with torch.no_grad():
        for a, b in zip(_flat(compiled(*inputs)), _flat(eager(*inputs))):
            torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("name", MODELS)
def test_fused_models_export_with_our_ops_in_the_graph(name):
    """torch.export (deployment) of each fused model in eval mode: the exported program
    calls our custom ops (their fake kernels trace it, no fallback to the reference) and
    gives the eager outputs."""
    model = make_model(name)
    inputs = make_inputs(name, model)
    warm_up_statistics(model, inputs)
    model.eval()
    program = torch.export.export(model, inputs)
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    expected = "autoenc_fast.spade_norm" if name == "generator" else "autoenc_fast.channelwise_fc"
    assert any(target.startswith(expected) for target in called), sorted(called)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*inputs), model(*inputs), **F64)


# ---------------------------------------------------------------- state_dict


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(_all_models()))
def test_state_dict_round_trip(name, backend):
    build = (lambda: make_model(name, backend)) if name in MODELS else _all_models()[name]
    model = build()
    inputs = _inputs_for(name, model)
    warm_up_statistics(model, inputs)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = build()
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    model.eval(), restored.eval()
    with torch.no_grad():
        for a, b in zip(_flat(restored(*inputs)), _flat(model(*inputs))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- masks and losses


def test_masks_and_weights():
    mask = center_mask(32, overlap=2)
    assert mask.sum() == 12 * 12 and mask[0, 0, 10:22, 10:22].all()
    weights = overlap_weights(16, 4)
    assert weights[0, 0, 4:12, 4:12].eq(1).all() and weights.sum() == 64 + 10 * (256 - 64)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    blocks = random_block_mask(5, 40, coverage=0.25, generator=gen)
    assert blocks.shape == (5, 1, 40, 40)
    assert ((blocks == 0) | (blocks == 1)).all() and (blocks.mean((1, 2, 3)) >= 0.25).all()
    image = torch.rand(5, 3, 40, 40)
    masked = apply_mask(image, blocks, fill=0.5)
    assert torch.equal(masked[blocks.expand_as(image) == 1], torch.full_like(masked[blocks.expand_as(image) == 1], 0.5))


def test_context_losses_as_documented():
    pred, target = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    weights = overlap_weights(16, 4)
    expected_rec = (weights * (pred - target) ** 2).sum() / pred.numel()
    torch.testing.assert_close(masked_reconstruction_loss(pred, target, weights), expected_rec)
    logits = torch.randn(3)
    loss, rec, adv = context_generator_loss(pred, target, weights, logits)
    torch.testing.assert_close(adv, -F.logsigmoid(logits).mean())
    torch.testing.assert_close(loss, 0.999 * expected_rec + 0.001 * adv)
    real = torch.randn(3)
    torch.testing.assert_close(context_discriminator_loss(real, logits),
                               -F.logsigmoid(real).mean() - F.logsigmoid(-logits).mean())


def test_gaugan_losses_as_documented():
    real = [[torch.randn(2, 4, 5, 5), torch.randn(2, 1, 3, 3)], [torch.randn(2, 4, 3, 3), torch.randn(2, 1, 2, 2)]]
    fake = [[torch.randn_like(t) for t in scale] for scale in real]
    d = sum(torch.clamp(1 - r[-1], min=0).mean() + torch.clamp(1 + f[-1], min=0).mean()
            for r, f in zip(real, fake)) / 2
    torch.testing.assert_close(hinge_discriminator_loss(real, fake), d)
    torch.testing.assert_close(hinge_generator_loss(fake), -(fake[0][-1].mean() + fake[1][-1].mean()) / 2)
    fm = 10 * ((fake[0][0] - real[0][0]).abs().mean() + (fake[1][0] - real[1][0]).abs().mean()) / 2
    torch.testing.assert_close(feature_matching_loss(fake, real), fm)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    _, kl = R.Reparametrize()(mu, logvar)
    torch.testing.assert_close(gaugan_kl_loss(kl), -0.5 * 0.05 * (1 + logvar - mu**2 - logvar.exp()).sum(),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize("build, argument", [
    (lambda: ContextEncoder("vgg"), "variant"),
    (lambda: ContextEncoder(backend="triton"), "backend"),
    (lambda: ContextEncoder(image_size=100), "image_size"),
    (lambda: ContextEncoder(widths=(64, 0)), "widths"),
    (lambda: ContextEncoder("alexnet", image_size=50), "image_size"),
    (lambda: ContextEncoder("alexnet", decoder_widths=(8, 8)), "decoder_widths"),
    (lambda: ContextEncoder(decoder_widths=(8, 8, 8, 8)), "decoder_widths"),
    (lambda: ContextEncoder(output_activation="relu"), "output_activation"),
    (lambda: ContextEncoder(dropout=1.5), "dropout"),
    (lambda: ContextDiscriminator(region_size=40), "region_size"),
    (lambda: center_mask(32, overlap=8), "overlap"),
    (lambda: random_block_mask(2, 32, coverage=1.0), "coverage"),
    (lambda: SPADEGenerator(0), "label_nc"),
    (lambda: SPADEGenerator(3, crop_size=100), "crop_size"),
    (lambda: SPADEGenerator(3, crop_size=32, aspect_ratio=4.0), "aspect_ratio"),
    (lambda: SPADEGenerator(3, aspect_ratio=-1), "aspect_ratio"),
    (lambda: SPADEGenerator(3, num_upsampling_layers="many"), "num_upsampling_layers"),
    (lambda: SPADEGenerator(3, norm="group"), "norm"),
    (lambda: SPADEGenerator(3, backend="cuda"), "backend"),
    (lambda: SPADEResnetBlock(4, 0, 3), "fout"),
    (lambda: ConvEncoder(input_size=100), "input_size"),
    (lambda: ConvEncoder(ngf=0), "ngf"),
    (lambda: MultiscaleDiscriminator(6, num_D=0), "num_D"),
])
def test_bad_arguments_name_the_argument(build, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        build()


GENERATOR_BAD_CALLS = [  # (use_vae, call, argument, expected): z is read only with the VAE
    *[(use_vae, call, "segmap", expected) for use_vae in (True, False) for call, expected in (
        (lambda g: g(torch.rand(2, 5, 32, 32)), "must have shape (B, 4, H, W); got (2, 5, 32, 32)"),
        (lambda g: g(torch.rand(2, 4, 32)), "got (2, 4, 32)"))],
    (True, lambda g: g(torch.rand(2, 4, 32, 32), torch.randn(3, 8)), "z", "must have shape (2, 8); got (3, 8)"),
    (True, lambda g: g(torch.rand(2, 4, 32, 32), torch.randn(2, 7)), "z", "got (2, 7)"),
    (False, lambda g: g(torch.rand(2, 4, 32, 32), torch.randn(2, 8)), "z", "only read with use_vae=True"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_vae, call, argument, expected", GENERATOR_BAD_CALLS)
def test_generator_call_with_bad_inputs_names_them(backend, use_vae, call, argument, expected):
    generator = SPADEGenerator(4, ngf=4, z_dim=8, crop_size=32, spade_hidden=8, use_vae=use_vae, backend=backend)
    with pytest.raises(ValueError, match=f"SPADEGenerator: `{argument}`.*{re.escape(expected)}"):
        call(generator)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("segmap_shape", [(3, 4, 8, 8), (2, 5, 8, 8), (2, 4, 8)])
def test_spade_names_a_segmap_that_does_not_fit_x(backend, segmap_shape):
    spade = (afnn.SPADE if backend == "fused" else R.SPADE)(3, 4, hidden=8)
    with pytest.raises(ValueError, match=r"SPADE: `segmap` must have shape .* \(2, 4, h, w\); got"):
        spade(torch.randn(2, 3, 8, 8), torch.rand(segmap_shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape", [(2, 4, 8, 8), (2, 3, 8)])
def test_spade_names_an_x_of_another_shape(backend, x_shape):
    spade = (afnn.SPADE if backend == "fused" else R.SPADE)(3, 4, hidden=8)
    with pytest.raises(ValueError, match=r"SPADE: `x` must have shape \(B, 3, H, W\); got"):
        spade(torch.randn(x_shape), torch.rand(2, 4, 8, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_spade_names_an_integer_segmap(backend):
    spade = (afnn.SPADE if backend == "fused" else R.SPADE)(3, 4, hidden=8)
    with pytest.raises(TypeError, match="SPADE: `segmap` must be a floating-point tensor.*got torch.int64"):
        spade(torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 4, 8, 8)))


@pytest.mark.parametrize("call, message", [
    (lambda: ContextDiscriminator(region_size=32, widths=(8, 16))(torch.rand(2, 3, 16, 16)),
     r"ContextDiscriminator: `region` must have shape \(B, 3, 32, 32\); got \(2, 3, 16, 16\)"),
    (lambda: ConvEncoder(ngf=4, z_dim=8, input_size=32)(torch.rand(2, 1, 32, 32)),
     r"ConvEncoder: `image` must have shape \(B, 3, H, W\); got \(2, 1, 32, 32\)"),
])
def test_discriminator_and_encoder_name_an_input_of_another_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: hinge_discriminator_loss([], []), "hinge_discriminator_loss: `real` must be a non-empty list"),
    (lambda: hinge_generator_loss([]), "hinge_generator_loss: `fake` must be a non-empty list"),
    (lambda: feature_matching_loss([[torch.rand(2, 3), torch.rand(2)]], [[torch.rand(2, 3), torch.rand(2)]] * 2),
     "feature_matching_loss: the outputs must have one count of scales; got `fake` 1, `real` 2"),
    (lambda: masked_reconstruction_loss(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.ones(4, 4)),
     r"masked_reconstruction_loss: `weights` \(4, 4\) must broadcast to `pred`'s shape \(2, 3, 8, 8\)"),
    (lambda: apply_mask(torch.rand(2, 3, 8, 8), torch.ones(4, 4)),
     r"apply_mask: `mask` \(4, 4\) must broadcast to `image`'s shape"),
])
def test_losses_and_masks_name_inputs_that_do_not_fit(call, message):
    """An empty list divided by zero; a scale missing from one side was dropped by zip; a
    mask of another size failed inside the arithmetic without naming it."""
    with pytest.raises(ValueError, match=message):
        call()

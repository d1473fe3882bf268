"""autoenc_fast.models: paper shapes, fused == reference, training, torch.compile,
state_dict round trips, losses and argument errors. Tiny configurations keep it fast
on a CPU, except one no-grad shape check at AlexNet's size."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES

from autoenc_fast import nn as afnn
from autoenc_fast import reference as R
from autoenc_fast.models import (VAE, ContextEncoder, ConvAutoencoder, VAEOutput, alexnet_feature_sizes, beta_warmup,
                                 mse_reconstruction_loss, vae_loss)
from autoenc_fast.models._backend import block_class

TINY_CAE = dict(in_channels=3, image_size=67, latent_dim=32, widths=(8, 16, 16, 16, 16))
TINY_VAE = dict(in_channels=3, image_size=32, latent_dim=16, widths=(8, 16, 32))
FAMILIES = ["conv_autoencoder", "vae"]
BACKENDS = ["fused", "reference"]
F64 = TOLERANCES[torch.float64]


def make_model(family: str, backend: str, dtype=torch.float32, **overrides):
    if family == "conv_autoencoder":
        return ConvAutoencoder(**{**TINY_CAE, **overrides}, backend=backend).to(dtype)
    return VAE(**{**TINY_VAE, **overrides}, backend=backend).to(dtype)


def make_batch(model, batch=3, dtype=torch.float32):
    """Images in [0, 1], the targets of both output activations' default."""
    return torch.rand(batch, model.in_channels, model.image_size, model.image_size, dtype=dtype)


def loss_of(model, x, eps=None):
    """The family's loss on one batch; the VAE's with the given noise."""
    if isinstance(model, VAE):
        return vae_loss(model(x, eps=eps), x).loss
    return mse_reconstruction_loss(model(x), x)


def make_eps(model, x):
    return torch.randn(x.shape[0], model.latent_dim, dtype=x.dtype)


def twin(model, backend: str):
    """A model of the other backend with `model`'s weights, loaded with strict=True."""
    kwargs = dict(in_channels=model.in_channels, image_size=model.image_size,
                  latent_dim=model.latent_dim, widths=model.widths)
    other = type(model)(**kwargs, backend=backend).to(next(model.parameters()).dtype)
    other.load_state_dict(model.state_dict(), strict=True)
    return other


# ---------------------------------------------------------------- shapes


def test_conv_autoencoder_alexnet_paper_shapes():
    model = ConvAutoencoder().eval()  # 227 x 227, AlexNet widths, latent 2,304
    assert alexnet_feature_sizes(227) == {"conv1": 55, "pool1": 27, "pool2": 13, "pool3": 6}
    assert model.to_latent.weight.shape == (2304, 9216)  # 256 * 6 * 6 -> 2,304: 4:1
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        features = model.encoder(x)
        z = model.encode(x)
        recon = model.decode(z)
    assert features.shape == (1, 256, 6, 6)
    assert z.shape == (1, 2304)
    assert recon.shape == x.shape
    assert 0 <= recon.min() and recon.max() <= 1  # sigmoid output


@pytest.mark.parametrize("image_size", [67, 100, 131])
def test_conv_autoencoder_reconstructs_any_image_size_exactly(image_size):
    model = ConvAutoencoder(in_channels=2, image_size=image_size, latent_dim=8, widths=(4, 4, 4, 4, 4))
    x = torch.rand(2, 2, image_size, image_size)
    assert model(x).shape == x.shape
    side = alexnet_feature_sizes(image_size)["pool3"]
    assert model.encoder(x).shape == (2, 4, side, side)


def test_conv_autoencoder_output_activation_none_is_linear():
    model = make_model("conv_autoencoder", "fused", output_activation="none")
    with torch.no_grad():
        z = torch.randn(2, model.latent_dim)
        recon = model.decode(z)
        torch.testing.assert_close(recon, model.decoder(torch.relu(model.from_latent(z)).view(2, 16, 1, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_output_fields_and_shapes(backend):
    model = VAE(backend=backend)  # the default 64 x 64, latent 128
    x = torch.rand(4, 3, 64, 64)
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == out.logits.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (4, 128)
    assert out.kl.shape == (4,)
    torch.testing.assert_close(out.recon, torch.sigmoid(out.logits))
    expected_kl = -0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp()).sum(dim=1)
    torch.testing.assert_close(out.kl, expected_kl, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out.z, out.mu)  # training mode samples
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)  # eval mode: z = mu


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_uses_the_given_eps_in_training(backend):
    model = make_model("vae", backend, torch.float64)
    x = make_batch(model, dtype=torch.float64)
    eps = make_eps(model, x)
    out = model(x, eps=eps)
    torch.testing.assert_close(out.z, out.mu + (0.5 * out.logvar).exp() * eps, **F64)


def test_vae_uses_the_backends_reparametrize():
    assert type(make_model("vae", "fused").reparametrize) is afnn.Reparametrize
    assert type(make_model("vae", "reference").reparametrize) is R.Reparametrize


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_sample_shape_and_generator(backend):
    model = make_model("vae", backend)
    with torch.no_grad():
        a = model.sample(5, generator=torch.Generator().manual_seed(7))
        b = model.sample(5, generator=torch.Generator().manual_seed(7))
        c = model.sample(5, generator=torch.Generator().manual_seed(8))
    assert a.shape == (5, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # sample decodes z ~ N(0, I) drawn from the generator
    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(a, model.decode(z))


# ---------------------------------------------------------------- fused == reference


@pytest.mark.parametrize("family", FAMILIES)
def test_backends_share_parameter_names(family):
    fused, reference = make_model(family, "fused"), make_model(family, "reference")
    assert list(fused.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_equals_reference_in_eval_with_shared_weights(family):
    fused = make_model(family, "fused", torch.float64).eval()
    reference = twin(fused, "reference").eval()
    x = make_batch(fused, dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = fused(x), reference(x)
    if family == "vae":
        for name in VAEOutput._fields:
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), **F64, msg=name)
    else:
        torch.testing.assert_close(ours, theirs, **F64)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_reference_gradients_match_with_the_same_noise(family):
    fused = make_model(family, "fused", torch.float64)
    reference = twin(fused, "reference")
    x = make_batch(fused, dtype=torch.float64)
    eps = make_eps(fused, x)
    loss_of(fused, x, eps).backward()
    loss_of(reference, x, eps).backward()
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, **F64, msg=name)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_one_optimizer_step_lowers_the_loss(family, backend):
    model = make_model(family, backend)
    x = make_batch(model)
    eps = make_eps(model, x)  # the same noise before and after the step
    # Adam's first step moves every parameter by about lr: at lr 1e-3 it overshot on 2 of
    # 400 random inits of the tiny conv autoencoder (loss up by 3e-5 and 2e-4 relative), at 1e-4 on
    # none (smallest drop 4e-6 relative, far above float32 rounding of the loss).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = loss_of(model, x, eps)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_of(model, x, eps)
    assert after < before


# ---------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_models_run_under_torch_compile_fullgraph(family, backend):
    torch._dynamo.reset()
    model = make_model(family, backend, torch.float64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = make_batch(model, dtype=torch.float64)
    eps = make_eps(model, x)
    kwargs = dict(eps=eps) if family == "vae" else {}
    # training: forward and backward through the compiled graph, same grads as eager
    out = compiled(x, **kwargs)
    loss = vae_loss(out, x).loss if family == "vae" else mse_reconstruction_loss(out, x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    eager_grads = torch.autograd.grad(loss_of(model, x, eps), list(model.parameters()))
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, **F64)
    # eval: the compiled model gives the eager outputs
    model.eval()
    with torch.no_grad():
        ours, eager = compiled(x), model(x)
    torch.testing.assert_close(ours, eager, **F64)


def test_fused_vae_exports_with_our_op_in_the_graph():
    """torch.export of the fused VAE in eval mode calls autoenc_fast::reparametrize_kl
    (for the KL; z = mu) and gives the eager outputs."""
    model = make_model("vae", "fused", torch.float64).eval()
    x = make_batch(model, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "autoenc_fast.reparametrize_kl.default" in called, sorted(called)
    with torch.no_grad():
        ours, eager = program.module()(x), model(x)
    for field in ("recon", "mu", "logvar", "z", "kl"):
        torch.testing.assert_close(getattr(ours, field), getattr(eager, field), **F64, msg=field)


def test_vae_compiled_training_draws_fresh_noise():
    torch._dynamo.reset()
    model = make_model("vae", "fused")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = make_batch(model)
    assert not torch.equal(compiled(x).z, compiled(x).z)


# ---------------------------------------------------------------- state_dict


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip(family, backend):
    model = make_model(family, backend).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = make_model(family, backend).eval()
    x = make_batch(model)
    with torch.no_grad():
        assert not torch.equal(torch.as_tensor(restored(x)[0]), torch.as_tensor(model(x)[0]))
        restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------- losses


def test_mse_reconstruction_loss_reductions():
    recon, x = torch.rand(4, 3, 5, 5), torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(mse_reconstruction_loss(recon, x), F.mse_loss(recon, x))
    per_sample = ((recon - x) ** 2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(mse_reconstruction_loss(recon, x, reduction="sum_mean"), per_sample.mean())


def _vae_output(batch=4, latent=6, size=8):
    logits = torch.randn(batch, 3, size, size)
    mu, logvar = torch.randn(batch, latent), torch.randn(batch, latent)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
    return VAEOutput(torch.sigmoid(logits), mu, logvar, mu, kl, logits)


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_vae_loss_reductions_as_documented(recon):
    out = _vae_output()
    x = torch.rand_like(out.recon)
    beta = float(torch.rand(()) * 3)
    err = (out.recon - x) ** 2 if recon == "mse" else F.binary_cross_entropy(out.recon, x, reduction="none")
    kl_terms = -0.5 * (1 + out.logvar - out.mu**2 - out.logvar.exp())  # (B, D)
    batch = x.shape[0]
    expected = {
        "sum_mean": (err.sum() / batch, kl_terms.sum() / batch),
        "gaugan": (err.mean(), 0.05 * kl_terms.sum()),
        "mean": (err.mean(), kl_terms.mean()),
    }
    for reduction, (rec, kl) in expected.items():
        got = vae_loss(out, x, recon=recon, reduction=reduction, beta=beta)
        torch.testing.assert_close(got.recon, rec, atol=1e-5, rtol=1e-5, msg=reduction)
        torch.testing.assert_close(got.kl, kl, atol=1e-5, rtol=1e-5, msg=reduction)
        torch.testing.assert_close(got.loss, rec + beta * kl, atol=1e-5, rtol=1e-5, msg=reduction)


def test_beta_warmup_is_linear_then_constant():
    beta = float(torch.rand(()) * 4 + 0.5)
    assert beta_warmup(0, 100, beta) == 0.0
    assert beta_warmup(25, 100, beta) == pytest.approx(beta / 4)
    assert beta_warmup(100, 100, beta) == pytest.approx(beta)
    assert beta_warmup(1000, 100, beta) == pytest.approx(beta)
    assert beta_warmup(0, 0, beta) == pytest.approx(beta)
    assert beta_warmup(3, 7) == pytest.approx(3 / 7)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize("cls, kwargs, argument", [
    (ConvAutoencoder, dict(image_size=66), "image_size"),
    (ConvAutoencoder, dict(image_size=0), "image_size"),
    (ConvAutoencoder, dict(backend="triton"), "backend"),
    (ConvAutoencoder, dict(widths=(96, 256, 384)), "widths"),
    (ConvAutoencoder, dict(widths=(96, 256, 0, 384, 256)), "widths"),
    (ConvAutoencoder, dict(latent_dim=0), "latent_dim"),
    (ConvAutoencoder, dict(in_channels=2.0), "in_channels"),
    (ConvAutoencoder, dict(output_activation="tanh"), "output_activation"),
    (ConvAutoencoder, dict(upsample_mode="bicubic"), "upsample_mode"),
    (VAE, dict(image_size=60), "image_size"),
    (VAE, dict(backend="Fused"), "backend"),
    (VAE, dict(latent_dim=-1), "latent_dim"),
    (VAE, dict(widths=()), "widths"),
    (VAE, dict(widths="abc"), "widths"),
    (VAE, dict(output_activation="relu"), "output_activation"),
])
def test_bad_constructor_arguments_name_the_argument(cls, kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        cls(**kwargs)


def test_bad_loss_and_sample_arguments_name_the_argument():
    out = _vae_output()
    x = torch.rand_like(out.recon)
    with pytest.raises(ValueError, match="`reduction`"):
        vae_loss(out, x, reduction="sum")
    with pytest.raises(ValueError, match="`recon`"):
        vae_loss(out, x, recon="l1")
    with pytest.raises(ValueError, match="`beta`"):
        vae_loss(out, x, beta=-1.0)
    with pytest.raises(ValueError, match="`x`"):
        vae_loss(out, x[:, :1])
    with pytest.raises(ValueError, match="`reduction`"):
        mse_reconstruction_loss(x, x, reduction="none")
    with pytest.raises(ValueError, match="`warmup_steps`"):
        beta_warmup(1, -5)
    with pytest.raises(ValueError, match="`step`"):
        beta_warmup(-1, 5)
    with pytest.raises(ValueError, match="`n`"):
        make_model("vae", "fused").sample(0)


def test_block_class_resolves_backends_and_names_what_is_missing():
    assert block_class("Reparametrize", "fused") is afnn.Reparametrize
    assert block_class("Reparametrize", "reference") is R.Reparametrize
    with pytest.raises(LookupError, match="NoSuchBlock"):
        block_class("NoSuchBlock", "fused")


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_gpu_check_script(name: str, *args) -> str:
    """Runs benchmarks/<name> (a script of the GPU check) in a subprocess; its stdout. The
    check runs them only on a GPU machine, where a broken script costs a scarce session,
    so the suite smoke-runs their CPU modes."""
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], check=True, timeout=300,
                          capture_output=True, text=True).stdout


def test_gpu_model_profile_groups_our_ops_apart(tmp_path):
    # The smallest VAE: our op is grouped apart from the aten ones.
    out = tmp_path / "profile.json"
    run_gpu_check_script("gpu_model_profile.py", "--family", "vae", "--device", "cpu", "--size", "quick", "--json", out)
    result = json.loads(out.read_text())
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_model_profile import group_of
    finally:
        sys.path.remove(str(BENCHMARKS))
    ours = {p: [name for name in result[p] if group_of(name) == "autoenc_fast ops"] for p in ("fused", "reference")}
    assert "autoenc_fast::reparametrize_kl" in ours["fused"] and ours["reference"] == []
    assert group_of("aten::convolution_backward") == "convolution / matmul"
    assert all(sum(result[p].values()) > 0 for p in ("fused", "reference"))


def test_gpu_model_profile_runs_the_gaugan_layout_variants(tmp_path):
    # The GPU check profiles the GauGAN generator in five variants; smoke-run them all.
    out = tmp_path / "gaugan_profile.json"
    run_gpu_check_script("gpu_model_profile.py", "--device", "cpu", "--size", "quick", "--json", out)
    result = json.loads(out.read_text())
    variants = ("fused", "fused seg-conv", "reference", "fused channels_last", "reference channels_last")
    assert all(sum(result[v].values()) > 0 for v in variants)
    assert all(any("spade_norm" in name for name in result[v]) for v in variants if v.startswith("fused"))
    summary = run_gpu_check_script("gpu_summary.py", tmp_path)
    assert all(f"  {variant} " in summary for variant in variants), summary


def test_gpu_kernel_times_runs_every_op_and_channelwise_baselines(tmp_path):
    # Its CPU mode takes the same code path (channelwise_fc's second dtype is float64 here,
    # bfloat16 on CUDA).
    out = tmp_path / "kernel_times.json"
    run_gpu_check_script("gpu_kernel_times.py", "--device", "cpu", "--quick", "--json", out)
    rows = json.loads(out.read_text())
    assert {row["op"] for row in rows} == {"reparametrize_kl", "channelwise_fc", "spade_norm"}
    (cfc,) = [row for row in rows if row["op"] == "channelwise_fc"]
    for key in ("ours_device_ms", "eager_device_ms", "bmm_device_ms", "float64_ours_device_ms", "float64_bmm_device_ms",
                "ours_cols4_device_ms", "float64_ours_cols2_device_ms"):
        assert cfc[key] > 0, key
    (spade,) = [row for row in rows if row["op"] == "spade_norm"]
    assert spade["ours_split_device_ms"] > 0 and spade["ours_per_group_device_ms"] > 0
    # The check's short table reads this file back (the others are absent here, and named).
    summary = run_gpu_check_script("gpu_summary.py", tmp_path)
    assert "channelwise_fc   16x256x6x6 float64" in summary and "bmm " in summary
    assert "(gaugan_profile.json: not written)" in summary


def test_gpu_summary_prints_bench_rows_with_peak_memory(tmp_path):
    # The bench rows of the short table, from a made-up CUDA row (no CPU run has peaks).
    row = {"op": "step:gaugan_generator", "shape": [4], "mode": "train bf16", "ours_ms": 40.0, "eager_ms": 50.0,
           "compiled_ms": 45.0, "ours_peak_mib": 900.4, "eager_peak_mib": 1200.0}
    (tmp_path / "bench_bf16.json").write_text(json.dumps([row]))
    summary = run_gpu_check_script("gpu_summary.py", tmp_path)
    line = next(line for line in summary.splitlines() if "step:gaugan_generator" in line)
    assert "40.000 |  1.25x |  1.12x | 900/1200" in line, line


STUB_PYTHON = """#!/bin/bash
# Stands in for the GPU machine's python3: builds nothing, writes [] to every --json file.
case "$*" in
  "-m pytest"*) echo "tests ran"; exit "${STUB_TESTS_RC:-0}";;
  "-m pip"*) echo "autoenc_fast setup: stub"; exit 0;;
esac
previous=""
for arg in "$@"; do [ "$previous" = "--json" ] && echo '[]' > "$arg"; previous="$arg"; done
echo "stub python: $*"
"""


def run_gpu_check_with_stubs(tmp_path, sanitizer_output: str, sanitizer_rc: int, tests_rc: int = 0):
    """gpu_check.sh with nvidia-smi, compute-sanitizer and python3 stubbed: the shell's own
    plumbing (what lands in $OUT, what counts as a failure) runs here, not only on a GPU."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir(parents=True)
    out.mkdir()
    stubs = {"nvidia-smi": "echo 'stub GPU'", "compute-sanitizer": f"echo '{sanitizer_output}'; exit {sanitizer_rc}",
             "python3": STUB_PYTHON}
    for name, body in stubs.items():
        (bin_dir / name).write_text(body if body.startswith("#!") else f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "PYTHON": str(bin_dir / "python3"),
           "STUB_TESTS_RC": str(tests_rc)}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    return done, out


def test_gpu_check_brings_back_at_most_eight_files_and_every_log(tmp_path):
    # The device tool returns at most 8 files from $OUT and the last 12,000 characters of output.
    done, out = run_gpu_check_with_stubs(tmp_path, "========= ERROR SUMMARY: 0 errors", 0)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(path.name for path in out.iterdir())
    assert len(names) <= 8, names
    assert {"check.txt", "summary.txt", "logs.tar.gz", "kernel_times.json", "bench.json"} <= set(names), names
    with tarfile.open(out / "logs.tar.gz") as archive:
        logs = {Path(name).name for name in archive.getnames()}
    assert {"build.log", "sanitizer_memcheck.log", "sanitizer_racecheck.log", "tests.log"} <= logs, logs
    assert "== summary" in (out / "check.txt").read_text() and "all passed" in done.stdout


def test_gpu_check_reports_a_refused_sanitizer_apart_from_failures(tmp_path):
    # gVisor machines refuse compute-sanitizer: said so, racecheck skipped, not a kernel failure.
    done, _ = run_gpu_check_with_stubs(tmp_path, "========= Error: Device not supported", 9)
    assert done.returncode == 0 and "device was refused" in done.stdout and "racecheck skipped" in done.stdout
    # A sanitizer stopped at its time limit: incomplete, said so, not a failure...
    done, _ = run_gpu_check_with_stubs(tmp_path / "slow", "========= COMPUTE-SANITIZER", 124)
    assert done.returncode == 0 and "stopped at their time limits: memcheck" in done.stdout, done.stdout
    # ...unless it had reported an error before it was stopped.
    done, _ = run_gpu_check_with_stubs(tmp_path / "slow-bad", "========= Invalid __global__ read of size 4", 124)
    assert done.returncode != 0 and "FAILED: memcheck" in done.stdout, done.stdout
    # A real failure still fails the check, and says which step.
    done, out = run_gpu_check_with_stubs(tmp_path / "again", "========= ERROR SUMMARY: 1 error", 9, tests_rc=1)
    assert done.returncode != 0
    assert re.search(r"FAILED: memcheck \(\d drivers\) racecheck \(\d CUDA C\+\+ drivers\) tests$", done.stdout,
                     re.MULTILINE), done.stdout
    assert (out / "logs.tar.gz").exists()


BAD_MODEL_CALLS = [  # (build, call, message): the layers' own errors would not name the input
    (lambda b: ConvAutoencoder(image_size=67, latent_dim=32, widths=(8, 16, 16, 16, 8), backend=b),
     lambda m: m(torch.rand(2, 3, 99, 99)),
     r"ConvAutoencoder.encode: `x` must have shape \(B, 3, 67, 67\); got \(2, 3, 99, 99\)"),
    (lambda b: ConvAutoencoder(image_size=67, latent_dim=32, widths=(8, 16, 16, 16, 8), backend=b),
     lambda m: m.decode(torch.randn(2, 31)), r"ConvAutoencoder.decode: `z` must have shape \(B, 32\); got \(2, 31\)"),
    (lambda b: VAE(image_size=32, latent_dim=8, widths=(8, 16), backend=b),
     lambda m: m(torch.rand(3, 32, 32)), r"VAE.encode: `x` must have shape \(B, 3, 32, 32\); got \(3, 32, 32\)"),
    (lambda b: VAE(image_size=32, latent_dim=8, widths=(8, 16), backend=b),
     lambda m: m(torch.rand(2, 1, 32, 32)), r"`x` must have shape \(B, 3, 32, 32\); got \(2, 1, 32, 32\)"),
    (lambda b: VAE(image_size=32, latent_dim=8, widths=(8, 16), backend=b),
     lambda m: m.decode(torch.randn(2, 7)), r"VAE.decode: `z` must have shape \(B, 8\); got \(2, 7\)"),
    (lambda b: ContextEncoder("center128", image_size=64, widths=(8, 16, 32, 64), backend=b),
     lambda m: m(torch.rand(2, 3, 32, 32)), r"ContextEncoder: `masked_image` must have shape \(B, 3, 64, 64\)"),
    (lambda b: ContextEncoder("center128", image_size=64, widths=(8, 16, 32, 64), backend=b),
     lambda m: m.inpaint(torch.rand(2, 3, 64, 64), torch.ones(32, 32)),
     r"ContextEncoder.inpaint: `mask` \(32, 32\) must broadcast to `image`'s shape \(2, 3, 64, 64\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, call, message", BAD_MODEL_CALLS)
def test_model_calls_with_inputs_of_another_shape_name_them(backend, build, call, message):
    with pytest.raises(ValueError, match=message):
        call(build(backend))

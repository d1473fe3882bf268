"""Benchmark cases shared by `autoenc-fast bench` and the pytest-benchmark suites.

Every case is one op at one shape, run by three providers — ours (the fused op),
eager (the plain-PyTorch reference) and compiled (torch.compile of the reference) —
in one of three modes: forward, backward (of a recorded forward) or full.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
from typing import Callable

import torch
from torch.utils.benchmark import Timer

from .train.optim import adam

PROVIDERS = ("ours", "eager", "compiled")
OPS = ("reparametrize_kl", "channelwise_fc", "spade_norm")
MODES = ("forward", "backward", "full")

REPARAMETRIZE_KL_SHAPES = [(64, 256), (512, 2304), (4096, 4096)]
REPARAMETRIZE_KL_QUICK_SHAPES = [(64, 256), (512, 2304)]


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of giving big blocks back
    to the OS; returns whether it could (glibc's mallopt found).

    By default a freed block of a few MB is unmapped or trimmed away, so the next step's
    fresh outputs page-fault again and the kernel zeroes every page: on this project's
    2-vCPU VM that swung one CPU step by 2-6x from run to run, for every provider.
    Keeping the memory, as jemalloc and tcmalloc do (PyTorch's CPU performance guide
    recommends them), times the kernels rather than the page faults.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in (
        (m_mmap_threshold, 1 << 30), (m_trim_threshold, (1 << 31) - 1), (m_top_pad, 64 << 20)))


def write_json(path: str, data) -> None:
    """data to path as JSON, atomically: a reader (or a run cut short while writing) never
    leaves half a file. The benchmark scripts rewrite their file after every row, so a run
    stopped at a time limit keeps every row it finished."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(device)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    """torch.compile(fn), compiled and run with its saved tensors kept (no buffer
    donation): the backward mode re-runs one recorded graph (retain_graph=True), which
    a graph that donated its buffers to the backward refuses."""
    compiled = torch.compile(fn)

    def call(*args, **kwargs):
        with _keep_saved_tensors():
            return compiled(*args, **kwargs)
    return call


def reparametrize_kl_impl(provider: str) -> Callable:
    from . import functional as F
    from . import reference as R

    return {"ours": F.reparametrize_kl, "eager": R.reparametrize_kl,
            "compiled": _compiled(R.reparametrize_kl)}[provider]


def reparametrize_kl_bytes(shape, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes each mode must move: forward reads mu, logvar and writes z;
    backward reads dz, mu, logvar, z and writes dmu, dlogvar (kl terms are O(B))."""
    numel = 1
    for size in shape:
        numel *= size
    per_mode = {"forward": 3, "backward": 6, "full": 9}[mode]
    return per_mode * numel * torch.finfo(dtype).bits // 8


def make_reparametrize_kl(provider: str, mode: str, shape, device, dtype=torch.float32) -> Callable[[], None]:
    """A no-argument callable running one step; it synchronizes on CUDA."""
    from .reference.reparametrize_kl import kl_accumulation_dtype

    fn = reparametrize_kl_impl(provider)
    grad = mode != "forward"
    mu = torch.randn(shape, device=device, dtype=dtype, requires_grad=grad)
    logvar = torch.randn(shape, device=device, dtype=dtype, requires_grad=grad)
    grads = (torch.randn(shape, device=device, dtype=dtype),
             torch.randn(shape[0], device=device, dtype=kl_accumulation_dtype(dtype)))
    return _runner(lambda: fn(mu, logvar), (mu, logvar), grads, mode, device)


def _keep_saved_tensors():
    """torch._functorch's donated_buffer switched off, where this torch has it."""
    import contextlib

    from torch._functorch import config

    if not hasattr(config, "donated_buffer"):  # older torch: no donation
        return contextlib.nullcontext()
    return config.patch(donated_buffer=False)


def _sync_for(device) -> Callable[[], None]:
    """What a timed step ends with: a synchronize on CUDA, nothing on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def _runner(forward, leaves, grad_out, mode, device) -> Callable[[], None]:
    """forward / backward of a recorded forward / full step. Gradients are reset as
    optimizer.zero_grad(set_to_none=True) does, so every provider's backward writes fresh
    .grad tensors instead of accumulating; `grad_out` matches forward()'s output(s)."""
    sync = _sync_for(device)

    def reset():
        for leaf in leaves:
            leaf.grad = None

    if mode == "forward":
        def run():
            with torch.no_grad():
                forward()
            sync()
        return run
    if mode == "backward":
        out = forward()

        def run():
            reset()
            # A compiled graph compiles its backward lazily, here: keep its saved tensors too.
            with _keep_saved_tensors():
                torch.autograd.backward(out, grad_out, retain_graph=True)
            sync()
        return run

    def run():
        reset()
        torch.autograd.backward(forward(), grad_out)
        sync()
    return run


def _timer(run: Callable[[], None]) -> Timer:
    # Timer runs its statement with one thread unless told otherwise: time what the user gets.
    return Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())


def time_median_ms(run: Callable[[], None], min_run_time: float) -> float:
    run()  # warm-up: compilation and first-call costs stay out of the numbers
    return _timer(run).blocked_autorange(min_run_time=min_run_time).median * 1e3


def time_side_by_side_ms(runs: dict[str, Callable[[], None]], min_run_time: float,
                         rounds: int = 5) -> dict[str, float]:
    """Median ms per call of each of `runs`, timed side by side: `rounds` rounds, each
    timing every run in turn for min_run_time / rounds, and the median over the rounds.
    A change in the machine's speed during the measurement (frequent on a shared VM)
    then falls on every provider alike instead of on whichever was timed at the time."""
    for run in runs.values():
        run()  # warm-up: compilation and first-call costs stay out of the numbers
    timers = {name: _timer(run) for name, run in runs.items()}
    per_round = {name: [] for name in runs}
    for _ in range(rounds):
        for name, timer in timers.items():
            per_round[name].append(timer.blocked_autorange(min_run_time=min_run_time / rounds).median * 1e3)
    return {name: statistics.median(times) for name, times in per_round.items()}


def copy_gbps(num_bytes: int, device) -> float:
    """Bandwidth of a plain device copy moving the same bytes (read + write)."""
    src = torch.empty(max(num_bytes // 8, 1), dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    sync = _sync_for(device)

    def run():
        dst.copy_(src)
        sync()
    return 2 * src.numel() * 4 / (time_median_ms(run, 0.2) * 1e-3) / 1e9


def channelwise_fc_bmm(x, weight, bias):
    """The batched-matmul way to a channel-wise FC, a baseline issue 3 names: x permuted
    to a contiguous (C, B, P), torch.bmm with weight (C, P, P), bias, permuted back."""
    B, C, H, W = x.shape
    y = torch.bmm(x.reshape(B, C, H * W).permute(1, 0, 2).contiguous(), weight)
    if bias is not None:
        y = y + bias[:, None, :]
    return y.permute(1, 0, 2).reshape(B, C, H, W)


def _make_channelwise_fc(provider: str, mode: str, shape, device, dtype=torch.float32):
    """Also provider "bmm" (channelwise_fc_bmm), besides ours, eager and compiled."""
    from . import functional as F
    from . import reference as R

    fn = {"ours": F.channelwise_fc, "eager": R.channelwise_fc, "bmm": channelwise_fc_bmm,
          "compiled": _compiled(R.channelwise_fc)}[provider]
    B, C, H, W = shape
    P = H * W
    grad = mode != "forward"
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=grad)
    weight = (torch.randn(C, P, P, device=device) / P**0.5).to(dtype).requires_grad_(grad)
    bias = torch.randn(C, P, device=device, dtype=dtype, requires_grad=grad)
    grad_y = torch.randn(shape, device=device, dtype=dtype)
    return _runner(lambda: fn(x, weight, bias), (x, weight, bias), grad_y, mode, device)


def _make_spade_norm(provider: str, mode: str, shape, device, dtype=torch.float32):
    from . import functional as F
    from . import reference as R

    fn = {"ours": F.spade_norm, "eager": R.spade_norm, "compiled": _compiled(R.spade_norm)}[provider]
    grad = mode != "forward"
    x, gamma, beta = (torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))
    running_mean = torch.zeros(shape[1], device=device)
    running_var = torch.ones(shape[1], device=device)
    grad_y = torch.randn(shape, device=device, dtype=dtype)
    return _runner(lambda: fn(x, gamma, beta, norm="batch", running_mean=running_mean,
                              running_var=running_var, negative_slope=0.2),
                   (x, gamma, beta), grad_y, mode, device)


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _cases(device: torch.device, quick: bool) -> list[tuple]:
    """(op, shape, maker, bytes moved by a full step or None for compute-bound ops)."""
    cuda = device.type == "cuda"
    reparam = REPARAMETRIZE_KL_QUICK_SHAPES if quick else REPARAMETRIZE_KL_SHAPES
    cfc = [(16, 256, 6, 6)] if quick else [(64, 256, 6, 6), (64, 512, 4, 4)]
    if quick:
        spade = [(2, 64, 32, 32)]
    elif cuda:
        spade = [(8, 1024, 16, 16), (8, 512, 64, 64), (8, 128, 128, 128), (4, 64, 256, 256)]
    else:
        spade = [(8, 1024, 16, 16), (2, 512, 64, 64)]
    cases = [("reparametrize_kl", s, make_reparametrize_kl, reparametrize_kl_bytes(s, torch.float32, "full"))
             for s in reparam]
    cases += [("channelwise_fc", s, _make_channelwise_fc, None) for s in cfc]
    # spade_norm forward + backward reads and writes 16 tensors of x's size (bench_spade_norm.py).
    cases += [("spade_norm", s, _make_spade_norm, 16 * _numel(s) * 4) for s in spade]
    return cases


# ---------------------------------------------------------------- model training steps

# family -> size -> (constructor kwargs, batch). "cpu" and "cuda" follow
# benchmarks/bench_models.py (CPU-sized; the papers' sizes on CUDA), "quick" is a smoke run.
MODEL_CONFIGS = {
    "conv_autoencoder": {"cpu": (dict(image_size=99, latent_dim=256, widths=(32, 64, 96, 96, 64)), 8),
                         "cuda": (dict(), 32),
                         "quick": (dict(image_size=67, latent_dim=32, widths=(8, 16, 16, 16, 8)), 4)},
    "vae": {"cpu": (dict(image_size=64, latent_dim=128), 16),
            "cuda": (dict(image_size=64, latent_dim=128), 128),
            "quick": (dict(image_size=32, latent_dim=16, widths=(16, 32)), 8)},
    "context_encoder": {"cpu": (dict(image_size=64, widths=(32, 64, 128, 256)), 16),
                        "cuda": (dict(), 64),
                        "quick": (dict(image_size=32, widths=(8, 16, 32)), 4)},
    "gaugan_generator": {"cpu": (dict(label_nc=8, ngf=8, z_dim=64, crop_size=64, spade_hidden=32), 4),
                         "cuda": (dict(label_nc=35, ngf=64, crop_size=256), 4),
                         "quick": (dict(label_nc=4, ngf=4, z_dim=16, crop_size=32, spade_hidden=8), 2)},
}
MODEL_PROVIDERS = {"ours": "fused", "eager": "reference", "compiled": "reference_compiled"}


def _model_and_loss(family: str, backend: str, kwargs: dict, batch: int, device):
    """The model, its inputs and a loss of its output, on a fixed random batch."""
    from . import models as M

    if family in ("conv_autoencoder", "vae"):
        model = (M.ConvAutoencoder if family == "conv_autoencoder" else M.VAE)(**kwargs, backend=backend)
        model = model.to(device)
        x = torch.rand(batch, model.in_channels, model.image_size, model.image_size, device=device)
        if family == "vae":
            return model, (x,), lambda out: M.vae_loss(out, x).loss
        return model, (x,), lambda out: M.mse_reconstruction_loss(out, x)
    if family == "context_encoder":
        model = M.ContextEncoder("center128", backend=backend, **kwargs).to(device)
        image = torch.rand(batch, 3, model.image_size, model.image_size, device=device) * 2 - 1
        mask = M.center_mask(model.image_size, device=device)
        target, weights = model.reconstruction_target(image, mask)
        return model, (M.apply_mask(image, mask),), lambda out: M.masked_reconstruction_loss(out, target, weights)
    # The GauGAN generator: a loss on its output (the discriminator has no fused block).
    model = M.SPADEGenerator(**kwargs, backend=backend).to(device)
    h, w = model.output_size
    labels = torch.randint(0, model.label_nc, (batch, h, w), device=device)
    segmap = torch.nn.functional.one_hot(labels, model.label_nc).permute(0, 3, 1, 2).float()
    return model, (segmap, torch.randn(batch, model.z_dim, device=device)), lambda out: out.square().mean()


AMP_DTYPES = {"bf16": torch.bfloat16}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def make_model_step(family: str, provider: str, device, size: str | None = None,
                    amp: str | None = None, layout: str = "contiguous") -> Callable[[], None]:
    """One training step (forward, loss, backward, Adam) of `family` on a fixed batch, with
    the optimizer `autoenc-fast train` uses (train.optim.adam: fused where PyTorch has it);
    provider is ours/eager/compiled or fused/reference/reference_compiled. amp="bf16"
    runs the forward and the loss under torch.autocast in bfloat16 (no grad scaler is
    needed for bfloat16). layout="channels_last" converts the model's 4-D weights and
    its 4-D inputs, so the convolutions (and the ops after them) run channels_last, the
    layout cuDNN's tensor-core and oneDNN's convolutions prefer."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"make_model_step: amp must be None or one of {list(AMP_DTYPES)}; got {amp!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"make_model_step: layout must be one of {list(LAYOUTS)}; got {layout!r}")
    provider = MODEL_PROVIDERS.get(provider, provider)
    size = size or torch.device(device).type
    kwargs, batch = MODEL_CONFIGS[family][size]
    backend = "fused" if provider == "fused" else "reference"
    model, inputs, loss_of = _model_and_loss(family, backend, kwargs, batch, device)
    model.to(memory_format=LAYOUTS[layout])
    inputs = tuple(t.contiguous(memory_format=LAYOUTS[layout]) if t.dim() == 4 else t for t in inputs)
    forward = torch.compile(model) if provider == "reference_compiled" else model
    optimizer = adam(model.parameters(), lr=1e-4)
    sync = _sync_for(device)
    device_type = torch.device(device).type

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp is not None):
            loss = loss_of(forward(*inputs))
        loss.backward()
        optimizer.step()
        sync()
    step.model = model  # for tests and for callers that look at what was trained
    return step


def step_peak_mib(run: Callable[[], None], device) -> float | None:
    """CUDA memory a step allocates on top of what is allocated when it starts (the
    activations, gradients and temporaries it holds at its peak), in MiB; None off CUDA,
    where torch keeps no such statistics."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


def _peak_fields(runs: dict[str, Callable[[], None]], dev: torch.device) -> dict:
    """{provider}_peak_mib of one more call of each run, on CUDA (none elsewhere)."""
    peaks = {f"{p}_peak_mib": step_peak_mib(run, dev) for p, run in runs.items()}
    return {key: mib for key, mib in peaks.items() if mib is not None}


def _machine_fields(dev: torch.device) -> dict:
    """What every row records of where it was measured (format_table prints it once)."""
    return {"device": str(dev), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}


def _model_rows(dev: torch.device, quick: bool, min_run_time: float, families=None, amps=(None,),
                layouts=("contiguous",), on_row=None) -> list[dict]:
    rows = []
    size = "quick" if quick else dev.type
    # --quick skips compiling the models (tens of seconds each on a CPU): a smoke run.
    providers = ("ours", "eager") if quick else PROVIDERS
    for family, amp, layout in itertools.product(families or MODEL_CONFIGS, amps, layouts):
        torch._dynamo.reset()
        steps = {p: make_model_step(family, p, dev, size, amp, layout) for p in providers}
        times = time_side_by_side_ms(steps, min_run_time)
        kwargs, batch = MODEL_CONFIGS[family][size]
        mode = " ".join(["train"] + ([amp] if amp else []) + ([layout] if layout != "contiguous" else []))
        row = {"op": f"step:{family}", "shape": [batch], "mode": mode,
               **_machine_fields(dev), **{f"{p}_ms": times.get(p) for p in PROVIDERS},
               "speedup_vs_eager": times["eager"] / times["ours"],
               "speedup_vs_compiled": times["compiled"] / times["ours"] if "compiled" in times else None,
               **_peak_fields(steps, dev)}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def run_benchmarks(device: str = "auto", quick: bool = False, ops=None, modes=("full",),
                   models: bool = True, families=None, amps=(None,), layouts=("contiguous",),
                   on_row=None) -> list[dict]:
    """Median ms of every provider for every op case and model training step, speedups,
    GB/s on CUDA for the memory-bound ops and each step's peak memory on CUDA. `ops` /
    `families` keep only those op cases / model steps (naming only one kind leaves the
    other out); `amps` lists the model steps' precisions (None: float32, "bf16":
    bfloat16 autocast) and `layouts` their memory formats ("contiguous",
    "channels_last"). on_row(row) is called as each row is measured (a caller bounded in
    time keeps what it has)."""
    for name, given, known in (("ops", ops, OPS), ("families", families, tuple(MODEL_CONFIGS)),
                               ("amps", [a for a in amps if a is not None], tuple(AMP_DTYPES)),
                               ("layouts", layouts, tuple(LAYOUTS))):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            raise ValueError(f"run_benchmarks: unknown {name} {unknown}; expected some of {list(known)}")
    named = bool(ops) or bool(families)
    run_ops = tuple(ops or ()) if named else OPS
    run_families = tuple(families or ()) if named else (tuple(MODEL_CONFIGS) if models else ())
    dev = resolve_device(device)
    rows = []
    min_run_time = 0.1 if quick else 0.5
    for op, shape, make, full_bytes in _cases(dev, quick):
        if op not in run_ops:
            continue
        for mode in modes:
            runs = {p: make(p, mode, shape, dev) for p in PROVIDERS}
            times = time_side_by_side_ms(runs, min_run_time)
            row = {"op": op, "shape": list(shape), "mode": mode, **_machine_fields(dev),
                   **{f"{p}_ms": times[p] for p in PROVIDERS},
                   "speedup_vs_eager": times["eager"] / times["ours"],
                   "speedup_vs_compiled": times["compiled"] / times["ours"], **_peak_fields(runs, dev)}
            if dev.type == "cuda" and full_bytes and mode == "full":
                row["ours_gbps"] = full_bytes / (times["ours"] * 1e-3) / 1e9
                row["copy_gbps"] = copy_gbps(full_bytes, dev)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    if run_families:
        rows += _model_rows(dev, quick, min_run_time, run_families, amps, layouts, on_row)
    return rows


def format_table(rows: list[dict]) -> str:
    mode_width = max([10] + [len(r["mode"]) + 2 for r in rows])
    header = f"{'op':<24}{'shape':<14}{'mode':<{mode_width}}{'ours ms':>10}{'eager ms':>10}{'compiled ms':>12}" \
             f"{'x eager':>9}{'x compiled':>11}"
    lines = [header]
    if rows:
        first = rows[0]
        lines.insert(0, f"{first['device']}, torch {first['torch']}, {first['cpu_threads']} CPU threads"
                        + (f", malloc: {first['malloc']}" if "malloc" in first else ""))
    for r in rows:
        shape = "x".join(map(str, r["shape"])) if not r["op"].startswith("step:") else f"batch {r['shape'][0]}"
        line = (f"{r['op']:<24}{shape:<14}{r['mode']:<{mode_width}}{_cell(r['ours_ms'], 10, 3)}"
                f"{_cell(r['eager_ms'], 10, 3)}{_cell(r['compiled_ms'], 12, 3)}"
                f"{_cell(r['speedup_vs_eager'], 9, 2)}{_cell(r['speedup_vs_compiled'], 11, 2)}")
        if "ours_gbps" in r:
            line += f"  {r['ours_gbps']:.0f} GB/s ({100 * r['ours_gbps'] / r['copy_gbps']:.0f}% of copy)"
        if r.get("ours_peak_mib") is not None:
            peaks = " / ".join(f"{r[f'{p}_peak_mib']:.0f}" for p in PROVIDERS if r.get(f"{p}_peak_mib") is not None)
            line += f"  step peak MiB {peaks}"
        lines.append(line)
    return "\n".join(lines)


def _cell(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def save_chart(rows: list[dict], path: str) -> None:
    """A PNG bar chart of our speedup over the eager and the compiled reference per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']} {'x'.join(map(str, r['shape']))} {r['mode']}" for r in rows]
    eager = [r["speedup_vs_eager"] for r in rows]
    compiled = [r["speedup_vs_compiled"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5), dpi=100)
    positions = range(len(rows))
    ax.barh([p - 0.2 for p in positions], eager, height=0.4, label="vs eager reference")
    ax.barh([p + 0.2 for p in positions], compiled, height=0.4, label="vs compiled reference")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of ours (x, higher is better)")
    ax.set_title(f"autoenc_fast, {rows[0]['device'] if rows else ''}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

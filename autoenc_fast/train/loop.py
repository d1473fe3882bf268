"""The training loop behind `autoenc-fast train`."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler, default_collate

from . import checkpoint, images
from .errors import DataError, Interrupted, OptionError, TrainingError
from .families import FAMILIES, StepContext


# ---------------------------------------------------------------- set-up


def _distributed(args) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), world


def _device(args, rank: int) -> torch.device:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise DataError("--device cuda: torch sees no CUDA GPU")
        index = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _autocast(args, device: torch.device):
    if not args.amp:
        return contextlib.nullcontext, None
    if args.amp == "fp16" and device.type != "cuda":
        raise DataError("--amp fp16 needs CUDA; on the CPU use --amp bf16")
    dtype = torch.float16 if args.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _build(family, args, device: torch.device) -> dict:
    """The family's modules on `device`; a constructor's refusal of the options (its
    ValueError/TypeError names the argument) becomes an OptionError: one line, no traceback."""
    try:
        modules = family.build(args)
    except (ValueError, TypeError) as error:
        raise OptionError(f"the options make no valid {family.name} model: {error}") from None
    return {k: m.to(device) for k, m in modules.items()}


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rng_states(device: torch.device, world: int) -> list[dict]:
    """Every process's RNG state in rank order (each draws its own noise and dropout). Under
    torchrun a collective: every rank calls it, at the same steps."""
    state = _rng_state(device)
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


def _resumed_rng_state(saved, rank: int) -> dict:
    """This rank's state; checkpoints from before 2026-11-28 hold rank 0's alone (a dict)."""
    return saved[rank] if isinstance(saved, list) else saved


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _wrap(modules: dict, args, device, world: int) -> dict:
    """The modules as trained: DistributedDataParallel across processes, compiled if asked."""
    trained = {}
    for name, module in modules.items():
        wrapped = module
        if world > 1 and any(p.requires_grad for p in module.parameters()):
            wrapped = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        if args.compile:
            wrapped = torch.compile(wrapped)
        trained[name] = wrapped
    return trained


# ---------------------------------------------------------------- files


METRICS = "metrics.jsonl"


class RunFolder:
    """Everything a run writes, on rank 0 only. The folder is made by create(), once every
    check that may refuse the run has passed: a refused run leaves no folder behind."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self.checkpoints = out / "checkpoints"

    def create(self) -> None:
        if self.enabled:
            self.out.mkdir(parents=True, exist_ok=True)

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"autoenc-fast train: {message}", flush=True)

    def metrics(self, record: dict) -> None:
        if self.enabled:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def trim_metrics(self, last_step: int) -> None:
        """On resume: keep the records up to the checkpoint's step. A run stopped after it
        wrote more, and a run killed mid-write leaves a cut-off last line: both dropped."""
        path = self.out / METRICS
        if not self.enabled or not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line, step in zip(lines, map(_step_of, lines)) if step is not None and step <= last_step]
        if len(kept) < len(lines):
            self.log(f"{path}: dropped {len(lines) - len(kept)} line(s) after the checkpoint's step {last_step} "
                     "or cut off")
        checkpoint.atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in kept)))

    def write_json(self, name: str, data: dict) -> None:
        if self.enabled:
            checkpoint.atomic_write(self.out / name, lambda p: p.write_text(json.dumps(data, indent=1)))


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a cut-off or foreign one."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


# ---------------------------------------------------------------- the loop


# Options a resumed run may change: how long and where it runs, not what it trains.
RESUMABLE = {"command", "func", "resume", "out", "max_steps", "epochs", "checkpoint_every", "speedup",
             "device", "compile", "backend"}


def _run_options(args, world: int) -> dict:
    """The options that define a run (data, sizes, learning rate, seed, precision, the
    family's own, and the number of processes that shard the data), as plain values a
    checkpoint's state can hold."""
    # A folder by its absolute path: `--data d` and `--data ./d` from the same place are one run.
    plain = lambda v: str(v.resolve()) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {"processes": world, **{k: plain(v) for k, v in sorted(vars(args).items()) if k not in RESUMABLE}}


def _option_name(key: str) -> str:
    return "processes (torchrun --nproc-per-node)" if key == "processes" else f"--{key.replace('_', '-')}"


# Options added after checkpoints began to keep the run's options, with the value every
# run before them had: a checkpoint without one resumes as that value.
EARLIER_VALUES = {"channels": 1}


def _earlier_values(args) -> dict:
    """EARLIER_VALUES of the options this family has."""
    return {k: v for k, v in EARLIER_VALUES.items() if k in vars(args)}


def _saved_options(state: dict, args) -> dict | None:
    """The options the run started with; None for a checkpoint written before they were kept."""
    saved = state.get("options")
    if saved is None:
        return None
    return {**_earlier_values(args), **saved}


def _check_resume_options(state: dict, args, world: int) -> None:
    """--resume continues the run that was started: a different --lr would be silently
    overridden by the optimizer state it restores, a different --batch-size or --seed
    would skip or repeat data. Refuse such a change, naming each option."""
    saved = _saved_options(state, args)
    if saved is None:  # a checkpoint written before the options were kept
        return
    now = _run_options(args, world)
    changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if changed:
        detail = "; ".join(f"{_option_name(k)} {now.get(k)!r} (the run's: {saved.get(k)!r})" for k in changed)
        raise OptionError(f"--resume continues the run with the options it started with, and these differ: "
                          f"{detail}. Drop them, or start a new run in another --out")


def _state(step, epoch, batch_in_epoch, optimizers, history, rng, scaler, args, world) -> dict:
    return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng, "history": history, "options": _run_options(args, world)}


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) while training: the first is held until the step it lands in is done,
    and the loop then saves a checkpoint and stops. Raised mid-step, the KeyboardInterrupt
    could leave the weights and optimizer states half updated in place (a GAN's discriminator
    stepped, its generator not): no consistent state to save. A second Ctrl-C quits at once,
    unsaved (the last checkpoint is intact: checkpoints are written atomically)."""

    def __init__(self, run: RunFolder):
        self.run, self.requested, self.installed, self.previous = run, False, False, None

    def __enter__(self):
        self.installed = threading.current_thread() is threading.main_thread()  # signal.signal's condition
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self.installed:  # previous is None for a handler not set from Python: the default's then
            signal.signal(signal.SIGINT, signal.SIG_DFL if self.previous is None else self.previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted(f"interrupted again: quit without saving; {_kept_checkpoint(self.run)}"
                              if self.run.enabled else "")
        self.requested = True


def _agreed(flag: bool, device: torch.device, world: int) -> bool:
    """Whether any process saw `flag`: under torchrun each gets its own SIGINT, maybe a step
    apart, yet all must save (a collective) and stop at the same step."""
    if world == 1:
        return flag
    seen = torch.tensor([int(flag)], device=device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())


def _kept_checkpoint(run: RunFolder) -> str:
    last = checkpoint.latest_step(run.checkpoints)
    return f"the last good checkpoint (step {last}) is kept in {run.checkpoints}" if last is not None \
        else "no checkpoint had been written yet"


@contextlib.contextmanager
def _memory_for(what: str, args, device: torch.device, run: RunFolder | None = None):
    """An allocation failure in the block becomes an error naming the size options (an
    --image-size or --batch-size too large for the machine raised the allocator's traceback,
    or a bare MemoryError) and how much was asked for: an OptionError before training, a
    TrainingError that names the checkpoint kept in a training step (given the `run`)."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        text = str(error)
        if not (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
                or "out of memory" in text):
            raise
        message = (f"out of memory {what} at --image-size {args.image_size} and --batch-size {args.batch_size}"
                   f"{_asked_for(text)} on {device}; lower --image-size or --batch-size")
        if run is None:
            raise OptionError(message) from None
        raise TrainingError(f"{message}; {_kept_checkpoint(run)}") from None


def _asked_for(message: str) -> str:
    """The allocation that failed, from torch's message ("Tried to allocate 2.00 GiB" on CUDA,
    "you tried to allocate 71880000000000 bytes" on the CPU), or "" where it says none."""
    match = re.search(r"[Tt]ried to allocate ([\d.]+) ?(bytes|[KMGTP]iB)", message)
    if match is None:
        return ""
    number, unit = match.groups()
    size = f"{int(number) / 2**30:,.1f} GiB" if unit == "bytes" else f"{number} {unit}"
    return f" (one allocation of {size} failed)"


def _batch_to(batch, device):
    if isinstance(batch, (list, tuple)):
        return type(batch)(t.to(device, non_blocking=True) for t in batch)
    return batch.to(device, non_blocking=True)


def _picture(family, modules, batch, args, run: RunFolder, epoch: int) -> None:
    if not run.enabled:
        return
    was_training = {k: m.training for k, m in modules.items()}
    for m in modules.values():
        m.eval()
    shown = family.picture(modules, batch, args)
    for k, m in modules.items():
        m.train(was_training[k])
    scale = max(1, 256 // max(shown[0].shape[-1], 1) // 2)
    images.save_png(images.grid(shown), run.out / f"samples_epoch{epoch:03d}.png", scale=scale)


def train(args) -> dict | None:
    """Train as `args` say; the run's summary on rank 0 (the process that prints it), None
    on the other ranks."""
    rank, world = _distributed(args)
    try:
        summary = _train(args, rank, world)
        if world > 1:
            # Every rank leaves together: a rank tearing gloo down while rank 0 still writes
            # its last files can abort the other ("terminate called without an active exception").
            dist.barrier()
        return summary if rank == 0 else None
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, rank: int, world: int) -> dict:
    family = FAMILIES[args.family]
    device = _device(args, rank)
    run = RunFolder(Path(args.out), enabled=rank == 0)
    torch.manual_seed(args.seed)
    state = run_options = None
    if args.resume:
        state, weights = checkpoint.read_state(run.checkpoints)
        # Options inferred from the data where not given (--channels) keep the run's values.
        run_options = _saved_options(state, args) or _earlier_values(args)
    with _memory_for(f"preparing the data ({args.data or 'the embedded data set'})", args, device):
        dataset = family.dataset(args, run.log, run_options)
    if len(dataset) < args.batch_size * world:
        raise DataError(f"--batch-size {args.batch_size}: the data has only {len(dataset)} image(s) "
                        f"for {world} process(es)")
    with _memory_for("building the model", args, device):
        modules = _build(family, args, device)
    family.check_batch(modules, args, world)
    optimizers = family.optimizers(modules, args)
    autocast, scaler = _autocast(args, device)
    # Each process draws different noise and dropout; the weights start equal (DDP broadcasts rank 0's).
    torch.manual_seed(args.seed + rank)

    step, epoch, batch_in_epoch, history = 0, 0, 0, []
    if state is not None:
        _check_resume_options(state, args, world)  # before any weight is loaded: it may refuse
        checkpoint.load_weights(weights, modules)
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        history = state["history"]
        _set_rng_state(_resumed_rng_state(state["rng"], rank), device)
        run.trim_metrics(step)
        run.log(f"resumed from step {step} (epoch {epoch + 1}, batch {batch_in_epoch})")
    trained = _wrap(modules, args, device, world)
    run.create()
    run.write_json("args.json", {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                 if k != "func"})

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    total = _total_steps(len(sampler) // args.batch_size, args.epochs, args.max_steps)
    progress = _progress(run, total, step)
    # This session's work: images/s is over the training steps alone (data, forward, backward,
    # optimizer), not the checkpoints and pictures written between them.
    started, first_step, step_seconds, images_seen, last_batch = time.perf_counter(), step, 0.0, 0, None

    saved_at = step if state is not None else None  # the step of this session's last checkpoint

    def save(step, epoch, batch_in_epoch):
        nonlocal saved_at
        rng = _rng_states(device, world)  # on every rank: they all continue their own streams
        if run.enabled:
            checkpoint.save_checkpoint(run.checkpoints, step, modules,
                                       _state(step, epoch, batch_in_epoch, optimizers, history, rng, scaler,
                                              args, world))
        saved_at = step

    def stop_interrupted():
        """After Ctrl-C, between steps: the state as of the last completed step is consistent."""
        if saved_at != step:
            save(step, epoch, batch_in_epoch)
        raise Interrupted(f"interrupted: saved the run at step {step} in {run.checkpoints}; continue it with "
                          "the same command and --resume" if run.enabled else "")

    # The bar is closed before any error's message is printed, not drawn again after it.
    with _DeferredInterrupt(run) as interrupt, progress:
        while step < total:
            sampler.set_epoch(epoch)
            batches = list(BatchSampler(sampler, args.batch_size, drop_last=True))
            for index in batches[batch_in_epoch:]:
                if _agreed(interrupt.requested, device, world):
                    stop_interrupted()
                step_started = time.perf_counter()
                with _memory_for(f"in training step {step + 1}", args, device, run):
                    batch = _batch_to(default_collate([dataset[i] for i in index]), device)
                    ctx = StepContext(trained, optimizers, autocast, scaler, step, args)
                    metrics = {k: float(v) for k, v in family.step(ctx, batch).items()}  # float(): waits for the GPU
                step_seconds += time.perf_counter() - step_started
                if not all(math.isfinite(v) for v in metrics.values()):
                    raise TrainingError(f"the loss became {metrics['loss']} at step {step + 1}; stopped, and "
                                        f"{_kept_checkpoint(run)}")
                step += 1
                batch_in_epoch += 1
                images_seen += args.batch_size * world
                record = {"step": step, "epoch": epoch + 1, **metrics}
                history.append(record)
                run.metrics(record)
                last_batch = batch
                progress.update(1)
                progress.set_postfix(loss=f"{metrics['loss']:.4g}",
                                     img_s=f"{images_seen / step_seconds:.0f}")
                if args.checkpoint_every and step % args.checkpoint_every == 0 and step < total:
                    save(step, epoch, batch_in_epoch)
                if step >= total:
                    break
            if batch_in_epoch >= len(batches):
                epoch, batch_in_epoch = epoch + 1, 0
            save(step, epoch, batch_in_epoch)
            if last_batch is not None:
                _picture(family, modules, last_batch, args, run, epoch if batch_in_epoch == 0 else epoch + 1)
            if run.enabled and history:
                images.save_loss_curve(history, run.out / "loss.png", f"{family.name} ({args.backend})")
    summary = {"family": family.name, "backend": args.backend, "device": str(device), "processes": world,
               "steps": step, "epochs_completed": epoch,  # the run's, resumed sessions included
               "session_steps": step - first_step,  # this session's
               "step_seconds": round(step_seconds, 6),  # in those steps alone
               "session_seconds": round(time.perf_counter() - started, 6),  # with checkpoints and pictures
               "images_per_second": round(images_seen / step_seconds, 1) if step_seconds > 0 else None,
               "final_loss": history[-1]["loss"] if history else None, "out": str(run.out)}
    run.write_json("summary.json", summary)
    return summary


DEFAULT_EPOCHS = 5


def _total_steps(steps_per_epoch: int, epochs: int | None, max_steps: int) -> int:
    """The run's last step: --epochs and --max-steps both bound it when given; --max-steps
    alone is not cut short by the default epoch count, which applies when neither is."""
    if epochs is None:
        return max_steps or steps_per_epoch * DEFAULT_EPOCHS
    return min(steps_per_epoch * epochs, max_steps) if max_steps else steps_per_epoch * epochs


def _progress(run: RunFolder, total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not run.enabled, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------- fused vs reference


def step_speedup(args, repeats: int = 15, warmup: int = 3) -> dict:
    """Median time of one training step with the fused and the reference backend, on
    one batch of the run's data, timed alternately so both see the same machine load;
    the run's own RNG state is left as it was."""
    family = FAMILIES[args.family]
    device = torch.device(args.device if args.device != "auto" else "cpu")
    rng = _rng_state(device)
    dataset = family.dataset(args, lambda *_: None)
    batch = _batch_to(default_collate([dataset[i] for i in range(args.batch_size)]), device)
    steps = {}
    for backend in ("fused", "reference"):
        local = copy.copy(args)
        local.backend = backend
        torch.manual_seed(args.seed)
        modules = _build(family, local, device)
        optimizers = family.optimizers(modules, local)
        steps[backend] = (lambda modules, optimizers, local: lambda s: family.step(
            StepContext(modules, optimizers, contextlib.nullcontext, None, s, local), batch))(
                modules, optimizers, local)
    samples = {backend: [] for backend in steps}
    for s in range(warmup + repeats):
        for backend, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(s)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if s >= warmup:
                samples[backend].append(time.perf_counter() - t0)
    _set_rng_state(rng, device)
    median = {b: sorted(v)[len(v) // 2] * 1e3 for b, v in samples.items()}
    return {"fused_ms": median["fused"], "reference_ms": median["reference"],
            "speedup": median["reference"] / median["fused"]}

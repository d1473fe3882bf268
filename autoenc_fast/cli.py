"""Command line: ``autoenc-fast`` or ``python -m autoenc_fast``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cmd_info(args) -> int:
    from . import info
    from ._info import format_info

    data = info()
    print(json.dumps(data, indent=1) if args.json else format_info(data))
    return 0


def _cmd_bench(args) -> int:
    from .bench import format_table, keep_freed_memory, run_benchmarks, write_json

    if args.no_models and args.model:
        raise UsageError("--no-models and --model contradict each other: name the model steps to time, "
                         "or leave them out")
    for flag, path in (("--json", args.json), ("--png", args.png)):
        if path:  # known before minutes of measuring, not as a traceback after them
            _check_output_file(flag, Path(path))
    if args.png:
        from .train.extras import missing, missing_message

        if missing(["matplotlib"]):  # draws the chart, after the measuring
            raise UsageError(missing_message(["matplotlib"], f"--png {args.png}"))
    malloc = "system default" if args.system_malloc or not keep_freed_memory() else "freed memory kept"
    amps = tuple(None if a == "fp32" else a for a in dict.fromkeys(args.amp or ["fp32"]))
    measured = []

    def keep(row):
        # Each row as it is measured: a progress line (stderr; the table comes last on stdout),
        # and the JSON file rewritten, so a run cut short (the GPU check bounds it in time)
        # keeps every row it finished.
        row["malloc"] = malloc
        measured.append(row)
        print(f"  {row['op']} {'x'.join(map(str, row['shape']))} {row['mode']}: ours {row['ours_ms']:.3f} ms,"
              f" {row['speedup_vs_eager']:.2f}x eager", file=sys.stderr, flush=True)
        if args.json:
            write_json(args.json, measured)

    rows = run_benchmarks(device=args.device, quick=args.quick, ops=args.op, modes=args.mode or ("full",),
                          models=not args.no_models, families=args.model, amps=amps,
                          layouts=tuple(dict.fromkeys(args.layout or ["contiguous"])), on_row=keep)
    print(format_table(rows))
    if args.png:
        from .bench import save_chart

        save_chart(rows, args.png)
        print(f"wrote {args.png}")
    if args.json:  # rewritten by keep() after every row, the last time with them all
        print(f"wrote {args.json}")
    return 0


def _check_output_file(flag: str, path: Path) -> None:
    """`path` can be written as a file: it is no folder, and its folder exists."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; name a file (in it, or elsewhere)")
    folder = path.absolute().parent
    if folder.is_dir():
        return
    found = _nearest_existing(folder)
    if found.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    raise UsageError(f"{flag} {path}: {found} is {_not_a_folder(found)}, not a folder")


def _cmd_train(args) -> int:
    from .train.checkpoint import latest_step
    from .train.extras import missing, missing_message
    from .train.families import FAMILIES
    from .train.loop import METRICS, step_speedup, train

    # Known now, not as a traceback after steps (and a checkpoint) were written.
    absent = missing(FAMILIES[args.family].packages(args))
    if absent:
        raise UsageError(missing_message(absent, f"autoenc-fast train {args.family}"))
    args.out = Path(args.out or f"runs/{args.family}")
    _check_out_folder(args.out)
    if not args.resume and latest_step(args.out / "checkpoints") is not None:
        raise UsageError(f"--out {args.out} already holds a run; pass --resume to continue it, "
                         "or choose another --out")
    if not args.resume and (args.out / METRICS).exists():
        # A run that stopped before its first checkpoint: nothing to resume, and a run never
        # overwrites (nor appends to) another's records.
        raise UsageError(f"--out {args.out} holds the {METRICS} of an earlier run that stopped before its first "
                         f"checkpoint, so it cannot be resumed; remove {args.out / METRICS} to start anew there, "
                         "or choose another --out")
    summary = train(args)
    if summary is not None:  # rank 0 (the only process without torchrun)
        print(_summary_line(summary))
        if args.speedup and summary["processes"] == 1:
            timing = step_speedup(args)
            # Timed in float32 and eager whatever --amp and --compile say: the backends' own difference.
            print(f"training step (float32, eager): fused {timing['fused_ms']:.2f} ms, reference "
                  f"{timing['reference_ms']:.2f} ms -> fused is {timing['speedup']:.2f}x the reference")
    return 0


def _nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest ancestor that does (the current folder at worst);
    a broken symbolic link counts as existing: mkdir cannot make a folder there either."""
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))


def _not_a_folder(path: Path) -> str:
    """What `path` (which exists and is no folder) is, for an error message."""
    return "a broken symbolic link" if not path.exists() else "a file"


def _check_out_folder(out: Path) -> None:
    """The run folder and its checkpoints/ are made (with missing parents) once the data and
    model are ready; a file at any of those paths would fail the mkdir with a traceback, after
    the data was decoded or steps were trained. Refused now instead."""
    found = _nearest_existing(out / "checkpoints")
    if found.is_dir():
        return
    where = f"--out {out}" if found == out else f"--out {out}: {found}"
    raise UsageError(f"{where} is {_not_a_folder(found)}, not a folder; the run folder, its parents and its "
                     "checkpoints/ must be folders (or not exist yet)")


def _summary_line(summary: dict) -> str:
    """This session's steps and time; images/s over the training steps alone."""
    session, total = summary["session_steps"], summary["steps"]
    if session == 0:  # a resume of a run that had already reached its --max-steps/--epochs
        steps, timing = f"no step this session (the run had reached step {total})", ""
    else:
        steps = f"{session} steps" if session == total else \
            f"{session} steps this session (steps {total - session + 1}-{total} of the run)"
        timing = (f" in {summary['step_seconds']:.2f} s of training steps ({summary['images_per_second']} "
                  f"images/s), {summary['session_seconds']:.2f} s with checkpoints and pictures")
    loss = f"; final loss {summary['final_loss']:.4g}" if summary["final_loss"] is not None else ""
    return f"trained {summary['family']} ({summary['backend']}): {steps}{timing}{loss}; files in {summary['out']}"


def _add_train_parser(sub) -> None:
    from .train.families import FAMILIES
    from .train.options import COUNT, RATE, SEED, STEPS

    p_train = sub.add_parser("train", help="train a model family from the command line")
    families = p_train.add_subparsers(dest="family", required=True)
    for family in FAMILIES.values():
        p = families.add_parser(family.name, help=family.help, description=family.help)
        p.add_argument("--data", type=Path, help="a folder of images, its subfolders included (gaugan: "
                                                 "DIR/images and DIR/labels); default: the embedded data set")
        p.add_argument("--epochs", type=COUNT, help="passes over the data (default 5; with --max-steps, as many "
                                                    "as its steps take)")
        p.add_argument("--max-steps", type=STEPS, default=0, help="stop after this many steps (0: no limit)")
        p.add_argument("--batch-size", type=COUNT, default=family.batch_size,
                       help="images a step in each process (default %(default)s)")
        p.add_argument("--image-size", type=COUNT, default=family.image_size,
                       help="side of the square images trained on (default %(default)s)")
        p.add_argument("--lr", type=RATE, default=family.lr, help="learning rate (default %(default)g)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--backend", default="fused", choices=["fused", "reference"])
        p.add_argument("--amp", nargs="?", const="bf16", choices=["bf16", "fp16"],
                       help="mixed precision (bf16 unless fp16 is named; fp16 on CUDA only)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model")
        p.add_argument("--out", help="the run folder (default runs/<family>)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        p.add_argument("--seed", type=SEED, default=0, help="seeds weights, data order and noise (default 0)")
        p.add_argument("--checkpoint-every", type=STEPS, default=100, metavar="STEPS",
                       help="also checkpoint every this many steps (default 100; 0: at epoch ends only)")
        p.add_argument("--no-speedup", dest="speedup", action="store_false",
                       help="skip timing the fused against the reference step at the end (a single "
                            "process only: skipped under torchrun)")
        family.add_arguments(p)
        p.set_defaults(func=_cmd_train, _parser=p)


class UsageError(ValueError):
    """A command-line mistake: one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoenc-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions and which kernels run on which device")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=_cmd_info, _parser=p_info)
    from .bench import MODEL_CONFIGS, OPS as bench_ops

    bench_families = list(MODEL_CONFIGS)
    p_bench = sub.add_parser("bench", help="time the fused ops and model steps against the eager and compiled references")
    p_bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p_bench.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p_bench.add_argument("--op", action="append", choices=bench_ops,
                         help="only this op (repeatable; with --model, also those model steps)")
    p_bench.add_argument("--model", action="append", choices=bench_families,
                         help="only this model family's training step (repeatable)")
    p_bench.add_argument("--amp", action="append", choices=["fp32", "bf16"],
                         help="model steps in float32 and/or under bfloat16 autocast (repeatable; default fp32)")
    p_bench.add_argument("--layout", action="append", choices=["contiguous", "channels_last"],
                         help="model steps with the model and its inputs in this memory format (repeatable; "
                              "default contiguous)")
    p_bench.add_argument("--mode", action="append", choices=["forward", "backward", "full"],
                         help="forward, backward or full (forward + backward) steps; repeatable (default full)")
    p_bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p_bench.add_argument("--png", metavar="FILE", help="also draw the speedups as a PNG bar chart")
    p_bench.add_argument("--no-models", action="store_true", help="only the ops, not the model training steps")
    p_bench.add_argument("--system-malloc", action="store_true",
                         help="leave glibc's malloc as it is (by default the bench keeps freed memory, so CPU "
                              "steps are not timed re-faulting their outputs' pages)")
    p_bench.set_defaults(func=_cmd_bench, _parser=p_bench)
    _add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .train.errors import CheckpointError, DataError, Interrupted, OptionError, TrainingError

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command_parser = vars(args).pop("_parser")
    if unknown:  # named by the command's own usage line (`train vae`), not the top level's
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except (UsageError, OptionError, DataError, CheckpointError) as error:
        print(f"autoenc-fast: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"autoenc-fast: training stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as error:  # Ctrl-C: the shell's 128 + SIGINT, and no traceback
        if not isinstance(error, Interrupted):
            print("autoenc-fast: interrupted", file=sys.stderr)
        elif str(error):  # training's: what it saved (rank 0 alone: the others write nothing)
            print(f"autoenc-fast: {error}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

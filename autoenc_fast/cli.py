"""Command line: ``autoenc-fast`` or ``python -m autoenc_fast``."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    from . import info
    from ._info import format_info

    data = info()
    print(json.dumps(data, indent=1) if args.json else format_info(data))
    return 0


def _cmd_bench(args) -> int:
    from .bench import format_table, run_benchmarks

    rows = run_benchmarks(device=args.device, quick=args.quick, ops=args.op)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoenc-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions and which kernels run on which device")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=_cmd_info)
    p_bench = sub.add_parser("bench", help="time the fused ops against the eager and compiled references")
    p_bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p_bench.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p_bench.add_argument("--op", action="append", help="only this op (repeatable)")
    p_bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

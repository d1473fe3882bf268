"""The GPU check's short table: the numbers each issue's targets are judged on, read back
from the JSON files the check wrote, so they stand together at the end of its output.

    python benchmarks/gpu_summary.py OUT_DIR

Reads (each if present) kernel_times.json (device time per op step, gpu_kernel_times.py),
gaugan_profile.json (gpu_model_profile.py), bench.json and bench_bf16.json (autoenc-fast
bench). A missing file is named, not an error: the check may have stopped early.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(out: Path, name: str):
    path = out / name
    if not path.exists():
        print(f"({name}: not written)")
        return None
    return json.loads(path.read_text())


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def _shape(row) -> str:
    return "x".join(map(str, row["shape"]))


def kernel_lines(rows) -> list[str]:
    """Device time of ours against eager and compiled, and the candidates beside ours, per
    dtype: keys "<dtype>_<provider>_device_ms" (no dtype prefix: float32)."""
    lines = ["device time per full step (ms): ours | x eager | x compiled | candidates (their ms / ours)"]
    for row in rows:
        prefixes = [key.removesuffix("ours_device_ms") for key in row if key.endswith("ours_device_ms")]
        for prefix in prefixes:
            others = [p for p in prefixes if p and p != prefix]
            ours = row[f"{prefix}ours_device_ms"]
            candidates = [(key[len(prefix):].removesuffix("_device_ms"), ms) for key, ms in row.items()
                          if key.startswith(prefix) and key.endswith("_device_ms")
                          and not any(key.startswith(p) for p in others)
                          and key[len(prefix):] not in ("ours_device_ms", "eager_device_ms", "compiled_device_ms")]
            extra = ", ".join(f"{name} {_ratio(ms, ours)}" for name, ms in candidates)
            label = f"{_shape(row)} {prefix.rstrip('_')}".strip()
            lines.append(f"  {row['op']:<17}{label:<24}{ours:9.4f} | {_ratio(row[f'{prefix}eager_device_ms'], ours):>6}"
                         f" | {_ratio(row[f'{prefix}compiled_device_ms'], ours):>6} | {extra}")
    return lines


def profile_lines(result) -> list[str]:
    """Total self time per variant of the model step, and the copy and convolution groups."""
    from gpu_model_profile import by_group

    variants = [key for key, value in result.items() if isinstance(value, dict)]
    lines = [f"{result['family']} step by variant (ms): total | convolution | copy/cat/layout | our ops"]
    for variant in variants:
        groups = by_group(result[variant])
        lines.append(f"  {variant:<26}{sum(groups.values()):9.3f} | {groups.get('convolution / matmul', 0):9.3f} | "
                     f"{groups.get('copy / cat / layout', 0):9.3f} | {groups.get('autoenc_fast ops', 0):9.3f}")
    return lines


def bench_lines(rows, title: str) -> list[str]:
    lines = [f"{title}: ours ms | x eager | x compiled | peak MiB ours/eager"]
    for row in rows:
        peaks = "/".join(f"{row[key]:.0f}" for key in ("ours_peak_mib", "eager_peak_mib") if row.get(key) is not None)
        shape = f"batch {row['shape'][0]}" if row["op"].startswith("step:") else _shape(row)
        lines.append(f"  {row['op']:<24}{shape:<14}{row['mode']:<24}{row['ours_ms']:9.3f} | "
                     f"{_ratio(row['eager_ms'], row['ours_ms']):>6} | {_ratio(row['compiled_ms'], row['ours_ms']):>6}"
                     f" | {peaks or '-'}")
    return lines


def main(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_model_profile's groups
    lines = []
    if (rows := _load(out, "kernel_times.json")) is not None:
        lines += kernel_lines(rows)
    if (result := _load(out, "gaugan_profile.json")) is not None:
        lines += profile_lines(result)
    for name, title in (("bench.json", "wall clock per step"), ("bench_bf16.json", "model steps, bf16 autocast")):
        if (rows := _load(out, name)) is not None:
            lines += bench_lines(rows, title)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

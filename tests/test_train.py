"""`autoenc-fast train` end to end: each family, resume, crashes, NaN, bad data, torchrun."""
from __future__ import annotations

import copy
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

from autoenc_fast.cli import main  # noqa: E402
from autoenc_fast.train.families import FAMILIES  # noqa: E402
from autoenc_fast.train.optim import adam  # noqa: E402

TINY = {
    "ae": ["--image-size", "67", "--widths", "4", "8", "8", "8", "8", "--latent-dim", "8"],
    "vae": ["--image-size", "16", "--widths", "8", "16", "--latent-dim", "4"],
    "context-encoder": ["--image-size", "16", "--widths", "4", "8", "8", "--disc-widths", "4", "--overlap", "1"],
    "gaugan": ["--image-size", "32", "--ngf", "2", "--ndf", "4", "--z-dim", "4", "--spade-hidden", "4",
               "--n-layers-d", "2"],
}
HERE = Path(__file__).parent


def train(tmp: Path, family: str, *extra: str) -> int:
    return main(["train", family, "--out", str(tmp), "--batch-size", "16", "--no-speedup",
                 "--device", "cpu", *TINY[family], *extra])


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), "metrics.jsonl holds a step twice or out of order"
    return {r["step"]: r["loss"] for r in records}


@pytest.mark.parametrize("family", sorted(TINY))
def test_family_trains_and_writes_its_files(tmp_path, family):
    assert train(tmp_path, family, "--max-steps", "4") == 0
    recorded = losses(tmp_path)
    assert sorted(recorded) == [1, 2, 3, 4]
    assert all(v == v and abs(v) < float("inf") for v in recorded.values())
    for name in ("loss.png", "summary.json", "args.json", "checkpoints/latest.json"):
        assert (tmp_path / name).is_file(), name
    assert list(tmp_path.glob("samples_epoch*.png"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["family"] == family


@pytest.mark.parametrize("family", ["context-encoder", "gaugan"])
def test_mixed_precision_trains(tmp_path, family):
    assert train(tmp_path, family, "--max-steps", "2", "--amp", "bf16") == 0
    assert sorted(losses(tmp_path)) == [1, 2]


def test_resume_equals_uninterrupted(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(whole, "vae", "--max-steps", "8") == 0
    assert train(split, "vae", "--max-steps", "4") == 0
    assert train(split, "vae", "--max-steps", "8", "--resume") == 0
    assert losses(split) == losses(whole)  # bit-equal on the CPU with a fixed seed


def test_summary_times_this_sessions_steps_alone(tmp_path, monkeypatch, capsys):
    """The summary's time and images/s took in checkpoint writes and pictures, and after a
    resume counted every step of the run against this session's time."""
    from autoenc_fast.train import checkpoint

    real_save = checkpoint.save_checkpoint

    def slow_save(*args, **kwargs):
        time.sleep(0.4)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    assert train(tmp_path, "vae", "--max-steps", "2") == 0
    assert train(tmp_path, "vae", "--max-steps", "5", "--resume") == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["session_steps"] == 3
    assert summary["step_seconds"] + 0.35 < summary["session_seconds"]  # the checkpoint's 0.4 s is not a step's
    assert summary["images_per_second"] == pytest.approx(3 * 16 / summary["step_seconds"], rel=0.05)
    assert f"trained vae (fused): 3 steps this session (steps 3-5 of the run) in {summary['step_seconds']:.2f} s " \
        f"of training steps ({summary['images_per_second']} images/s), {summary['session_seconds']:.2f} s with " \
        "checkpoints and pictures; final loss" in out


def test_resume_across_an_epoch_boundary(tmp_path):
    # 1,797 digits / 16 = 112 steps an epoch; a tiny data folder makes epochs short instead.
    folder = tmp_path / "data"
    folder.mkdir()
    from PIL import Image

    for i in range(40):
        Image.fromarray((torch.rand(12, 12) * 255).byte().numpy()).save(folder / f"{i}.png")
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--data", str(folder), "--checkpoint-every", "0"]
    assert train(whole, "vae", *common, "--epochs", "3") == 0
    assert train(split, "vae", *common, "--epochs", "1") == 0
    assert train(split, "vae", *common, "--epochs", "3", "--resume") == 0
    assert losses(split) == losses(whole) and len(losses(whole)) == 6


def test_max_steps_alone_is_not_cut_short_by_the_default_epochs(tmp_path):
    # 40 images at batch 16: 2 steps an epoch. --max-steps 12 used to stop after the default
    # 5 epochs' 10 steps; with --epochs given as well, both bound the run.
    folder = _image_folder(tmp_path / "data", 40, colour=False)
    common = ["--data", str(folder), "--checkpoint-every", "0"]
    assert train(tmp_path / "steps", "vae", *common, "--max-steps", "12") == 0
    assert len(losses(tmp_path / "steps")) == 12
    assert train(tmp_path / "both", "vae", *common, "--max-steps", "12", "--epochs", "2") == 0
    assert len(losses(tmp_path / "both")) == 4
    assert train(tmp_path / "default", "vae", *common) == 0
    assert len(losses(tmp_path / "default")) == 10


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_16_bit_grey_images_are_scaled_to_8_bits(tmp_path, channels):
    # PIL's convert("L") clipped 16-bit values at 255: every pixel of these came out white.
    import numpy as np
    from PIL import Image

    from autoenc_fast.train.data import image_folder

    folder = tmp_path / "g16"
    folder.mkdir()
    values = torch.randint(0, 65536, (3, 8, 8), dtype=torch.int32)
    for i, plane in enumerate(values):
        Image.fromarray(plane.numpy().astype(np.uint16)).save(folder / f"{i}.png")
    images = image_folder(folder, 8, channels, log=lambda line: None).images
    expected = (values.double() / 257).round().to(torch.uint8).unsqueeze(1)
    assert images.shape == (3, 3 if channels == 3 else 1, 8, 8)
    assert torch.equal(images, expected.expand_as(images))


def _image_folder(folder: Path, count: int, colour: bool) -> Path:
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        pixels = torch.rand(12, 12, 3) if colour else torch.rand(12, 12, 1).expand(-1, -1, 3)
        Image.fromarray((pixels * 255).byte().numpy()).save(folder / f"{i}.png")  # RGB PNGs, grey or not
    return folder


@pytest.mark.parametrize("family", ["ae", "vae"])
@pytest.mark.parametrize("colour, given, channels, line", [
    (True, [], 3, "images: 3 channels (RGB): --data holds colour images; --channels 1 trains on them in greyscale"),
    (True, ["--channels", "1"], 1, "images: 1 channel (greyscale): --channels 1"),
    (False, [], 1, "images: 1 channel (greyscale): every --data image is grey; --channels 3 would repeat it in RGB"),
    (None, [], 1, "images: 1 channel (greyscale): the embedded digits are greyscale; --channels 3 repeats them"),
    (None, ["--channels", "3"], 3, "images: 3 channels (RGB): --channels 3; the greyscale digits repeated in each"),
])
def test_ae_vae_channels_follow_the_data_unless_given(tmp_path, capsys, family, colour, given, channels, line):
    """ae/vae converted every --data image to greyscale, silently."""
    data = [] if colour is None else ["--data", str(_image_folder(tmp_path / "data", 4, colour))]
    run = tmp_path / "run"
    assert main(["train", family, "--out", str(run), "--batch-size", "4", "--no-speedup", "--device", "cpu",
                 *TINY[family], *data, *given, "--max-steps", "1"]) == 0
    assert line in capsys.readouterr().out
    assert json.loads((run / "args.json").read_text())["channels"] == channels


def test_resume_keeps_the_runs_channels_and_resumes_checkpoints_from_before_the_option(tmp_path, capsys):
    data = ["--data", str(_image_folder(tmp_path / "data", 8, colour=True))]
    run = tmp_path / "run"
    base = ["train", "vae", "--out", str(run), "--batch-size", "4", "--no-speedup", "--device", "cpu",
            *TINY["vae"], *data, "--checkpoint-every", "1"]
    assert main([*base, "--channels", "1", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-steps", "2", "--resume"]) == 0  # not inferred anew (3) from the colour images
    assert "images: 1 channel (greyscale): the run's, as it started (--resume)" in capsys.readouterr().out
    assert json.loads((run / "args.json").read_text())["channels"] == 1
    # A checkpoint written before --channels existed: its options lack it, and its run had 1.
    state_path = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["state"]
    state = torch.load(state_path, weights_only=True)
    del state["options"]["channels"]
    torch.save(state, state_path)
    assert main([*base, "--max-steps", "3", "--resume"]) == 0
    assert json.loads((run / "args.json").read_text())["channels"] == 1 and max(losses(run)) == 3
    assert main([*base, "--max-steps", "4", "--resume", "--channels", "3"]) == 2
    assert "--channels 3 (the run's: 1)" in capsys.readouterr().err


def test_killed_while_writing_a_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", "vae", "--out", str(run), "--batch-size", "16", "--no-speedup", "--device", "cpu",
            *TINY["vae"], "--max-steps", "8", "--checkpoint-every", "3"]
    crashed = subprocess.run([sys.executable, str(HERE / "crash_during_checkpoint.py"), "6", *args],
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 9, crashed.stderr
    pointer = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 3  # the half-written step 6 never became the latest
    assert main([*args, "--resume"]) == 0
    whole = tmp_path / "whole"
    assert train(whole, "vae", "--max-steps", "8", "--checkpoint-every", "3") == 0
    assert losses(run) == losses(whole)


def _ctrl_c_in_step(monkeypatch, at: int, when: str, times: int = 1) -> None:
    """Ctrl-C (a real SIGINT, `times` of them) during the vae's training step `at` (0-based),
    before or after the step's optimizer update."""
    family = FAMILIES["vae"]
    real_step = family.step

    def step(ctx, batch):
        press = lambda: [signal.raise_signal(signal.SIGINT) for _ in range(times)]  # noqa: E731
        if ctx.step == at and when == "before":
            press()
        metrics = real_step(ctx, batch)
        if ctx.step == at and when == "after":  # the weights are updated, the loop's counters not yet
            press()
        return metrics

    monkeypatch.setattr(family, "step", step)


@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_saves_the_last_completed_step_and_resumes_as_if_uninterrupted(tmp_path, monkeypatch, capsys,
                                                                              when):
    """Ctrl-C lost every step since the last checkpoint (none here before the epoch's end)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(whole, "vae", "--max-steps", "8") == 0
    handler = signal.getsignal(signal.SIGINT)
    _ctrl_c_in_step(monkeypatch, at=4, when=when)
    assert train(split, "vae", "--max-steps", "8") == 130
    err = capsys.readouterr().err
    assert err.endswith(f"autoenc-fast: interrupted: saved the run at step 5 in {split / 'checkpoints'}; "
                        "continue it with the same command and --resume\n") and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is handler  # given back
    assert json.loads((split / "checkpoints" / "latest.json").read_text())["step"] == 5
    assert sorted(losses(split)) == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    assert train(split, "vae", "--max-steps", "8", "--resume") == 0
    assert losses(split) == losses(whole)  # the step the interrupt landed in was neither lost nor repeated


def test_a_second_ctrl_c_quits_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    _ctrl_c_in_step(monkeypatch, at=2, when="before", times=2)
    assert train(tmp_path, "vae", "--max-steps", "8", "--checkpoint-every", "2") == 130
    err = capsys.readouterr().err
    assert err.endswith("autoenc-fast: interrupted again: quit without saving; the last good checkpoint (step 2) "
                        f"is kept in {tmp_path / 'checkpoints'}\n") and "Traceback" not in err
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 2


def test_ctrl_c_outside_training_is_one_line_not_a_traceback(monkeypatch, capsys):
    from autoenc_fast import bench

    monkeypatch.setattr(bench, "run_benchmarks", lambda **kwargs: signal.raise_signal(signal.SIGINT))
    assert main(["bench", "--quick", "--device", "cpu"]) == 130
    assert capsys.readouterr().err == "autoenc-fast: interrupted\n"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    family = FAMILIES["vae"]
    real_step = family.step

    def step_with_nan(ctx, batch):
        metrics = real_step(ctx, batch)
        return {**metrics, "loss": torch.tensor(float("nan"))} if ctx.step == 4 else metrics

    monkeypatch.setattr(family, "step", step_with_nan)
    assert train(tmp_path, "vae", "--max-steps", "8", "--checkpoint-every", "2") == 3
    message = capsys.readouterr().err
    assert "nan at step 5" in message and "step 4" in message
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 4


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds every allocation on Linux")
def test_an_image_size_too_large_for_the_memory_is_one_line_naming_the_size_options(tmp_path):
    """It was the CPU allocator's RuntimeError traceback, from resizing the data. The address
    space is bounded so the 66,943 GiB asked for fails whatever the kernel's overcommit."""
    import resource

    limit = 16 << 30
    result = subprocess.run(
        [sys.executable, "-m", "autoenc_fast", "train", "vae", "--out", str(tmp_path / "run"), "--device", "cpu",
         "--no-speedup", "--image-size", "100000"], capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "autoenc-fast: error: out of memory preparing the data (the embedded data set) at --image-size 100000 " \
        "and --batch-size 64 (one allocation of " in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.endswith(" GiB failed) on cpu; lower --image-size or --batch-size\n")
    assert not (tmp_path / "run").exists()


def test_out_of_memory_in_a_step_names_the_size_options_and_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    family = FAMILIES["vae"]
    real_step = family.step

    def step(ctx, batch):
        if ctx.step == 2:  # as torch.cuda raises it
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total ...")
        return real_step(ctx, batch)

    monkeypatch.setattr(family, "step", step)
    assert train(tmp_path, "vae", "--max-steps", "8", "--checkpoint-every", "2") == 3
    assert capsys.readouterr().err.endswith(
        "autoenc-fast: training stopped: out of memory in training step 3 at --image-size 16 and --batch-size 16 "
        "(one allocation of 20.00 GiB failed) on cpu; lower --image-size or --batch-size; the last good checkpoint "
        f"(step 2) is kept in {tmp_path / 'checkpoints'}\n")


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    assert train(tmp_path, "vae", "--max-steps", "2") == 0
    assert train(tmp_path, "vae", "--max-steps", "2") == 2
    assert "--resume" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_is_not_appended_to(tmp_path, monkeypatch, capsys):
    """A rerun into its --out appended to its metrics.jsonl: step 1 recorded twice."""
    family = FAMILIES["vae"]
    real_step = family.step
    monkeypatch.setattr(family, "step", lambda ctx, batch: {**real_step(ctx, batch), "loss": torch.tensor(
        float("nan"))} if ctx.step == 2 else real_step(ctx, batch))
    assert train(tmp_path, "vae", "--max-steps", "8", "--checkpoint-every", "0") == 3
    monkeypatch.setattr(family, "step", real_step)
    before = (tmp_path / "metrics.jsonl").read_text()
    assert sorted(losses(tmp_path)) == [1, 2] and not (tmp_path / "checkpoints").exists()
    capsys.readouterr()
    assert train(tmp_path, "vae", "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} holds the metrics.jsonl of an earlier run that stopped before its first checkpoint" \
        in err and f"remove {tmp_path / 'metrics.jsonl'} to start anew" in err
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_drops_metrics_past_the_checkpoint_and_a_cut_off_line(tmp_path, capsys):
    """A cut-off last line (a run killed mid-write) made --resume a JSONDecodeError traceback."""
    assert train(tmp_path, "vae", "--max-steps", "4", "--checkpoint-every", "2") == 0
    first = losses(tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "epoch": 1, "loss": 0.5}\n{"step": 6, "epo')
    assert train(tmp_path, "vae", "--max-steps", "6", "--resume") == 0
    assert "dropped 2 line(s) after the checkpoint's step 4 or cut off" in capsys.readouterr().out
    resumed = losses(tmp_path)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6] and resumed[5] != 0.5
    assert {k: resumed[k] for k in first} == first


@pytest.mark.parametrize("refused", [
    ["--resume"],  # nothing to resume
    ["--data", "missing-folder"],
    ["--image-size", "12"],  # no VAE of that size
])
def test_a_refused_run_creates_no_out_folder(tmp_path, refused):
    out = tmp_path / "new" / "run"
    assert main(["train", "vae", "--out", str(out), "--device", "cpu", "--no-speedup", *refused]) == 2
    assert not (tmp_path / "new").exists()


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path, capsys):
    assert train(tmp_path, "vae", "--max-steps", "2") == 0
    pointer = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    weights = tmp_path / "checkpoints" / pointer["weights"]
    state = tmp_path / "checkpoints" / pointer["state"]
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    assert train(tmp_path, "vae", "--max-steps", "4", "--resume") == 2
    assert "cannot read the weights" in capsys.readouterr().err
    weights.write_bytes(original)

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "autoenc_fast-1", "evil": Payload()}, state)
    assert train(tmp_path, "vae", "--max-steps", "4", "--resume") == 2
    _assert_unreadable_state(capsys.readouterr().err, state)
    # Random bytes, and a checkpoint cut short: the same one line, never torch's advice to
    # load with weights_only=False.
    state.write_bytes(os.urandom(300))
    assert train(tmp_path, "vae", "--max-steps", "4", "--resume") == 2
    _assert_unreadable_state(capsys.readouterr().err, state)
    torch.save({"format": "autoenc_fast-1", "step": 2, "noise": torch.randn(1000)}, state)
    state.write_bytes(state.read_bytes()[:-500])
    assert train(tmp_path, "vae", "--max-steps", "4", "--resume") == 2
    _assert_unreadable_state(capsys.readouterr().err, state)
    # Weights of another model under the run's own options: a clear error, not a traceback.
    # (Resuming with other model options is refused before, naming them: see
    # test_resume_refuses_options_that_change_the_run.)
    other, bigger = tmp_path / "other", tmp_path / "bigger"
    assert train(other, "vae", "--max-steps", "1") == 0
    assert train(bigger, "vae", "--max-steps", "1", "--latent-dim", "6") == 0
    def latest_weights(run):
        return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["weights"]

    latest_weights(other).write_bytes(latest_weights(bigger).read_bytes())
    assert train(other, "vae", "--max-steps", "2", "--resume") == 2
    assert "does not fit this model" in capsys.readouterr().err


def _assert_unreadable_state(err: str, state: Path) -> None:
    assert err.strip() == f"autoenc-fast: error: {state} is not a readable checkpoint: it is corrupt or " \
        "truncated, or holds more than tensors and plain values (never loaded: that could run code)"


def test_checkpoint_files_follow_the_umask(tmp_path):
    """safetensors' save_file wrote the weights 0600, every other file followed the umask."""
    previous = os.umask(0o027)
    try:
        assert train(tmp_path, "vae", "--max-steps", "1") == 0
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o640" for p in files}


def test_sample_grid_starts_each_kind_on_a_row_of_its_own():
    """Under 8 a batch, inputs, outputs and samples ran together in the rows of 8."""
    from autoenc_fast.train.images import grid

    kinds = [torch.rand(3, 1, 5, 5), torch.rand(3, 3, 5, 5), torch.rand(5, 3, 5, 5)]
    canvas = grid(kinds, per_row=4, pad=1)
    assert canvas.shape == (3, 4 * 6 + 1, 4 * 6 + 1)  # rows: 3 | 3 | 4 + 1; columns: 4

    def at(row, column):
        return canvas[:, 1 + row * 6:row * 6 + 6, 1 + column * 6:column * 6 + 6]

    assert torch.equal(at(0, 2), kinds[0][2].expand(3, -1, -1))
    assert torch.equal(at(1, 0), kinds[1][0]) and torch.equal(at(1, 3), torch.ones(3, 5, 5))
    assert torch.equal(at(2, 3), kinds[2][3]) and torch.equal(at(3, 0), kinds[2][4])


def test_vae_pictures_keep_their_rows_at_a_small_batch(tmp_path):
    from PIL import Image

    assert main(["train", "vae", "--out", str(tmp_path), "--batch-size", "4", "--no-speedup", "--device", "cpu",
                 *TINY["vae"], "--max-steps", "1"]) == 0
    picture = Image.open(next(tmp_path.glob("samples_epoch*.png")))
    scale = 256 // 16 // 2  # 16-pixel images, enlarged
    # 4 inputs, 4 reconstructions, 16 samples in 2 rows of 8
    assert picture.size == ((8 * 18 + 2) * scale, (4 * 18 + 2) * scale)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims a huge image: a decompression bomb's first bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_bad_data_folders(tmp_path, capsys):
    from PIL import Image

    assert train(tmp_path / "r1", "vae", "--data", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(tmp_path / "r2", "vae", "--data", str(empty)) == 2
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes(_png_bytes(Image)[:60])
    (bad / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    (bad / "text.jpg").write_text("not an image")
    assert train(tmp_path / "r3", "vae", "--data", str(bad)) == 2
    err = capsys.readouterr().err
    assert "none of the 3 image file(s)" in err and "Traceback" not in err
    for i in range(20):
        Image.fromarray((torch.rand(10, 10) * 255).byte().numpy()).save(bad / f"good{i}.png")
    assert train(tmp_path / "r4", "vae", "--data", str(bad), "--max-steps", "1") == 0
    assert "skipped 3 unreadable, truncated or oversized image(s)" in capsys.readouterr().out


def test_data_folders_are_read_at_any_depth_in_sorted_order_skipping_hidden_names(tmp_path, capsys):
    """Images in subfolders (torchvision ImageFolder's root/class/x.png) were silently ignored:
    only the top level was read, so a class-per-folder data set had "no image files"."""
    from PIL import Image

    from autoenc_fast.train.data import image_folder, paired_folder

    root = tmp_path / "data"
    in_order = ["0.png", "a/1.png", "a/2.PNG", "a/deeper/3.png", "b/1.bmp"]  # folder by folder, names sorted
    hidden = [".5.png", "a/._2.png", ".cache/6.png"]  # dot files and folders, as ls and ImageFolder hide them
    for value, name in enumerate(in_order + hidden):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(torch.full((4, 4), value * 20, dtype=torch.uint8).numpy()).save(root / name)
    (root / "b" / "up").symlink_to(root)  # a loop: each folder is still read once
    assert image_folder(root, 4, channels=1).images[:, 0, 0, 0].tolist() == [0, 20, 40, 60, 80]

    nested_only = tmp_path / "classes"
    for i in range(16):
        (nested_only / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(12, 12) * 255).byte().numpy()
        Image.fromarray(pixels).save(nested_only / f"class_{i % 2}" / f"{i}.png")
    assert train(tmp_path / "r1", "vae", "--data", str(nested_only), "--max-steps", "1") == 0

    # GauGAN pairs an image with the label map at the same path under labels/ (city/1, town/1).
    pairs = tmp_path / "pairs"
    for sub in ("city", "town"):
        (pairs / "images" / sub).mkdir(parents=True)
        (pairs / "labels" / sub).mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(pairs / "images" / sub / "1.jpg")
        Image.new("L", (6, 6)).save(pairs / "labels" / sub / "1.png")
    assert len(paired_folder(pairs, 8, log=print)) == 2

    empty = tmp_path / "empty"
    (empty / "sub" / ".hidden").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("")
    Image.new("L", (4, 4)).save(empty / "sub" / ".hidden" / "x.png")
    capsys.readouterr()
    assert train(tmp_path / "r2", "vae", "--data", str(empty)) == 2
    assert f"autoenc-fast: error: --data: {empty} holds no image files (" in capsys.readouterr().err


def _png_bytes(Image) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray((torch.rand(32, 32) * 255).byte().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def torchrun_train(run: Path, family: str, batch_size: int, steps: int, *extra: str,
                   program: tuple = ("-m", "autoenc_fast"), failing: bool = False) -> str:
    """`torchrun --nproc_per_node=2 -m autoenc_fast train FAMILY` on the CPU (gloo); its stdout
    (its stderr when `failing`: a run expected to stop with an error)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *program, "train", family, "--out", str(run), "--batch-size", str(batch_size),
         "--device", "cpu", *TINY[family], "--max-steps", str(steps), *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (result.returncode != 0) == failing, result.stderr[-3000:]
    return result.stderr if failing else result.stdout


def test_torchrun_two_cpu_processes(tmp_path):
    run = tmp_path / "run"
    out = torchrun_train(run, "vae", batch_size=8, steps=3)
    assert sorted(losses(run)) == [1, 2, 3]  # rank 0 alone wrote the metrics, once per step
    # Rank 0 alone prints the summary (no process printed it).
    assert [line for line in out.splitlines() if line.startswith("trained vae (fused): 3 steps in")] != []
    assert out.count("trained vae") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    # One process would shard the data differently from the two the run started with.
    assert main(["train", "vae", "--out", str(run), "--batch-size", "8", "--no-speedup", "--device", "cpu",
                 *TINY["vae"], "--max-steps", "5", "--resume"]) == 2


def test_torchrun_resume_continues_every_rank_s_own_random_stream(tmp_path):
    # Each rank draws its own reparametrization noise. The checkpoint held rank 0's RNG state
    # alone, which every rank took on resume: the losses then left the uninterrupted run's.
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun_train(whole, "vae", 8, 6, "--no-speedup")
    torchrun_train(split, "vae", 8, 3, "--no-speedup")
    torchrun_train(split, "vae", 8, 6, "--no-speedup", "--resume")
    assert losses(split) == losses(whole) and len(losses(whole)) == 6


def test_torchrun_ctrl_c_saves_the_step_every_rank_reached(tmp_path):
    """Each rank gets its own SIGINT, here a step apart: they must agree on the step to save
    at (the checkpoint gathers every rank's RNG state) and to stop after."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun_train(whole, "vae", 8, 6, "--no-speedup")
    err = torchrun_train(split, "vae", 8, 6, "--no-speedup", failing=True,
                         program=(str(HERE / "ctrl_c_at_step.py"), "2"))  # rank 0 in step 3, rank 1 in step 4
    assert f"autoenc-fast: interrupted: saved the run at step 3 in {split / 'checkpoints'}" in err
    assert err.count("autoenc-fast: interrupted") == 1  # rank 0 alone writes files, and says so
    torchrun_train(split, "vae", 8, 6, "--no-speedup", "--resume")
    assert losses(split) == losses(whole) and len(losses(whole)) == 6


def test_bench_quick(capsys):
    assert main(["bench", "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reparametrize_kl" in out and "x eager" in out
    assert f"{torch.get_num_threads()} CPU threads" in out
    if platform.libc_ver()[0] == "glibc":  # mallopt is glibc's
        assert "malloc: freed memory kept" in out


def test_bench_keeps_each_row_as_it_is_measured(tmp_path, capsys):
    # The GPU check stops the bench at a time limit: every finished row must already be in
    # the JSON file and on stderr by then, not only at the end.
    from autoenc_fast.bench import run_benchmarks

    seen = []
    rows = run_benchmarks(device="cpu", quick=True, ops=["channelwise_fc"], families=["vae"], on_row=seen.append)
    assert seen == rows and [r["op"] for r in rows] == ["channelwise_fc", "step:vae"]
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--device", "cpu", "--op", "channelwise_fc", "--json", str(out)]) == 0
    assert "channelwise_fc 16x256x6x6 full: ours" in capsys.readouterr().err
    assert [r["op"] for r in json.loads(out.read_text())] == ["channelwise_fc"]
    assert not (tmp_path / "bench.json.tmp").exists()


def test_bench_runs_only_what_is_named(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--model", "vae"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows == ["step:vae"]
    assert main(["bench", "--quick", "--device", "cpu", "--op", "channelwise_fc", "--model", "vae"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows == ["channelwise_fc", "step:vae"]
    assert main(["bench", "--quick", "--device", "cpu", "--model", "vae", "--amp", "fp32", "--amp", "bf16"]) == 0
    rows = [line.split()[:5] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert [r[:4] for r in rows] == [["step:vae", "batch", "8", "train"]] * 2
    assert [r[4] == "bf16" for r in rows] == [False, True]
    assert main(["bench", "--quick", "--device", "cpu", "--model", "gaugan_generator",
                 "--layout", "contiguous", "--layout", "channels_last"]) == 0
    rows = [line.split()[:5] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert [r[:4] for r in rows] == [["step:gaugan_generator", "batch", "2", "train"]] * 2
    assert [r[4] == "channels_last" for r in rows] == [False, True]


@pytest.mark.parametrize("family", ["conv_autoencoder", "vae", "context_encoder", "gaugan_generator"])
def test_bench_model_step_under_bf16_autocast(family):
    """The CUDA bench also times each model step under bfloat16 autocast: the step runs
    (here on the CPU, small sizes) for both backends, changes the parameters and keeps
    them float32 (autocast, not a cast of the model)."""
    from autoenc_fast.bench import make_model_step, step_peak_mib

    for provider in ("ours", "eager"):
        torch.manual_seed(0)
        step = make_model_step(family, provider, "cpu", "quick", amp="bf16")
        model_params = list(step.model.parameters())
        before = [p.detach().clone() for p in model_params]
        step()
        assert model_params and all(p.dtype == torch.float32 for p in model_params)
        assert any(not torch.equal(b, p) for b, p in zip(before, model_params))
        assert all(torch.isfinite(p).all() for p in model_params)
    assert step_peak_mib(step, "cpu") is None
    with pytest.raises(ValueError, match="amp"):
        make_model_step(family, "ours", "cpu", "quick", amp="fp8")


def test_bench_model_step_in_channels_last():
    """layout="channels_last" converts the model's convolution weights (weight_orig under
    spectral norm) and its image inputs, and the step trains."""
    from autoenc_fast.bench import make_model_step

    step = make_model_step("gaugan_generator", "ours", "cpu", "quick", layout="channels_last")
    weights = [p for p in step.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    assert any(not torch.equal(b, p) for b, p in zip(before, step.model.parameters()))
    with pytest.raises(ValueError, match="layout"):
        make_model_step("vae", "ours", "cpu", "quick", layout="nhwc")


def test_bench_table_shows_cuda_step_peak_memory():
    """CUDA model rows carry each provider's step peak memory; the table prints them
    (no CPU run produces them, so a row is made up here)."""
    from autoenc_fast.bench import format_table

    row = {"op": "step:vae", "shape": [128], "mode": "train bf16", "device": "cuda", "torch": "x",
           "cpu_threads": 16, "ours_ms": 2.0, "eager_ms": 3.0, "compiled_ms": 2.5, "speedup_vs_eager": 1.5,
           "speedup_vs_compiled": 1.25, "ours_peak_mib": 101.4, "eager_peak_mib": 230.0, "compiled_peak_mib": 180.6}
    assert format_table([row]).splitlines()[-1].endswith("step peak MiB 101 / 230 / 181")


def test_bench_refuses_an_unknown_op_or_model(capsys):
    """A misspelt name used to print an empty table and exit 0."""
    for flag, name in (("--op", "reparametrise_kl"), ("--model", "gaugan")):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--quick", "--device", "cpu", flag, name])
        assert exc.value.code == 2
        assert f"invalid choice: '{name}'" in capsys.readouterr().err
    from autoenc_fast.bench import run_benchmarks

    with pytest.raises(ValueError, match=r"unknown ops \['spade'\]"):
        run_benchmarks(device="cpu", quick=True, ops=["spade"])


def test_bench_refuses_no_models_with_a_model(capsys):
    """--no-models --model vae used to time the vae step silently."""
    assert main(["bench", "--quick", "--device", "cpu", "--no-models", "--model", "vae"]) == 2
    assert "error: --no-models and --model contradict each other" in capsys.readouterr().err


def test_bench_times_providers_side_by_side():
    """Providers are timed in alternating rounds (after one warm-up call each), not one
    after the other, so a drift in the machine's speed does not skew their ratios."""
    import itertools

    from autoenc_fast.bench import time_side_by_side_ms

    calls = []
    times = time_side_by_side_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 0.03,
                                 rounds=3)
    assert [name for name, _ in itertools.groupby(calls)] == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


def test_bench_times_with_every_thread_the_user_has():
    """torch.utils.benchmark.Timer runs one thread unless told otherwise (seen: every CPU
    number of the bench command was single-threaded)."""
    from autoenc_fast.bench import time_median_ms

    seen = []
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        time_median_ms(lambda: seen.append(torch.get_num_threads()), 0.01)
    finally:
        torch.set_num_threads(previous)
    assert set(seen) == {2}


def test_gaugan_trains_on_a_paired_folder_and_skips_a_mismatched_pair(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(10):
        Image.fromarray((torch.rand(24, 24, 3) * 255).byte().numpy()).save(root / "images" / f"scene{i}.png")
        Image.fromarray(torch.randint(0, 4, (24, 24), dtype=torch.uint8).numpy()).save(root / "labels" / f"scene{i}.png")
    # A pair whose label map has another size than its image: skipped, counted, logged.
    Image.fromarray((torch.rand(24, 24, 3) * 255).byte().numpy()).save(root / "images" / "odd.png")
    Image.fromarray(torch.randint(0, 4, (20, 20), dtype=torch.uint8).numpy()).save(root / "labels" / "odd.png")
    run = tmp_path / "run"
    assert main(["train", "gaugan", "--out", str(run), "--batch-size", "4", "--no-speedup", "--device", "cpu",
                 *TINY["gaugan"], "--data", str(root), "--max-steps", "2"]) == 0
    assert "skipped odd" in capsys.readouterr().out
    assert sorted(losses(run)) == [1, 2]
    args = json.loads((run / "args.json").read_text())
    assert args["label_nc"] == 4  # the largest class id in the label maps + 1
    assert list(run.glob("samples_epoch*.png"))


def _paired_folder(root: Path, labels: dict) -> Path:
    """root/images/NAME.png (random RGB) and root/labels/NAME.png (the given PIL images)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, label in labels.items():
        Image.fromarray((torch.rand(label.height, label.width, 3) * 255).byte().numpy()).save(
            root / "images" / f"{name}.png")
        label.save(root / "labels" / f"{name}.png")
    return root


def test_gaugan_label_maps_are_read_as_the_class_ids_stored(tmp_path):
    """Label maps went through convert("L"): a palette PNG's ids became their colours'
    brightness (0-3 -> 0, 38, 75, 113), a 16-bit one's ids above 255 were clipped."""
    from PIL import Image

    from autoenc_fast.train import data

    palette_ids = torch.randint(0, 4, (12, 12), dtype=torch.uint8)
    palette = Image.fromarray(palette_ids.numpy(), mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200])
    wide_ids = torch.randint(0, 1000, (12, 12), dtype=torch.int32)
    wide_ids[0, 0] = 999
    wide = Image.fromarray(wide_ids.numpy().astype("uint16"))
    grey_ids = torch.randint(0, 7, (12, 12), dtype=torch.uint8)
    root = _paired_folder(tmp_path / "pairs", {"a": palette, "b": wide, "c": Image.fromarray(grey_ids.numpy())})
    assert Image.open(root / "labels" / "a.png").mode == "P" and Image.open(root / "labels" / "b.png").mode == "I;16"
    read = data.paired_folder(root, 12, log=lambda _: None).extra["labels"]
    assert torch.equal(read[0].long(), palette_ids.long())
    assert torch.equal(read[1].long(), wide_ids.long())
    assert torch.equal(read[2].long(), grey_ids.long())


def test_gaugan_refuses_a_batch_of_one_at_a_1x1_latent_naming_the_option(tmp_path, capsys):
    # Batch statistics of one value per channel: spade_norm's error came as a traceback from
    # the first step, after the run folder was made.
    run = tmp_path / "run"
    assert main(["train", "gaugan", "--out", str(run), "--device", "cpu", "--no-speedup", *TINY["gaugan"],
                 "--batch-size", "1", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 1: GauGAN's batch statistics at its 1x1 latent map (--image-size 32) need at least 2 " \
        "images a step over all processes" in err and "Traceback" not in err
    assert not run.exists()
    assert main(["train", "gaugan", "--out", str(run), "--device", "cpu", "--no-speedup", "--ngf", "2",
                 "--ndf", "4", "--z-dim", "4", "--spade-hidden", "4", "--n-layers-d", "2", "--image-size", "64",
                 "--batch-size", "1", "--max-steps", "1"]) == 0  # a 2x2 latent map: 4 values a channel


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_gaugan_refuses_a_colour_coded_label_map_naming_it(tmp_path, capsys, mode):
    from PIL import Image

    colours = Image.fromarray((torch.rand(12, 12, len(mode)) * 255).byte().numpy(), mode=mode)
    ids = Image.fromarray(torch.randint(0, 3, (12, 12), dtype=torch.uint8).numpy())
    root = _paired_folder(tmp_path / "pairs", {"a": ids, "b": colours})
    assert main(["train", "gaugan", "--out", str(tmp_path / "run"), "--device", "cpu", "--no-speedup",
                 *TINY["gaugan"], "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"the label map {root / 'labels' / 'b.png'} has the PIL mode {mode}; label maps hold one class id" in err
    assert "Traceback" not in err


def test_gaugan_torchrun_two_cpu_processes_synchronizes_spade_batch_norm(tmp_path):
    # Two ranks: SPADE's "syncbatch" all-reduces its statistics over the default process group.
    run = tmp_path / "run"
    torchrun_train(run, "gaugan", batch_size=2, steps=2)
    assert sorted(losses(run)) == [1, 2]
    assert json.loads((run / "summary.json").read_text())["processes"] == 2


@pytest.mark.parametrize("family, option, value, message", [
    ("vae", "--batch-size", "0", "argument --batch-size: must be an int >= 1; got 0"),
    ("vae", "--batch-size", "-1", "argument --batch-size: must be an int >= 1; got -1"),
    ("vae", "--epochs", "0", "argument --epochs: must be an int >= 1; got 0"),
    ("vae", "--max-steps", "-3", "argument --max-steps: must be an int >= 0; got -3"),
    ("vae", "--checkpoint-every", "-1", "argument --checkpoint-every: must be an int >= 0; got -1"),
    ("vae", "--lr", "-1", "argument --lr: must be a finite number > 0; got -1"),
    ("vae", "--lr", "nan", "argument --lr: must be a finite number > 0; got nan"),
    ("vae", "--beta", "-1", "argument --beta: must be a finite number >= 0; got -1"),
    ("vae", "--latent-dim", "0", "argument --latent-dim: must be an int >= 1; got 0"),
    ("context-encoder", "--overlap", "-1", "argument --overlap: must be an int >= 0; got -1"),
    ("gaugan", "--label-nc", "0", "argument --label-nc: must be an int >= 1; got 0"),
    ("gaugan", "--lambda-feat", "inf", "argument --lambda-feat: must be a finite number >= 0; got inf"),
    ("ae", "--image-size", "x", "argument --image-size: must be an int >= 1; got 'x'"),
    ("vae", "--seed", "99999999999999999999", "argument --seed: must be an int from -9223372036854775808 to "
                                              "9223372036854775807 (a signed 64-bit seed); got 99999999999999999999"),
    ("vae", "--seed", "1.5", "argument --seed: must be an int; got '1.5'"),
])
def test_train_refuses_an_option_out_of_range_before_training(tmp_path, capsys, family, option, value, message):
    """These crashed inside training with a traceback (a ZeroDivisionError for --batch-size 0,
    a format error on the missing final loss for --epochs 0) or ran silently (--checkpoint-every -1)."""
    with pytest.raises(SystemExit) as exc:
        main(["train", family, "--out", str(tmp_path / "run"), option, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,usage", [(["train", "vae", "--bogus", "1"], "usage: autoenc-fast train vae "),
                                        (["bench", "--bogus"], "usage: autoenc-fast bench "),
                                        (["info", "--bogus"], "usage: autoenc-fast info ")])
def test_unknown_option_is_reported_with_its_commands_usage(tmp_path, capsys, argv, usage):
    """`train vae --bogus` printed the top level's usage (`autoenc-fast [-h] {info,bench,train}`),
    which does not show the options the user was looking for."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(usage)
    assert f"error: unrecognized arguments: {' '.join(argv[argv.index('--bogus'):])}" in err


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_help_shows_the_defaults(capsys, family):
    with pytest.raises(SystemExit):
        main(["train", family, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fam = FAMILIES[family]
    for option, default in (("--batch-size BATCH_SIZE", fam.batch_size), ("--image-size IMAGE_SIZE", fam.image_size),
                            ("--lr LR", f"{fam.lr:g}"), ("--seed SEED", 0)):
        start = text.index(f" {option} ", text.index("options:"))
        assert f"(default {default})" in text[start:text.index(" --", start + len(option) + 2)], option


@pytest.mark.parametrize("family, extra, message", [
    ("vae", ["--image-size", "12"], "the options make no valid vae model: VAE: `image_size` must be a multiple"),
    ("ae", ["--image-size", "20"], "the options make no valid ae model: ConvAutoencoder: `image_size` must be >= 67"),
    ("context-encoder", ["--image-size", "16", "--overlap", "9"],
     "the options make no valid context-encoder model: center_mask: `overlap` must be in [0, 4)"),
    ("gaugan", ["--image-size", "33"], "the options make no valid gaugan model: SPADEGenerator: `crop_size`"),
])
def test_train_reports_a_model_its_options_cannot_make_in_one_line(tmp_path, capsys, family, extra, message):
    assert main(["train", family, "--out", str(tmp_path / "run"), "--device", "cpu", "--no-speedup", *extra]) == 2
    err = capsys.readouterr().err
    assert f"autoenc-fast: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("file, out, message", [
    ("run", "run", "--out {out} is a file, not a folder"),
    # A file above --out, or at its checkpoints/, failed mkdir with a NotADirectoryError or
    # FileExistsError traceback once the data was decoded (checkpoints/: after the first steps).
    ("runs", "runs/vae/1", "--out {out}: {file} is a file, not a folder"),
    ("run/checkpoints", "run", "--out {out}: {file} is a file, not a folder"),
])
def test_train_refuses_an_out_that_is_or_lies_in_a_file(tmp_path, capsys, monkeypatch, file, out, message):
    file, out = tmp_path / file, tmp_path / out
    file.parent.mkdir(exist_ok=True)
    file.write_text("not a folder")
    family = FAMILIES["vae"]
    monkeypatch.setattr(family, "dataset", lambda *a: pytest.fail("the data was read before --out was checked"))
    assert main(["train", "vae", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message.format(out=out, file=file) in err and "Traceback" not in err
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("flag", ["--json", "--png"])
@pytest.mark.parametrize("target, message", [
    ("missing/out.file", "{flag} {target}: the folder {tmp}/missing does not exist"),
    # These measured every row, then failed writing the file with an IsADirectoryError or
    # NotADirectoryError traceback.
    (".", "{flag} {target} is a folder; name a file"),
    ("a-file/out.file", "{flag} {target}: {tmp}/a-file is a file, not a folder"),
])
def test_bench_refuses_an_output_it_cannot_write_before_measuring(tmp_path, capsys, flag, target, message):
    """It used to measure the first row, then fail writing the file with a traceback."""
    (tmp_path / "a-file").write_text("")
    target = tmp_path / target
    assert main(["bench", "--quick", "--device", "cpu", "--op", "reparametrize_kl", "--no-models",
                 flag, str(target)]) == 2
    captured = capsys.readouterr()
    assert message.format(flag=flag, target=target, tmp=tmp_path) in captured.err
    assert "reparametrize_kl" not in captured.out + captured.err  # nothing was measured


@pytest.mark.parametrize("family, extra, hidden, absent", [
    ("vae", [], ["tqdm", "matplotlib"], "tqdm, matplotlib"),
    ("ae", [], ["sklearn"], "scikit-learn"),
    ("context-encoder", [], ["skimage", "safetensors"], "safetensors, scikit-image"),
    ("gaugan", [], ["PIL"], "pillow"),
])
def test_train_names_missing_extras_before_it_writes_anything(tmp_path, capsys, monkeypatch, family, extra,
                                                               hidden, absent):
    """tqdm failed at the start with a traceback, safetensors at the first checkpoint,
    matplotlib after the first epoch (whose checkpoint then refused a plain rerun)."""
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    assert train(tmp_path / "run", family, *extra) == 2
    err = capsys.readouterr().err
    assert err == (f"autoenc-fast: error: autoenc-fast train {family} needs packages that are not installed: "
                   f"{absent}. Install the training extras with `pip install --no-build-isolation -e \".[train]\"` "
                   f"in the autoenc_fast source folder (or `pip install {absent.replace(', ', ' ')}`)\n")
    assert not (tmp_path / "run").exists()


def test_train_on_a_folder_does_not_need_the_embedded_data_sets_packages(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(12, 12) * 255).byte().numpy()).save(folder / f"{i}.png")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["train", "vae", "--out", str(tmp_path / "run"), "--batch-size", "4", "--no-speedup",
                 "--device", "cpu", *TINY["vae"], "--data", str(folder), "--max-steps", "1"]) == 0


def test_bench_png_needs_matplotlib_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    target = tmp_path / "chart.png"
    assert main(["bench", "--quick", "--device", "cpu", "--op", "reparametrize_kl", "--no-models",
                 "--png", str(target)]) == 2
    captured = capsys.readouterr()
    assert f"--png {target} needs packages that are not installed: matplotlib." in captured.err
    assert "reparametrize_kl" not in captured.out + captured.err  # nothing was measured


@pytest.mark.parametrize("changed, message", [
    (["--lr", "0.1"], "--lr 0.1 (the run's: 0.001)"),  # the restored optimizer state would override it
    (["--batch-size", "8"], "--batch-size 8 (the run's: 16)"),
    (["--seed", "3"], "--seed 3 (the run's: 0)"),
    (["--beta", "0.5"], "--beta 0.5 (the run's: 1.0)"),
])
def test_resume_refuses_options_that_change_the_run(tmp_path, capsys, changed, message):
    run = tmp_path / "run"
    assert train(run, "vae", "--max-steps", "4", "--checkpoint-every", "2") == 0
    before = (run / "checkpoints" / "latest.json").read_text()
    args = ["train", "vae", "--out", str(run), "--batch-size", "16", "--no-speedup", "--device", "cpu",
            *TINY["vae"], "--max-steps", "6", "--resume", *changed]  # a later option wins
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume continues the run with the options it started with" in err and message in err
    assert (run / "checkpoints" / "latest.json").read_text() == before  # nothing trained, nothing written


def test_resume_may_change_how_long_and_where_a_run_goes(tmp_path):
    run = tmp_path / "run"
    assert train(run, "vae", "--max-steps", "4", "--checkpoint-every", "2") == 0
    assert train(run, "vae", "--max-steps", "6", "--epochs", "9", "--checkpoint-every", "3", "--backend",
                 "reference", "--resume") == 0
    assert max(losses(run)) == 6


# ---------------------------------------------------------------- the optimizer


def _step_together(optimizers, seeds):
    """For each seed, the same fresh random gradients on every optimizer's parameters, then
    a step of each."""
    for seed in seeds:
        for optimizer in optimizers:
            gen = torch.Generator().manual_seed(seed)
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            optimizer.step()


def _params(optimizer):
    return optimizer.param_groups[0]["params"]


def test_adam_is_fused_on_the_cpu_and_steps_as_torchs_default():
    ours_params = [torch.randn(5, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    start = [p.clone() for p in ours_params]
    ours = adam(ours_params, lr=1e-2, betas=(0.5, 0.999))
    plain = torch.optim.Adam([p.clone() for p in ours_params], lr=1e-2, betas=(0.5, 0.999))
    assert ours.defaults["fused"] is True and not plain.defaults["fused"]
    _step_together([ours, plain], range(4))
    for p, q, p0 in zip(_params(ours), _params(plain), start):
        assert (p - p0).abs().min() > 0 and (p - q).abs().max() < 1e-12


def test_adam_keeps_the_default_where_there_is_no_fused_kernel():
    meta = adam([torch.empty(4, device="meta", requires_grad=True)], lr=1e-3)
    assert meta.defaults["fused"] is None and meta.defaults["foreach"] is None


def test_adam_resumes_the_state_of_torchs_default_adam():
    """Checkpoints written before the fused optimizer hold the default Adam's state (and
    its settings, which PyTorch restores with it): loaded into ours, the run continues
    exactly as the default would."""
    before = torch.optim.Adam([torch.randn(6, 2, dtype=torch.float64)], lr=1e-2)
    _step_together([before], [0])
    trained = _params(before)[0].detach()
    ours, plain = adam([trained.clone()], lr=1e-2), torch.optim.Adam([trained.clone()], lr=1e-2)
    # deep copies: loading keeps the saved tensors themselves where dtype and device match
    ours.load_state_dict(copy.deepcopy(before.state_dict()))
    plain.load_state_dict(copy.deepcopy(before.state_dict()))
    _step_together([ours, plain], (1, 2))
    got, want = _params(ours)[0], _params(plain)[0]
    assert (got - trained).abs().min() > 0 and torch.equal(got, want)


def test_adam_resumes_its_own_state():
    first = adam([torch.randn(3, 4)], lr=1e-2)
    _step_together([first], [0])
    resumed = adam([_params(first)[0].detach().clone()], lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    _step_together([first, resumed], [1])
    assert resumed.param_groups[0]["fused"] is True
    assert torch.equal(_params(resumed)[0], _params(first)[0])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_with_the_fused_adam_on_the_cpu(family):
    from autoenc_fast.cli import build_parser

    fam = FAMILIES[family]
    # else read from the data set
    from_data = {"gaugan": ["--label-nc", "6"], "ae": ["--channels", "1"], "vae": ["--channels", "1"]}
    args = build_parser().parse_args(["train", family, *TINY[family], *from_data.get(family, [])])
    optimizers = fam.optimizers(fam.build(args), args)
    assert optimizers and all(o.defaults["fused"] is True for o in optimizers.values())

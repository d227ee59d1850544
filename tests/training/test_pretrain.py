"""Pretraining: DDP equals one process on the concatenated batch; kill-and-resume is bit-exact; torchrun runs
`cavsync train` (the one entry point, with the settings' ffmpeg) on every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from model import CAVMAESync, preset
from model.media import ffmpeg_binary
from training.config import TrainConfig, from_flags
from training.distributed import Dist
from training.pretrain import lr_factor, micro_batch_size, train_step

REPO = Path(__file__).resolve().parents[2]
SMALL = {"modality_depth": 1, "decoder_depth": 1}


def _batches(steps: int, size: int) -> list[dict]:
    cfg = preset("tiny", **SMALL)
    gen = torch.Generator().manual_seed(42)
    return [
        {
            "audio": torch.randn(size, cfg.audio_frames, cfg.mel_bins, generator=gen),
            "frame": torch.randn(size, 3, cfg.image_size, cfg.image_size, generator=gen),
            "mask_noise_audio": torch.rand(size, cfg.num_audio_patches, generator=gen),
            "mask_noise_visual": torch.rand(size, cfg.num_visual_patches, generator=gen),
            "index": torch.arange(size),
        }
        for _ in range(steps)
    ]


def _config(tmp: Path) -> TrainConfig:
    return TrainConfig(data="unused", out_dir=str(tmp), preset="tiny", batch_size=8, lr=1e-3, clip_grad_norm=1.0)


def _run_steps(model: torch.nn.Module, batches: list[dict], rows: slice, cfg: TrainConfig, dist: Dist) -> None:
    # SGD, not Adam: Adam turns rounding noise in gradients that are zero in exact arithmetic (the key
    # bias of attention) into full-size steps, so it cannot tell a real difference from reordering.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for batch in batches:
        train_step(model, [{k: v[rows] for k, v in batch.items()}], optimizer, cfg, dist)


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny", **SMALL))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    cfg = _config(Path(out).parent)
    _run_steps(ddp, _batches(3, 8), slice(rank * 4, (rank + 1) * 4), cfg, Dist(rank, world, 0, torch.device("cpu")))
    if rank == 0:
        torch.save(model.state_dict(), out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.integration
def test_two_process_ddp_equals_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = CAVMAESync(preset("tiny", **SMALL))
    _run_steps(single, _batches(3, 8), slice(0, 8), _config(tmp_path), Dist(0, 1, 0, torch.device("cpu")))
    ddp_state = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    initial = CAVMAESync(preset("tiny", **SMALL)).state_dict()
    assert single.state_dict().keys() == ddp_state.keys()
    for name, value in single.state_dict().items():
        assert torch.allclose(value, ddp_state[name], atol=1e-6, rtol=1e-5), name
    moved = [n for n, v in single.state_dict().items() if not torch.equal(v, initial[n])]
    assert len(moved) > 50, "training did not change the weights"


def _train_cmd(corpus: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cavsync",
        "train",
        "--data",
        str(corpus),
        "--out-dir",
        str(out),
        "--preset",
        "tiny",
        "--model-overrides",
        '{"modality_depth": 1, "decoder_depth": 1}',
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "1",
        "--cache-dir",
        str(out / "cache"),
        "--lr",
        "0.001",
    ]


def _last_step(out: Path) -> int:
    path = out / "last.ckpt"
    if not path.exists():
        return 0
    try:
        return torch.load(path, weights_only=True)["progress"]["step"]
    except Exception:  # being replaced right now
        return 0


@pytest.mark.integration
@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(synth_corpus: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(synth_corpus, straight), check=True, cwd=REPO, env=env, timeout=300, capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        _train_cmd(synth_corpus, resumed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while _last_step(resumed) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _last_step(resumed)
    assert 4 <= killed_at < 12, f"the run was not interrupted mid-way (step {killed_at})"
    subprocess.run(_train_cmd(synth_corpus, resumed), check=True, cwd=REPO, env=env, timeout=300, capture_output=True)

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert torch.load(resumed / "last.ckpt", weights_only=True)["progress"]["step"] == 12


def test_schedule_and_batch_arithmetic() -> None:
    total = 100
    factors = [lr_factor(s, total, 0.1, 0.1) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1, abs=0.01) and all(
        a >= b for a, b in zip(factors[9:], factors[10:], strict=False)
    )
    cfg = TrainConfig(data="d", out_dir="o", batch_size=64, grad_accum=2)
    assert micro_batch_size(cfg, 4) == 8 and cfg.learning_rate == pytest.approx(2e-4 * 64 / 512)
    with pytest.raises(ValueError, match="not divisible"):
        micro_batch_size(TrainConfig(data="d", out_dir="o", batch_size=10, grad_accum=3), 1)


def test_recipe_defaults_and_flags() -> None:
    cfg = from_flags({"data": "d", "out_dir": "o", "lr": None})  # a flag not given keeps the default
    assert cfg.betas == (0.95, 0.999) and cfg.weight_decay == 5e-7 and cfg.epochs == 25
    assert cfg.objective.lambda_c == 0.1 and cfg.objective.lambda_r == 1.0 and cfg.objective.norm_pix_loss
    assert cfg.objective.mask_ratio_audio == 0.75 and cfg.warmup_fraction == 0.1 and cfg.final_lr_fraction == 0.1
    assert cfg == TrainConfig("d", "o") and cfg.lr is None
    cfg = from_flags({"data": "d", "out_dir": "o", "objective.lambda_c": 0.01, "gather_negatives": False})
    assert cfg.objective.lambda_c == 0.01 and not cfg.gather_negatives and cfg.objective.lambda_r == 1.0


def test_non_finite_loss_stops_with_a_message(tmp_path: Path) -> None:
    from training.pretrain import NonFiniteLossError

    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny", **SMALL))
    batch = _batches(1, 4)[0]
    batch["audio"][0, 0, 0] = float("nan")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train_step(model, [batch], optimizer, _config(tmp_path), Dist(0, 1, 0, torch.device("cpu")))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no step was taken


def test_training_pretrain_is_no_second_command_line(tmp_path: Path) -> None:
    """The old entry point says where training went and fails, rather than train under other rules."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.pretrain", "--data", str(tmp_path), "--out-dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode != 0 and "torchrun --nproc-per-node N -m cavsync train" in done.stderr, done.stderr
    assert not out.exists()


def _logging_ffmpeg(folder: Path, log: Path) -> Path:
    """An ffmpeg that appends the pid of the process that started it to `log`, then runs the real one."""
    folder.mkdir()
    wrapper = folder / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\necho "$PPID" >> "{log}"\nexec "{ffmpeg_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu(synth_corpus: Path, tmp_path: Path) -> None:
    """The one entry point under torchrun (`-m cavsync train`): gloo process group, DDP, gathered negatives,
    checkpoint; every rank decodes with the ffmpeg of the settings (CAVSYNC_FFMPEG)."""
    out, calls = tmp_path / "ddp_run", tmp_path / "ffmpeg_calls.txt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cavsync",
        "train",
        "--data",
        str(synth_corpus),
        "--out-dir",
        str(out),
        "--preset",
        "tiny",
        "--model-overrides",
        '{"modality_depth": 1, "decoder_depth": 1}',
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--max-steps",
        "2",
    ]
    ffmpeg = _logging_ffmpeg(tmp_path / "bin", calls)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CAVSYNC_FFMPEG=str(ffmpeg))
    result = subprocess.run(cmd, cwd=REPO, env=env, timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(out / "last.ckpt", weights_only=True)["progress"]["step"] == 2
    assert (out / "model.safetensors").exists() and (out / "metrics.csv").exists()
    assert result.stderr.count(f"model: {out / 'model.safetensors'}") == 1  # rank 0 reports, once
    ranks = set(calls.read_text().split())
    assert len(ranks) == 2, f"ffmpeg of the settings started by {len(ranks)} process(es), not the 2 ranks"

"""Encoder throughput: fused SDPA (timm) vs the plain matmul-softmax path of the same math.

Times `encode_audio` / `encode_visual` of a preset (default `base`) on 16 (segment, frame) pairs, in
fp32 and under bf16 autocast, on the CPU (or --device cuda). FLOPs are counted once with
torch.utils.flop_counter on the plain path (identical arithmetic), so GFLOP/s compare fairly.
Also times one forward+backward pretraining step of `tiny` on a batch of 4.

    python bench/bench_encoder.py [--preset base] [--pairs 16] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import CAVMAESync, preset


def _timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def bench_encoders(name: str, pairs: int, repeats: int, device: str) -> list[dict]:
    torch.manual_seed(0)
    model = CAVMAESync(preset(name)).to(device).eval()
    cfg = model.config
    inputs = {
        "encode_audio": torch.randn(pairs, cfg.audio_frames, cfg.mel_bins, device=device),
        "encode_visual": torch.randn(pairs, cfg.in_chans, cfg.image_size, cfg.image_size, device=device),
    }
    rows = []
    for method, x in inputs.items():
        call = getattr(model, method)
        model.set_fused_attention(False)
        with torch.no_grad():
            flops = _flops(lambda call=call, x=x: call(x))
        for precision in ("fp32", "bf16"):
            times = {}
            for fused in (True, False):
                model.set_fused_attention(fused)
                bf16 = precision == "bf16"
                autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

                def run(call=call, x=x, autocast=autocast) -> None:
                    with torch.no_grad(), autocast:
                        call(x)

                times[fused] = _timed(run, repeats, device)
            rows.append(
                {
                    "preset": name,
                    "method": method,
                    "precision": precision,
                    "pairs": pairs,
                    "fused_s": round(times[True], 4),
                    "plain_s": round(times[False], 4),
                    "speedup_fused_vs_plain": round(times[False] / times[True], 3),
                    "gflop": round(flops / 1e9, 1),
                    "fused_gflops_per_s": round(flops / times[True] / 1e9, 1),
                    "plain_gflops_per_s": round(flops / times[False] / 1e9, 1),
                }
            )
    return rows


def bench_tiny_train_step(repeats: int) -> dict:
    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny"))
    cfg = model.config
    audio = torch.randn(4, cfg.audio_frames, cfg.mel_bins)
    frames = torch.randn(4, cfg.in_chans, cfg.image_size, cfg.image_size)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(audio, frames).loss.backward()

    return {"tiny_forward_backward_batch4_s": round(_timed(step, repeats, "cpu"), 4)}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "encoders": bench_encoders(args.preset, args.pairs, args.repeats, args.device),
        **bench_tiny_train_step(args.repeats),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()

"""Training throughput (samples/s) and retrieval-evaluation time.

    python bench/bench_training.py [--preset tiny] [--device cpu|cuda] [--batch 64] [--steps 10]

Throughput: full pretraining steps (masking, both encoders, joint passes, decoder, losses, backward,
Adam) on random inputs, bf16 autocast on CUDA. Retrieval: `retrieval_report` (4 strategies x 2
directions, plus the hard-negative subset) over 1,545 clips x 16 frames x 768-d random tokens, the
size of the VGGSound retrieval test set.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model import CAVMAESync, ObjectiveConfig, preset
from model.similarity import normalize
from training.evaluate import CorpusTokens, retrieval_report


def training_throughput(name: str, device: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = CAVMAESync(preset(name)).to(device)
    cfg = model.config
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    audio = torch.randn(batch, cfg.audio_frames, cfg.mel_bins, device=device)
    frames = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    objective = ObjectiveConfig(norm_pix_loss=True, lambda_c=0.1)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(audio, frames, objective).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"preset": name, "device": device, "batch": batch, "samples_per_s": round(batch * steps / seconds, 1)}


def retrieval_eval_time(clips: int = 1545, frames: int = 16, dim: int = 768) -> dict:
    gen = torch.Generator().manual_seed(0)
    tokens = CorpusTokens(
        normalize(torch.randn(clips, frames, dim, generator=gen)),
        normalize(torch.randn(clips, frames, dim, generator=gen)),
        [str(i) for i in range(clips)],
        [str(i // 2) for i in range(clips)],
    )
    start = time.perf_counter()
    retrieval_report(tokens)
    return {"clips": clips, "frames": frames, "dim": dim, "retrieval_report_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-retrieval", action="store_true")
    args = parser.parse_args()
    result = {"training": training_throughput(args.preset, args.device, args.batch, args.steps)}
    if not args.skip_retrieval:
        result["retrieval_eval"] = retrieval_eval_time()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

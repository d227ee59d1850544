"""Indexing throughput (clips/s) of the offline pipeline on real decoding: hash, decode in worker
processes, encode in batches, write tokens and catalog rows.

    python bench/bench_indexing.py [--media DIR] [--presets tiny base] [--files 24] [--workers 2]

Without --media, `--files` synthetic 10-s mp4 clips are generated (plus the real clips of
../shared/media when present, which are 720p / 144p VGGSound / AudioSet files). The `base` model is
randomly initialised (the same compute as the released weights); each preset indexes into a fresh
store and SQLite catalog. Runs on CUDA (bf16) when available.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from indexer.catalog.tables import open_catalog
from indexer.ingest.pipeline import Indexer, list_media, model_id_of
from indexer.store.token_store import TokenStore
from model import CAVMAESync, load_model, preset, save_checkpoint

SHARED_MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


def corpus(work: Path, files: int) -> Path:
    from training.synth import generate

    folder = generate(work / "media", files, seed=99)
    for real in sorted(SHARED_MEDIA.glob("*.mp4")):
        shutil.copy(real, folder / real.name)
    return folder


def bench(media: Path, preset_name: str, workers: int, work: Path) -> dict:
    torch.manual_seed(0)
    checkpoint = save_checkpoint(CAVMAESync(preset(preset_name)), work / f"{preset_name}.safetensors")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(checkpoint).to(device)
    store = TokenStore(work / f"index-{preset_name}")
    sessions = open_catalog(f"sqlite:///{work / f'catalog-{preset_name}.db'}")
    indexer = Indexer(model, model_id_of(checkpoint), store, sessions, workers=workers)
    paths = list_media(media)
    start = time.perf_counter()
    summary = indexer.index(paths, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "preset": preset_name,
        "device": device,
        "workers": workers,
        "files": len(paths),
        "indexed": summary.indexed,
        "failed": summary.failed,
        "clips": summary.clips,
        "seconds": round(seconds, 1),
        "clips_per_s": round(summary.clips / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=None)
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        media = args.media or corpus(work, args.files)
        for name in args.presets:
            print(json.dumps(bench(media, name, args.workers, work)), flush=True)


if __name__ == "__main__":
    main()

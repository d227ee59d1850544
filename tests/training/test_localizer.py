"""Training the localization head: it learns a planted sound-to-patch link, the whole command is
deterministic on CPU, resumes exactly, refuses another run's state, and writes a head the checkpoint
carries (backbone unchanged)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model import CAVMAESync, load_localization_head, load_model, preset, save_checkpoint
from model.localization import LocalizationHead, LocalizationHeadConfig, cosine_grid
from training.localizer import FrozenFeatures, LocalizerConfig, batch_items, fit_head, train_localizer


def _planted(
    n: int = 256, t: int = 2, p: int = 16, d: int = 32, classes: int = 6
) -> tuple[FrozenFeatures, torch.Tensor]:
    """Random patch features; in each frame one patch carries its class's code, and the audio token is
    that class's (another) code. Returns the features and the planted patch of each frame."""
    generator = torch.Generator().manual_seed(0)
    codes_v, codes_a = torch.randn(classes, d, generator=generator), torch.randn(classes, d, generator=generator)
    label = torch.randint(classes, (n, t), generator=generator)
    where = torch.randint(p, (n, t), generator=generator)
    visual = 0.1 * torch.randn(n, t, p, d, generator=generator)  # a plain background, as in `cavsync synth`
    visual[torch.arange(n)[:, None], torch.arange(t)[None], where] += 3 * codes_v[label]
    return FrozenFeatures(visual.half(), F.normalize(codes_a[label], dim=-1)), where


def test_the_head_learns_where_the_sound_is() -> None:
    features, where = _planted()
    torch.manual_seed(0)
    head = LocalizationHead(LocalizationHeadConfig(32, layer=1, hidden_dim=64))
    cfg = LocalizerConfig("-", "-", "-", steps=100, batch_size=32, lr=3e-3)
    fit_head(head, features, cfg, torch.optim.Adam(head.parameters(), lr=cfg.lr))
    with torch.no_grad():
        grid = cosine_grid(features.audio.flatten(0, 1), head(features.visual.flatten(0, 2).float()).view(-1, 16, 32))
    hits = (grid.flatten(1).argmax(1) == where.flatten()).float().mean()
    assert hits > 0.6, f"the peak is on the planted patch in {hits:.0%} of frames (chance: 1 in 16)"


def test_batches_are_a_function_of_seed_and_step() -> None:
    first, again = batch_items(50, 8, 16, seed=3, step=7), batch_items(50, 8, 16, seed=3, step=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len(set(first[0].tolist())) == 16  # distinct clips
    assert not torch.equal(first[0], batch_items(50, 8, 16, seed=3, step=8)[0])


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny", modality_depth=2)).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("backbone") / "tiny.safetensors", {"note": "kept"})


def _run(backbone: Path, data: Path, out: Path, **changes: object) -> LocalizerConfig:
    values: dict = {
        "steps": 6,
        "batch_size": 8,
        "checkpoint_every": 3,
        "frame_stride": 4,
        "workers": 0,
        "max_clips": 12,
    }
    return LocalizerConfig(str(backbone), str(data), str(out), **(values | changes))  # type: ignore[arg-type]


def test_train_localizer_is_deterministic_resumes_and_writes_the_head(
    backbone: Path, synth_corpus: Path, tmp_path: Path
) -> None:
    into = tmp_path / "with_head.safetensors"
    head_file = train_localizer(_run(backbone, synth_corpus, tmp_path / "a", into=str(into)), progress=False)
    train_localizer(_run(backbone, synth_corpus, tmp_path / "b", steps=3), progress=False)  # interrupted ...
    resumed = train_localizer(_run(backbone, synth_corpus, tmp_path / "b"), progress=False)  # ... and resumed
    (tmp_path / "c").mkdir()
    for cache in (tmp_path / "a").glob("features-*.pt"):  # a run that finds the features cached
        shutil.copy(cache, tmp_path / "c" / cache.name)
    cached = train_localizer(_run(backbone, synth_corpus, tmp_path / "c"), progress=False)
    uninterrupted = load_file(head_file)
    for other in (load_file(resumed), load_file(cached)):
        assert all(torch.equal(uninterrupted[k], other[k]) for k in uninterrupted)  # the same head, bit for bit
    model = load_model(into)
    for name, tensor in load_model(backbone).state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name  # the backbone is untouched
    head = load_localization_head(into, model)
    assert head is not None and head.config.layer == 2
    adapter = load_localization_head(head_file, model)
    assert adapter is not None
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in head.state_dict().items())
    with pytest.raises(ValueError, match="another backbone or other settings"):
        train_localizer(_run(backbone, synth_corpus, tmp_path / "b", seed=5), progress=False)

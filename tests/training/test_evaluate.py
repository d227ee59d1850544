"""Localization scoring, AP, and the classification head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import CAVMAESync, preset
from training.classify import ClassifierConfig, ClipClassifier, classification_metrics, fit
from training.evaluate import average_precision, baseline_maps, localization_report


def _naive_ap(scores: list[float], labels: list[bool]) -> float:
    ranked = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    hits, total = 0, 0.0
    for k, (_, label) in enumerate(ranked, start=1):
        if label:
            hits += 1
            total += hits / k
    return total / hits


def test_average_precision_matches_naive() -> None:
    gen = torch.Generator().manual_seed(0)
    scores, labels = torch.rand(200, generator=gen), torch.rand(200, generator=gen) > 0.7
    assert average_precision(scores, labels) == pytest.approx(_naive_ap(scores.tolist(), labels.tolist()))


def _scene(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((size, size), bool)
    mask[4:12, 4:12] = True
    distractor = np.zeros((size, size), bool)
    distractor[20:28, 20:28] = True
    return mask, distractor


def test_localization_report_perfect_wrong_and_baselines() -> None:
    mask, distractor = _scene()
    masks, distractors, classes = [mask] * 4, [distractor] * 4, ["a", "a", "b", "b"]
    perfect = localization_report([torch.from_numpy(mask).float()] * 4, masks, distractors, classes)
    assert perfect["mIoU"] == pytest.approx(1.0) and perfect["mAP"] == pytest.approx(1.0)
    assert perfect["peak_in_object"] == 1.0 and perfect["peak_on_distractor"] == 0.0
    wrong = localization_report(baseline_maps(masks, distractors)["distractor"], masks, distractors, classes)
    assert wrong["mIoU"] == 0.0 and wrong["peak_on_distractor"] == 1.0
    centre = localization_report(baseline_maps(masks, distractors)["centre_prior"], masks, distractors, classes)
    assert 0.0 < centre["mIoU"] < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("multi_label", [True, False])
def test_classification_head_learns_planted_labels(multi_label: bool) -> None:
    torch.manual_seed(0)
    encoder = CAVMAESync(preset("tiny", modality_depth=1, frames_per_clip=4, image_size=32)).eval()
    cfg = encoder.config
    labels = torch.arange(24) % 3
    frames = torch.randn(24, 4, 3, 32, 32) * 0.1 + labels.view(-1, 1, 1, 1, 1).float()  # class shows in the picture
    segments = torch.randn(24, 4, cfg.audio_frames, cfg.mel_bins) * 0.1
    targets = torch.nn.functional.one_hot(labels, 3) if multi_label else labels
    head = ClipClassifier(encoder, ClassifierConfig(num_classes=3, multi_label=multi_label, epochs=25, batch_size=8))
    before = {n: p.clone() for n, p in encoder.named_parameters()}
    losses = fit(head, frames, segments, targets, torch.Generator().manual_seed(0))
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        metrics = classification_metrics(head(frames, segments), targets, multi_label)
    assert metrics["mAP" if multi_label else "accuracy"] > 0.9
    assert all(torch.equal(p, before[n]) for n, p in encoder.named_parameters())  # linear probe: frozen


def test_evaluate_localization_reports_each_method_next_to_the_baselines(synth_corpus) -> None:  # noqa: ANN001
    import json

    from model.localization import LocalizationHead, LocalizationHeadConfig
    from training.data import MediaManifest
    from training.evaluate import evaluate_localization

    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny", modality_depth=2)).eval()
    head = LocalizationHead(LocalizationHeadConfig(model.config.embed_dim, layer=1, hidden_dim=32)).eval()
    source = MediaManifest.open(synth_corpus, model.config)
    source.rows = source.rows[:6]
    expected = sum(int(np.load(synth_corpus / r["masks"])["distractor"].any(axis=(1, 2)).sum()) for r in source.rows)
    report = evaluate_localization(model, source, head=head)
    assert report["served"] == "head" and set(report) == {"served", "paper", "head", "centre_prior", "distractor"}
    assert all(report[k]["frames"] == expected for k in ("paper", "head", "centre_prior", "distractor"))
    assert report["distractor"]["peak_on_distractor"] == 1.0
    assert report["paper"]["mIoU"] != report["head"]["mIoU"]  # two different maps were scored
    assert evaluate_localization(model, source)["served"] == "paper"
    json.dumps(report)  # what `cavsync eval localization` prints

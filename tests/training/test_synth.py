"""The synthetic corpus: determined by the seed, decodable, with masks and hard negatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cavsync.cli import app
from model import load_clips, preset
from training.synth import MASK_TIMES, VOCABULARY, make_specs, render_frame


def test_vocabulary_is_large_and_distinct() -> None:
    assert len(VOCABULARY) >= 12
    assert len({(o.shape, o.colour, o.striped) for o in VOCABULARY}) == len(VOCABULARY)
    assert len({(o.waveform, o.pitch_hz, o.pulse_hz) for o in VOCABULARY}) == len(VOCABULARY)


def test_specs_are_a_function_of_the_seed() -> None:
    assert make_specs(30, 5) == make_specs(30, 5)
    assert make_specs(30, 5) != make_specs(30, 6)


def test_hard_negatives_share_events_in_another_order() -> None:
    specs = make_specs(200, 3)
    groups: dict[str, list] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append([e.object for e in spec.events])
    pairs = [orders for orders in groups.values() if len(orders) == 2]
    assert len(pairs) >= 20
    assert all(sorted(a) == sorted(b) and a != b for a, b in pairs)
    assert all(len(orders) <= 2 for orders in groups.values())


def test_frames_show_the_sounding_object_and_a_silent_distractor() -> None:
    spec = next(s for s in make_specs(50, 4) if s.distractor is not None)
    t = max(spec.distractor_from, spec.events[0].start) + 0.01
    frame, sounding, distractor = render_frame(spec, t)
    assert sounding.any() and not (sounding & distractor).any()
    event = next(e for e in spec.events if e.start <= t < e.end)
    assert (frame[sounding] != np.array(spec.background)).any(axis=-1).all()
    assert VOCABULARY[event.object].name != VOCABULARY[spec.distractor].name


@pytest.mark.slow
def test_cli_writes_decodable_clips_with_masks(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--n", "3", "--seed", "9"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        clips = load_clips(tmp_path / row["path"], preset("tiny"))
        assert len(clips) == 1 and clips[0].modalities == ("audio", "visual")
        assert clips[0].duration == pytest.approx(10.0, abs=0.1)
        masks = np.load(tmp_path / row["masks"])
        assert masks["sounding"].shape == (16, 128, 128) and masks["sounding"].any(axis=(1, 2)).all()
        assert np.allclose(masks["times"], MASK_TIMES)
        assert row["labels"] and all(event["name"] in row["labels"] for event in row["events"])


@pytest.mark.slow
def test_eval_commands_print_json(synth_corpus: Path, tmp_path: Path) -> None:
    from model import CAVMAESync, load_model, save_checkpoint
    from training.data import MediaManifest
    from training.evaluate import encode_corpus, retrieval_report

    checkpoint = save_checkpoint(CAVMAESync(preset("tiny", modality_depth=1)), tmp_path / "m.safetensors")
    runner = CliRunner()
    retrieval = runner.invoke(
        app, ["eval", "retrieval", "--checkpoint", str(checkpoint), "--data", str(synth_corpus), "--workers", "0"]
    )
    assert retrieval.exit_code == 0, retrieval.output
    report = json.loads(retrieval.output)
    model = load_model(checkpoint)  # the command prints exactly the library's report over the same corpus
    tokens = encode_corpus(model, MediaManifest.open(synth_corpus, model.config), workers=0)
    assert report["clips"] == 24 and report == json.loads(json.dumps(retrieval_report(tokens)))
    classification = runner.invoke(
        app, ["eval", "classification", "--checkpoint", str(checkpoint), "--data", str(synth_corpus), "--epochs", "2"]
    )
    assert classification.exit_code == 0, classification.output
    scored = json.loads(classification.output)  # trained on the first 80 % of the clips, scored on the rest
    labels = {
        label
        for line in (synth_corpus / "metadata.jsonl").read_text().splitlines()
        for label in json.loads(line)["labels"]
    }
    assert (scored["train_clips"], scored["test_clips"], scored["classes"], scored["mode"]) == (
        19,
        5,
        len(labels),
        "linear",
    )
    localization = runner.invoke(
        app, ["eval", "localization", "--checkpoint", str(checkpoint), "--data", str(synth_corpus)]
    )
    assert localization.exit_code == 0, localization.output
    assert set(json.loads(localization.output)) == {"model", "centre_prior", "distractor"}

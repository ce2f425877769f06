"""`realm plot`: a run's metrics.jsonl -> PNG curves (a real tiny pre-training run, and bad files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from realm.cli import main
from realm.corpus import BlockStore
from realm.eval.plots import plot_run, read_metrics
from realm.pretrain import pretrain
from tests.test_pretrain import make_corpus, run_config

pytest.importorskip("matplotlib")


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)  # [H, W, 4] floats in [0, 1]


def drawn_pixels(image: np.ndarray) -> float:
    """Share of pixels that are neither white nor transparent (axes, text, curves)."""
    rgb = image[..., :3]
    return float((rgb.min(axis=-1) < 0.9).mean())


def test_plots_of_a_real_pretraining_run(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "facts", num_facts=12)
    store = BlockStore.open(corpus["store"])
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"question": text, "title": title}) + "\n"
                           for title, text in zip(store.titles(range(8)), store.texts(range(8)), strict=True)))  # fmt: skip
    pretrain(run_config(corpus, tmp_path / "run", num_steps=6, refresh_every=3, dev_questions=str(dev)))
    written = main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "png")])
    assert written == 0
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["accuracy.png", "dev_recall.png", "loss.png", "staleness.png", "utility.png"]
    for name in names:
        image = read_png(tmp_path / "png" / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert 0.01 < drawn_pixels(image) < 0.5, name  # something is drawn, and it is not a blank or black box
    # A curve is drawn: the loss figure differs from one drawn with a flat loss.
    rows = read_metrics(tmp_path / "run")
    flat = tmp_path / "flat" / "metrics.jsonl"
    flat.parent.mkdir()
    flat.write_text("".join(json.dumps({**r, "loss": 1.0}) + "\n" for r in rows))
    plot_run(flat, tmp_path / "flat_png")
    assert not np.array_equal(read_png(tmp_path / "png" / "loss.png"), read_png(tmp_path / "flat_png" / "loss.png"))


def test_finetune_rows_and_dev_evaluations(tmp_path: Path) -> None:
    rows = [{"kind": "train", "step": s, "loss": 3.0 / s, "retriever_loss": 1.0 / s, "reader_loss": 2.0 / s,
             "answer_retrieved": 0.5, "answer_read": 0.4} for s in range(1, 11)]  # fmt: skip
    rows += [{"kind": "eval", "step": s, "exact_match": 0.1 * s / 5, "recall@5": 0.2 * s / 5, "best": True} for s in (5, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    assert [p.name for p in written] == ["loss.png", "dev_recall.png", "finetune.png"]
    assert all(p.parent == tmp_path / "plots" and drawn_pixels(read_png(p)) > 0.01 for p in written)


def test_missing_or_malformed_metrics_name_the_file(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metrics.jsonl'}: no metrics file" in capsys.readouterr().err
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "step": 2, "loss"\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not JSON"):
        plot_run(tmp_path)
    bad.write_text('{"kind": "train", "loss": 2.0}\n')
    with pytest.raises(ValueError, match=rf"{bad}:1: expected a JSON object with an integer \"step\""):
        plot_run(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        plot_run(tmp_path)

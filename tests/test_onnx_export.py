"""ONNX export (`realm export onnx`, `realm.modeling.export`): onnxruntime's outputs equal PyTorch's.

The tiny reference `RealmForOpenQA` checkpoint (tests/fixtures) is exported once per module (the exporter
takes seconds per graph); the graphs are compared with the PyTorch towers at several batch sizes and lengths,
padded rows included, and a `Pipeline` on them with the PyTorch one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmEmbedder, RealmForOpenQA
from realm.cli import main
from realm.corpus import Block, BlockStore
from realm.index import ExactIndex
from realm.modeling import export
from realm.pipeline import Pipeline
from realm.tokenization import RealmTokenizerFast
from tests.conftest import REFERENCE, tiny_config

CASE = REFERENCE / "openqa_eval"
CASES = [(1, 4), (3, 9), (5, 24), (2, 13)]  # (rows, tokens): the exported example was 2 x 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[RealmForOpenQA, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("onnx")
    assert main(["export", "onnx", "--model", str(CASE), "--out", str(root / "out")]) == 0
    return RealmForOpenQA.from_pretrained(CASE), root / "out"


def padded(rows: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] question [SEP] block [SEP] rows of random lengths (one full, the others right-padded)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, tokens + 1, (rows,), generator=gen)
    lengths[0] = tokens
    positions = torch.arange(tokens)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(5, 64, (rows, tokens), generator=gen) * mask
    question = lengths // 3
    types = ((positions > question[:, None]) & mask.bool()).long()
    block = (types.bool() & (positions < lengths[:, None] - 1)).long()  # the block's tokens: not the last [SEP]
    return ids, mask, types, block


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "tokens"), CASES)
def test_query_tower_matches_pytorch(exported: tuple[RealmForOpenQA, Path], rows: int, tokens: int) -> None:
    model, out = exported
    ids, mask, types, _ = padded(rows, tokens, seed=rows * 100 + tokens)
    with torch.no_grad():
        expected = model.embedder(ids, attention_mask=mask, token_type_ids=types).projected_score.numpy()
    got = export.load_onnx(out, threads=1).query(ids, mask, types)
    assert got.shape == expected.shape == (rows, model.config.retriever_proj_size)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "tokens"), CASES)
def test_reader_matches_pytorch(exported: tuple[RealmForOpenQA, Path], rows: int, tokens: int) -> None:
    model, out = exported
    ids, mask, types, block = padded(rows, tokens, seed=rows * 100 + tokens + 1)
    with torch.no_grad():
        hidden = model.reader.realm(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        logits, starts, ends = model.reader.qa_outputs(hidden, block)  # [R, S], [S], [S]
    got_logits, got_starts, got_ends = export.load_onnx(out, threads=1).reader(ids, mask, types, block)
    np.testing.assert_array_equal(got_starts, starts.numpy())
    np.testing.assert_array_equal(got_ends, ends.numpy())
    inside = logits.numpy() > torch.finfo(torch.float32).min / 2  # spans inside the block
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got_logits > torch.finfo(torch.float32).min / 2, inside)
    np.testing.assert_allclose(got_logits[inside], logits.numpy()[inside], atol=1e-5, rtol=1e-4)
    assert (got_logits.argmax(axis=1) == logits.numpy().argmax(axis=1)).all()


@pytest.mark.slow
def test_export_manifest_and_refusals(exported: tuple[RealmForOpenQA, Path], tmp_path: Path) -> None:
    model, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {export.QUERY_FILE, export.READER_FILE}
    assert manifest["graphs"][export.READER_FILE]["outputs"] == ["span_logits", "span_starts", "span_ends"]
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left beside it
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_onnx(CASE, out)
    # A RealmEmbedder checkpoint: the query tower alone.
    model.embedder.save_pretrained(tmp_path / "embedder")
    written = export.export_onnx(tmp_path / "embedder", tmp_path / "q")
    assert written.files == (export.QUERY_FILE,)
    assert export.load_onnx(tmp_path / "q").reader is None


@pytest.mark.slow
def test_pipeline_on_the_graphs_answers_as_pytorch(exported: tuple[RealmForOpenQA, Path], tmp_path: Path) -> None:
    model, out = exported
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    store = BlockStore.create(tmp_path / "store", [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts], tokenizer)
    index = ExactIndex(model.block_emb.clone())
    questions = ["the capital of france?", "which city has the eiffel tower?", "old church", "a famous tower", "what is paris?"]
    reference = Pipeline(model.embedder, model.reader, store, index, k=3).ask(questions)
    embedder, reader = export.onnx_towers(out, threads=1)
    answers = Pipeline(embedder, reader, store, index, k=3).ask(questions)  # type: ignore[arg-type]
    for a, b in zip(answers, reference, strict=True):
        assert [e.block_id for e in a.evidence] == [e.block_id for e in b.evidence]
        assert (a.text, a.block_id, a.span_start, a.span_end) == (b.text, b.block_id, b.span_start, b.span_end)
        assert a.score == pytest.approx(b.score, abs=1e-4) and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: importing it raises ImportError
    RealmEmbedder(tiny_config()).save_pretrained(tmp_path / "embedder")
    with pytest.raises(ImportError, match=r"onnxscript: pip install 'realm-lm\[onnx\]'"):
        export.export_onnx(tmp_path / "embedder", tmp_path / "out")
    assert main(["export", "onnx", "--model", str(tmp_path / "embedder"), "--out", str(tmp_path / "out")]) == 2
    assert "realm-lm[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Length buckets (exact: equal to one padded call) and the fast mode (int8 reader trunk, bf16 where native)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever
from realm.corpus import Block, BlockStore
from realm.index import ExactIndex
from realm.modeling.bert import RealmBertModel
from realm.modeling.inference import FAST, InferenceConfig, cpu_flags, has_fast_bf16, run_bucketed
from realm.pipeline import Pipeline
from realm.tokenization import RealmTokenizerFast
from tests.conftest import REFERENCE, tiny_config
from tests.test_index_build import corpus, run_build  # noqa: F401  (the module fixture)

CASE = REFERENCE / "openqa_eval"
QUESTIONS = ["the capital of france?", "which city has the eiffel tower?", "the capital of italy", "old church",
             "where is the colosseum?", "a famous tower", "what is paris?"]  # fmt: skip


def padded_rows(rows: int, width: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows of random lengths in [1, width] (one of them full), pair token types."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    lengths[rows // 2] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (rows, width), generator=gen) * mask
    types = ((torch.arange(width)[None] >= lengths[:, None] // 2) & mask.bool()).long()
    return ids, mask, types


@pytest.mark.parametrize("rows_per_bucket", [1, 3, 7, 100])
def test_buckets_equal_one_padded_call(rows_per_bucket: int) -> None:
    torch.manual_seed(0)
    model = RealmBertModel(tiny_config()).eval()
    ids, mask, types = padded_rows(11, 13, 64, seed=1)

    def trunk(i: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(i, attention_mask=m, token_type_ids=t).last_hidden_state  # [n, l, H]

    def pooled(i: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(i, attention_mask=m, token_type_ids=t).pooler_output  # [n, H]

    calls = []
    with torch.no_grad():
        whole = trunk(ids, mask, types)
        bucketed = run_bucketed(lambda *a: calls.append(a[0].shape) or trunk(*a), ids, mask, types, rows_per_bucket, pad_to=13)
        assert len(calls) == -(-11 // rows_per_bucket)
        assert sum(shape[0] * shape[1] for shape in calls) <= ids.numel()  # never more tokens than one padded call
        real = mask.bool()
        assert bucketed.shape == whole.shape
        torch.testing.assert_close(bucketed[real], whole[real], atol=1e-5, rtol=1e-5)
        if rows_per_bucket == 1:  # one row per bucket: no padding computed at all, and padding positions are zeros
            assert sum(shape[0] * shape[1] for shape in calls) == int(mask.sum())
            assert not bucketed[~real].any()
        torch.testing.assert_close(
            run_bucketed(pooled, ids, mask, types, rows_per_bucket), pooled(ids, mask, types), atol=1e-5, rtol=1e-5
        )
    assert run_bucketed(pooled, ids, mask, types, 0).shape == (11, 32)  # 0: one call


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The fixture's blocks in a store, its OpenQA model's block embeddings as the index, k."""
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(tmp_path_factory.mktemp("inference") / "store", blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer))
    return store, model.block_emb.clone(), model.config.reader_beam_size


def pipeline(parts, **kwargs) -> Pipeline:
    store, block_emb, k = parts
    return Pipeline.from_pretrained(CASE, store, ExactIndex(block_emb), k=k, **kwargs)


def test_pipeline_buckets_give_the_same_answers(parts) -> None:
    one_call = pipeline(parts, inference=InferenceConfig(bucket_rows=0)).ask(QUESTIONS)
    for rows in (1, 2, 32):
        answers = pipeline(parts, inference=InferenceConfig(bucket_rows=rows)).ask(QUESTIONS)
        for a, b in zip(answers, one_call, strict=True):
            assert (a.text, a.block_id, [e.block_id for e in a.evidence]) == (b.text, b.block_id, [e.block_id for e in b.evidence])
            assert a.score == pytest.approx(b.score, abs=1e-4) and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_fast_mode_quantises_the_reader_trunk_only(parts) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    fp32 = pipeline(parts)
    fast = pipeline(parts, inference=FAST)
    assert not any(isinstance(m, DynamicLinear) for m in fp32.reader.modules())
    quantised = [name for name, m in fast.reader.named_modules() if isinstance(m, DynamicLinear)]
    config = fast.reader.config
    # q, k, v, attention output and intermediate of every layer; the feed-forward output stays float32
    assert len(quantised) == 5 * config.num_hidden_layers
    assert all(name.startswith("realm.encoder.") for name in quantised)
    assert not any(name.endswith(".output.dense") and ".attention." not in name for name in quantised)
    weight = dict(fast.reader.named_modules())[quantised[0]].weight()
    assert weight.qscheme() == torch.per_channel_affine  # one scale per output channel
    assert not any(isinstance(m, DynamicLinear) for m in fast.embedder.modules())  # the query tower stays float32
    reference, answers = fp32.ask(QUESTIONS), fast.ask(QUESTIONS)
    for a, b in zip(answers, reference, strict=True):
        assert [e.block_id for e in a.evidence] == [e.block_id for e in b.evidence]  # retrieval unchanged
        assert [e.retrieval_score for e in a.evidence] == [e.retrieval_score for e in b.evidence]
        assert a.text in next(e.text for e in a.evidence if e.block_id == a.block_id)
        assert 0.0 <= a.probability <= 1.0


def test_fast_choices_follow_the_config_and_the_machine(monkeypatch, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert not InferenceConfig().uses_int8(cpu) and not InferenceConfig().uses_bf16(cpu)
    assert FAST.uses_int8(cpu) and not FAST.uses_int8(torch.device("cuda"))
    assert InferenceConfig(fast=True, bf16="on").uses_bf16(cpu)
    assert not InferenceConfig(fast=False, bf16="on").uses_bf16(cpu)
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_flags(info)["avx512_bf16"] and not cpu_flags(info)["amx_bf16"]
    monkeypatch.setattr("realm.modeling.inference.cpu_flags", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert not has_fast_bf16(cpu) and not InferenceConfig(fast=True, bf16="auto").uses_bf16(cpu)
    monkeypatch.setattr("realm.modeling.inference.cpu_flags", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert has_fast_bf16(cpu) and InferenceConfig(fast=True, bf16="auto").uses_bf16(cpu)
    with pytest.raises(ValueError, match="bf16 must be 'auto', 'on' or 'off'"):
        InferenceConfig(bf16="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_rows must be >= 0"):
        InferenceConfig(bucket_rows=-1)


def test_int8_index_build_is_close_to_float32(corpus, tmp_path) -> None:  # noqa: F811
    run_build(corpus, tmp_path / "fp32", chunk_size=64)
    run_build(corpus, tmp_path / "int8", chunk_size=64, compute_dtype="int8")
    a, b = (np.load(tmp_path / name / "embeddings.npy") for name in ("fp32", "int8"))
    assert a.shape == b.shape and not np.array_equal(a, b)  # int8 did run
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98, cosine.min()
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["build_plan"]["build"]["compute_dtype"] == "int8"


def test_cli_fast_flag(parts, tmp_path, capsys) -> None:
    from realm.cli import main
    from realm.index import write_embeddings

    store, block_emb, k = parts
    write_embeddings(tmp_path / "index", block_emb)
    common = ["--model", str(CASE), "--store", str(store.path), "--index", str(tmp_path / "index"), "--k", str(k), "--json"]
    assert main(["ask", *common, "--fast", QUESTIONS[0]]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main(["ask", *common, "--no-fast", QUESTIONS[0]]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [e["block_id"] for e in fast["evidence"]] == [e["block_id"] for e in plain["evidence"]]


@pytest.mark.parametrize("rows_per_bucket", [1, 4, 100])
def test_bucketed_span_logits_equal_one_padded_call(rows_per_bucket: int) -> None:
    """Buckets trimmed to their longest row give every span the score of one padded call (spans reaching
    padding: finfo.min in both), in the layout of all T positions."""
    from realm.modeling.reader import RealmReader

    torch.manual_seed(0)
    reader = RealmReader(tiny_config()).eval()
    ids, mask, types = padded_rows(9, 17, 64, seed=3)
    mask[:, :5] = 1  # every row at least max_span_width long, as reader rows are
    block = types * mask
    with torch.no_grad():
        whole, starts, ends = reader.span_logits(ids, mask, types, block, bucket_rows=0)
        bucketed, b_starts, b_ends = reader.span_logits(ids, mask, types, block, bucket_rows=rows_per_bucket)
    assert torch.equal(starts, b_starts) and torch.equal(ends, b_ends)
    assert bucketed.shape == whole.shape == (9, 4 * 17 - 6)
    floor = torch.finfo(torch.float32).min
    assert torch.equal(bucketed == floor, whole == floor)
    torch.testing.assert_close(bucketed, whole, atol=1e-5, rtol=1e-5)

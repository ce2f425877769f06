"""`realm.qa`: the one retrieve (candidate choice through `Index.search`, with texts) and the one read."""

from __future__ import annotations

import json

import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.index import ExactIndex
from realm.index.base import SearchResult
from realm.pipeline import Pipeline
from realm.qa import NULL_BLOCK, read, retrieve
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
QUESTIONS = ["the capital of france?", "which city has the eiffel tower?"]


class TextRecordingIndex(ExactIndex):
    """A stand-in for a hybrid index: it needs the questions' strings and records what it was given."""

    wants_texts = True

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__(embeddings)
        self.seen: list[list[str] | None] = []

    def search(self, queries, k, texts=None) -> SearchResult:
        self.seen.append(None if texts is None else list(texts))
        return super().search(queries, k)


class MissingHitsIndex(ExactIndex):
    """An approximate index that found only one block per query (the rest -1, as the contract says)."""

    def search(self, queries, k, texts=None) -> SearchResult:
        found = super().search(queries, k)
        ids, scores = found.ids.clone(), found.scores.clone()
        ids[:, 1:], scores[:, 1:] = -1, float("-inf")
        return SearchResult(scores, ids)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    store_dir = tmp_path_factory.mktemp("qa") / "store"
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(store_dir, blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer)).eval()
    return model, store, tokenizer


def test_pipeline_hands_the_question_strings_to_the_index(setup) -> None:
    model, store, tokenizer = setup
    index = TextRecordingIndex(model.block_emb.clone())
    pipeline = Pipeline(model.embedder, model.reader, store, index, tokenizer=tokenizer, k=3)
    answers = pipeline.ask(QUESTIONS)
    assert index.seen == [QUESTIONS]  # one search for the batch, with its strings
    dense = TextRecordingIndex(model.block_emb.clone())
    dense.wants_texts = False  # a dense index: never handed the strings
    Pipeline(model.embedder, model.reader, store, dense, tokenizer=tokenizer, k=3).ask(QUESTIONS)
    assert dense.seen == [None]
    plain = Pipeline(model.embedder, model.reader, store, ExactIndex(model.block_emb.clone()), tokenizer=tokenizer, k=3)
    assert [a.to_dict() for a in answers] == [a.to_dict() for a in plain.ask(QUESTIONS)]


def test_retrieve_logits_are_the_search_scores_or_the_rescored_products(setup) -> None:
    model, _, tokenizer = setup
    index = ExactIndex(model.block_emb.clone())
    encoded = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        searched = retrieve(model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=4)
        rescored = retrieve(
            model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=4, embed_blocks=index.reconstruct
        )
        query = model.embedder(**encoded).projected_score  # [B, D]
    assert torch.equal(searched.block_ids, rescored.block_ids) and searched.block_ids.shape == (2, 4)
    by_hand = torch.tensor(
        [[float(query[b] @ model.block_emb[i]) for i in searched.block_ids[b].tolist()] for b in range(2)]
    )
    torch.testing.assert_close(rescored.retrieval_logits, by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(searched.retrieval_logits, by_hand, rtol=0, atol=1e-5)
    assert torch.equal(searched.question_ids, encoded["input_ids"])


def test_retrieve_puts_the_null_block_first_and_drops_each_source(setup) -> None:
    model, _, tokenizer = setup
    index = ExactIndex(model.block_emb.clone())
    encoded = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        best = retrieve(model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=4).block_ids
        sources = best[:, 0].tolist()  # exclude each question's best block
        out = retrieve(
            model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=4, exclude=sources,
            null_block=True, embed_blocks=lambda ids: torch.stack([
                torch.stack([torch.zeros(index.dim) if i == NULL_BLOCK else index.reconstruct(torch.tensor(i)) for i in row])
                for row in ids.tolist()
            ]),
        )  # fmt: skip
    assert out.block_ids[:, 0].tolist() == [NULL_BLOCK, NULL_BLOCK]
    # The next blocks are the search's order with the source skipped.
    assert out.block_ids[:, 1:].tolist() == best[:, 1:].tolist()
    assert out.retrieval_logits[:, 0].tolist() == [0.0, 0.0]  # the zero vector given for the null block


def test_missing_hits_are_refused_with_the_fix(setup) -> None:
    model, _, tokenizer = setup
    encoded = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    index = MissingHitsIndex(model.block_emb.clone())
    with pytest.raises(RuntimeError, match="fewer than 3 blocks.*search more of the index"):
        retrieve(model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=3)
    with pytest.raises(RuntimeError, match="1 usable blocks for a question, fewer than the 2"):
        retrieve(model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=3, exclude=[-1, -1], null_block=True)


def test_read_reads_the_first_r_blocks_and_returns_named_records(setup) -> None:
    model, store, tokenizer = setup
    index = ExactIndex(model.block_emb.clone())
    encoded = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        retrieved = retrieve(model.embedder, index, encoded["input_ids"], encoded["attention_mask"], k=4)
        reading = read(
            model.reader, model.retriever, retrieved.block_ids, encoded["input_ids"][:, None],
            retrieved.retrieval_logits, max_length=model.config.reader_seq_len, num_read=2,
        )  # fmt: skip
    assert reading.inputs["input_ids"].shape[:2] == (2, 4)  # inputs for every block passed in
    assert [s.logits.shape[0] for s in reading.spans] == [2, 2]  # spans of the R = 2 read
    for b in range(2):
        row = reading.encoded[b]
        assert row.has_answers is None and row.concat_inputs["input_ids"].shape[0] == 4
        best_block = int(reading.spans[b].logits.max(dim=1).values.argmax())
        assert int(reading.outputs[b].block_idx) == best_block

"""`RealmRetriever`: the port's retriever test expectations (toy vocabulary) and safe record files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from realm import RealmRetriever, RealmTokenizer, RealmTokenizerFast
from tests.conftest import REFERENCE

TOY_VOCAB = (
    "[UNK] [CLS] [SEP] [PAD] [MASK] test question this is the first second third fourth fifth record "
    "want ##want ##ed wa un runn ##ing , low lowest"
).split()
RECORDS = [
    b"This is the first record",
    b"This is the second record",
    b"This is the third record",
    b"This is the fourth record",
    b"This is the fifth record",
    b"This is a longer longer longer record",
]


@pytest.fixture(params=[RealmTokenizer, RealmTokenizerFast], ids=["slow", "fast"])
def retriever(request, tmp_path) -> RealmRetriever:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(TOY_VOCAB) + "\n")
    tokenizer = request.param(vocab_file=str(vocab))
    return RealmRetriever(np.array(RECORDS, dtype=object), tokenizer)


def test_retrieve(retriever: RealmRetriever) -> None:
    tokenizer = retriever.tokenizer
    question_ids = tokenizer(["Test question"]).input_ids
    answer_ids = tokenizer(["the fourth"], add_special_tokens=False, return_token_type_ids=False, return_attention_mask=False).input_ids
    has_answers, start_pos, end_pos, concat = retriever(
        np.array([0, 3]), question_ids, answer_ids=answer_ids, max_length=10, return_tensors="np"
    )
    assert len(has_answers) == len(start_pos) == len(end_pos) == 2
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
        assert concat[key].shape == (2, 10)
    assert tokenizer.convert_ids_to_tokens(concat["input_ids"][0].tolist()) == (
        "[CLS] test question [SEP] this is the first record [SEP]".split()
    )
    assert tokenizer.convert_ids_to_tokens(concat["input_ids"][1].tolist()) == (
        "[CLS] test question [SEP] this is the fourth record [SEP]".split()
    )


def test_block_has_answer(retriever: RealmRetriever) -> None:
    tokenizer = retriever.tokenizer
    question_ids = tokenizer(["Test question"]).input_ids
    answer_ids = tokenizer(["the fourth", "longer longer"], add_special_tokens=False).input_ids
    has_answers, start_pos, end_pos, _ = retriever(
        np.array([0, 3, 5]), question_ids, answer_ids=answer_ids, max_length=16, return_tensors="np"
    )
    assert has_answers == [False, True, True]
    assert start_pos == [[-1, -1, -1], [6, -1, -1], [6, 7, 8]]
    assert end_pos == [[-1, -1, -1], [7, -1, -1], [7, 8, 9]]


def test_answers_padded_with_minus_one_or_as_a_tensor_match_the_list(retriever: RealmRetriever) -> None:
    import torch

    tokenizer = retriever.tokenizer
    question_ids = tokenizer(["Test question"]).input_ids
    answers = tokenizer(["the fourth", "longer longer"], add_special_tokens=False).input_ids
    padded = torch.tensor([answers[0] + [-1], answers[1] + [-1]])
    plain = retriever(np.array([0, 3, 5]), question_ids, answers, max_length=16)[:3]
    assert retriever(np.array([0, 3, 5]), question_ids, padded, max_length=16)[:3] == plain
    with pytest.raises(ValueError, match="list of answers"):
        retriever(np.array([0]), question_ids, answers[0], max_length=16)


def test_out_of_range_block_ids_are_refused(retriever: RealmRetriever) -> None:
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        retriever(np.array([6]), [[1, 2]], None)


def test_save_load_needs_no_pickle(retriever: RealmRetriever, tmp_path) -> None:
    retriever.save_pretrained(tmp_path / "r")
    loaded = RealmRetriever.from_pretrained(tmp_path / "r")  # allow_pickle=False
    assert loaded.block_records[0] == b"This is the first record"
    assert [bytes(r) for r in loaded.block_records] == RECORDS
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer("test question").input_ids) == [
        "[CLS]", "test", "question", "[SEP]"
    ]


def test_ports_pickled_records_need_explicit_allow_pickle() -> None:
    with pytest.raises(ValueError, match="allow_pickle=True"):
        RealmRetriever.from_pretrained(REFERENCE / "openqa_eval")
    retriever = RealmRetriever.from_pretrained(REFERENCE / "openqa_eval", allow_pickle=True)
    records = json.loads((REFERENCE / "openqa_eval" / "block_records.json").read_text())
    assert [bytes(r).decode() for r in retriever.block_records] == records


@pytest.mark.parametrize("tokenizer_cls", [RealmTokenizer, RealmTokenizerFast], ids=["slow", "fast"])
def test_store_backed_retriever_equals_the_ports_decode_and_reencode(tokenizer_cls, tmp_path) -> None:
    """From pre-tokenized ids, without decoding: the same reader inputs and answer positions."""
    from realm.corpus import Block, BlockStore

    tokenizer = tokenizer_cls.from_pretrained(REFERENCE / "tokenizer" / ("slow" if tokenizer_cls is RealmTokenizer else "fast"))
    texts = [
        "Paris is the capital and most populous city of France.",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        "Rome is the capital city of Italy. " * 12,  # long: truncated by the reader length
        "A [SEP] written inside a block is text, not a separator.",
        "Émile Zola's «J'accuse…!» appeared in L'Aurore.",
    ]
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(tmp_path / "store", blocks, tokenizer)
    from_store = RealmRetriever(store, tokenizer)
    in_memory = RealmRetriever(texts, tokenizer)
    question = tokenizer(["Where is the Eiffel tower, in France?"], padding="max_length", max_length=20).input_ids
    answers = tokenizer(["paris", "france", "capital city"], add_special_tokens=False).input_ids
    ids = np.array([2, 0, 1, 3, 4])
    for max_length in (24, 64):
        *labels_a, concat_a = from_store(ids, question, answers, max_length=max_length)
        *labels_b, concat_b = in_memory(ids, question, answers, max_length=max_length)
        assert labels_a == labels_b
        for key in ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"):
            assert concat_a[key].tolist() == concat_b[key].tolist(), (max_length, key)
    assert from_store.block_texts([4, 0]) == [texts[4], texts[0]]

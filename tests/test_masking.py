"""Salient span masking and pre-training examples: the finder on a table, the masking rules, determinism."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from realm.corpus import BlockStore, BuildConfig, Document, build_blocks, split_sentences
from realm.objectives import IGNORE_INDEX
from realm.pretrain.examples import ExampleGenerator, MaskedExample, collate_masked
from realm.pretrain.masking import MaskingConfig, SentenceMasker, SpacySpanFinder, find_salient_spans
from realm.tokenization import RealmTokenizerFast

VOCAB = Path(__file__).parent / "fixtures" / "reference" / "tokenizer" / "vocab.txt"

PAGES = [
    (
        "Leonardo da Vinci",
        "Leonardo da Vinci was born on 15 April 1452 in Vinci. He painted the Mona Lisa in Florence. "
        "In 1516 he moved to France with Francesco Melzi. He died at Amboise on 2 May 1519.",
    ),
    (
        "University of Oxford",
        "The University of Oxford is a collegiate university in Oxford, England. Teaching existed there "
        "in 1096. It has 39 colleges and about 26,000 students. The Bodleian Library holds 13 million items.",
    ),
    (
        "Eiffel Tower",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris. Gustave Eiffel's company built it "
        "between 1887 and 1889. It is 330 metres tall. Millions of people visit it every year.",
    ),
]


@pytest.fixture(scope="module")
def tokenizer() -> RealmTokenizerFast:
    return RealmTokenizerFast(vocab_file=VOCAB)


def make_store(
    path: Path, tokenizer: RealmTokenizerFast, pages=PAGES, max_block_tokens: int = 48
) -> BlockStore:
    documents = [Document(title, text, "mem", n + 1) for n, (title, text) in enumerate(pages)]
    blocks = list(build_blocks(documents, tokenizer, BuildConfig(max_block_tokens=max_block_tokens)))
    return BlockStore.create(path, blocks, tokenizer)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> BlockStore:
    return make_store(tmp_path_factory.mktemp("store") / "blocks", tokenizer)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------- the finder

FINDER_CASES = [
    (
        "The University of Oxford was founded in 1096 by Henry II.",
        [("University of Oxford", "entity"), ("1096", "date"), ("Henry II", "entity")],
    ),
    (
        "Leonardo da Vinci painted the Mona Lisa between 1503 and 1519.",
        [("Leonardo da Vinci", "entity"), ("Mona Lisa", "entity"), ("1503", "date"), ("1519", "number")],
    ),
    (
        "On 4 July 1776, the Declaration of Independence was signed.",
        [("4 July 1776", "date"), ("Declaration of Independence", "entity")],
    ),
    (
        "It was signed on July 4, 1776 in Philadelphia.",
        [("July 4, 1776", "date"), ("Philadelphia", "entity")],
    ),
    (
        "In March 1990 the population reached 1,234,567, up 3.5%.",
        [("March 1990", "date"), ("1,234,567", "number"), ("3.5%", "number")],
    ),
    (
        "He was 1.85 m tall and lived in the 1990s in New York City.",
        [("1.85 m", "number"), ("1990s", "date"), ("New York City", "entity")],
    ),
    (
        "She won the 19th prize, worth $10 million, in 2003.",
        [("19th", "number"), ("$10 million", "number"), ("2003", "date")],
    ),
    (
        "In Paris, the Eiffel Tower is 330 metres tall.",
        [("Paris", "entity"), ("Eiffel Tower", "entity"), ("330 metres", "number")],
    ),
    ("This is old. It was built there.", []),
    ("the cat sat on the mat.", []),
    (
        "J. R. R. Tolkien moved to the U.S. in 1950.",
        [("J. R. R. Tolkien", "entity"), ("U.S.", "entity"), ("1950", "date")],
    ),
    ("Alexander the Great died in 323 BC.", [("Alexander the Great", "entity"), ("323 BC", "date")]),
    ("World War I lasted 1914–1918.", [("World War I", "entity"), ("1914–1918", "date")]),
    (
        "Simone de Beauvoir met Jean-Paul Sartre.",
        [("Simone de Beauvoir", "entity"), ("Jean-Paul Sartre", "entity")],
    ),
    ("Paris and the Seine are of note.", [("Paris", "entity"), ("Seine", "entity")]),
]


@pytest.mark.parametrize(("text", "expected"), FINDER_CASES)
def test_builtin_finder_table(text: str, expected: list[tuple[str, str]]) -> None:
    spans = find_salient_spans(text)
    assert [(text[s:e], kind) for s, e, kind in spans] == expected


def test_builtin_finder_spans_are_sorted_and_disjoint() -> None:
    text = " ".join(t for t, _ in FINDER_CASES) + " " + " ".join(text for _, text in PAGES)
    spans = find_salient_spans(text)
    assert len(spans) > 30
    for (s1, e1, _), (s2, e2, _) in zip(spans, spans[1:], strict=False):
        assert s1 < e1 <= s2 < e2
    # no span starts or ends inside a word
    for s, e, _ in spans:
        assert (s == 0 or not text[s - 1].isalnum()) and (e == len(text) or not text[e].isalnum())


def test_spacy_finder_errors_name_the_fix() -> None:
    if importlib.util.find_spec("spacy") is None:
        with pytest.raises(ImportError, match=r"pip install 'realm-lm\[spacy\]'"):
            SpacySpanFinder("en_core_web_sm")
        with pytest.raises(ImportError, match="spacy"):
            SentenceMasker(RealmTokenizerFast(vocab_file=VOCAB), MaskingConfig(spacy_model="en_core_web_sm"))
    else:
        with pytest.raises(OSError, match="python -m spacy download no_such_model_xyz"):
            SpacySpanFinder("no_such_model_xyz")


def test_spacy_finder_runs_when_installed() -> None:
    spacy = pytest.importorskip("spacy")
    try:
        finder = SpacySpanFinder("en_core_web_sm")
    except OSError:
        pytest.skip("spaCy is installed but en_core_web_sm is not")
    assert spacy is not None
    text = "Leonardo da Vinci was born in Vinci in 1452."
    assert any(text[s:e] == "1452" for s, e, _ in finder(text))


def test_config_validation_names_the_field() -> None:
    for field, value in [
        ("strategy", "whole_word"),
        ("query_seq_len", 2),
        ("max_masks", 0),
        ("mask_rate", 0.0),
    ]:
        with pytest.raises(ValueError, match=f"MaskingConfig.{field}"):
            MaskingConfig(**{field: value})


# --------------------------------------------------------------------------------------------- masking


def check_well_formed(masked, tokenizer, sentence: str, config: MaskingConfig) -> list[int]:
    """Asserts the invariants of any masked sentence; returns the masked positions."""
    original = [
        tokenizer.cls_token_id,
        *ids_of(tokenizer, sentence)[: config.query_seq_len - 2],
        tokenizer.sep_token_id,
    ]
    assert masked.skip is None
    assert len(masked.input_ids) == len(masked.labels) == len(original) <= config.query_seq_len
    positions = [i for i, label in enumerate(masked.labels) if label != IGNORE_INDEX]
    assert 0 < len(positions) <= config.max_masks
    assert 0 not in positions and len(original) - 1 not in positions  # [CLS] and [SEP] are never masked
    for i, (got, want, label) in enumerate(zip(masked.input_ids, original, masked.labels, strict=True)):
        if i in positions:
            assert got == tokenizer.mask_token_id and label == want
        else:
            assert got == want and label == IGNORE_INDEX
    return positions


def test_salient_mask_is_exactly_one_spans_wordpieces(tokenizer) -> None:
    sentence = "Leonardo da Vinci was born on 15 April 1452 in Vinci."
    config = MaskingConfig()
    masker = SentenceMasker(tokenizer, config)
    spans = {sentence[s:e] for s, e, _ in find_salient_spans(sentence)}
    assert spans == {"Leonardo da Vinci", "15 April 1452", "Vinci"}
    seen: Counter[str] = Counter()
    for seed in range(300):
        masked = masker(sentence, np.random.default_rng(seed))
        positions = check_well_formed(masked, tokenizer, sentence, config)
        assert positions == list(range(positions[0], positions[-1] + 1))  # one contiguous span
        hidden = [masked.labels[p] for p in positions]
        matches = [text for text in spans if ids_of(tokenizer, text) == hidden]
        assert matches, f"masked {tokenizer.convert_ids_to_tokens(hidden)} is not a salient span"
        seen[matches[0]] += 1
    # one span uniformly among the three: each about 100 of 300
    assert set(seen) == spans and all(70 <= n <= 130 for n in seen.values()), seen


def test_only_wordpieces_fully_inside_the_span_are_masked(tokenizer) -> None:
    sentence = "Leonardo da Vinci painted the Mona Lisa."
    # "eonardo da Vinci pa": "leonardo" and "painted" are cut, so only "da vinci" is inside
    masker = SentenceMasker(tokenizer, MaskingConfig(), span_finder=lambda text: [(1, 20, "test")])
    masked = masker(sentence, np.random.default_rng(0))
    hidden = [label for label in masked.labels if label != IGNORE_INDEX]
    assert hidden == ids_of(tokenizer, "da Vinci")
    # a span inside a single wordpiece covers none
    masker = SentenceMasker(tokenizer, MaskingConfig(), span_finder=lambda text: [(0, 5, "test")])
    assert masker(sentence, np.random.default_rng(0)).skip == "no_salient_span"


def test_skip_reasons(tokenizer) -> None:
    rng = np.random.default_rng(0)
    masker = SentenceMasker(tokenizer, MaskingConfig())
    assert masker("the cat sat on the mat near the old bridge.", rng).skip == "no_salient_span"
    assert masker("", rng).skip == "empty_sentence"
    assert masker("   ", rng).skip == "empty_sentence"
    # "University of Oxford" is 3 wordpieces
    assert SentenceMasker(tokenizer, MaskingConfig(max_masks=2))(
        "it is the University of Oxford.", rng
    ).skip == ("too_many_masks")
    # the only span lies beyond query_seq_len once truncated: [CLS] + 4 wordpieces + [SEP]
    short = MaskingConfig(query_seq_len=6)
    assert SentenceMasker(tokenizer, short)("the cat sat on the mat near Paris.", rng).skip == "mask_past_end"
    # one span fits, one does not: the one that fits is always chosen
    sentence = "Paris is on the river near the old bridge of Rouen."
    for seed in range(20):
        masked = SentenceMasker(tokenizer, MaskingConfig(query_seq_len=8))(
            sentence, np.random.default_rng(seed)
        )
        check_well_formed(masked, tokenizer, sentence, MaskingConfig(query_seq_len=8))
        assert masked.input_ids[1] == tokenizer.mask_token_id


def mask_counts(masker: SentenceMasker, sentence: str, trials: int) -> tuple[np.ndarray, list[int]]:
    """Per-position mask frequency and the lengths of contiguous masked runs over ``trials`` maskings."""
    n = len(ids_of(masker.tokenizer, sentence))
    hits = np.zeros(n)
    runs: list[int] = []
    for seed in range(trials):
        masked = masker(sentence, np.random.default_rng(seed))
        positions = check_well_formed(masked, masker.tokenizer, sentence, masker.config)
        assert len(positions) == min(masker.config.max_masks, max(1, round(masker.config.mask_rate * n)))
        hits[np.asarray(positions) - 1] += 1
        run = 1
        for a, b in zip(positions, positions[1:], strict=False):
            if b == a + 1:
                run += 1
            else:
                runs.append(run)
                run = 1
        runs.append(run)
    return hits, runs


SENTENCE_40 = " ".join(f"w{i}" for i in range(20))  # "w0 w1 ..." -> 40 wordpieces ("w", "##0")


def test_random_token_rate_and_uniformity(tokenizer) -> None:
    assert len(ids_of(tokenizer, SENTENCE_40)) == 40
    config = MaskingConfig(strategy="random_token", mask_rate=0.15, max_masks=40)
    hits, runs = mask_counts(SentenceMasker(tokenizer, config), SENTENCE_40, 400)
    # exactly round(0.15 * 40) = 6 masks each time (checked inside), spread uniformly over the 40 tokens:
    # each position expects 400 * 6 / 40 = 60 hits
    expected = 400 * 6 / 40
    assert hits.sum() == 400 * 6
    chi2 = float(((hits - expected) ** 2 / expected).sum())
    assert chi2 < 80, chi2  # 39 degrees of freedom: p ~ 1e-4 at 80; a biased sampler lands far above
    assert np.mean(runs) < 1.4  # independent positions rarely touch


def test_random_span_lengths(tokenizer) -> None:
    config = MaskingConfig(strategy="random_span", mask_rate=0.3, max_masks=40)
    hits, runs = mask_counts(SentenceMasker(tokenizer, config), SENTENCE_40, 400)
    assert hits.sum() == 400 * 12
    # Geometric(0.2) lengths capped by the 12-token budget: contiguous runs average ~3-5 wordpieces
    assert 2.5 < np.mean(runs) < 6.0, np.mean(runs)
    assert hits.min() > 0  # every position can be covered
    # max_masks caps the random strategies too
    capped = MaskingConfig(strategy="random_span", mask_rate=0.5, max_masks=4)
    masked = SentenceMasker(tokenizer, capped)(SENTENCE_40, np.random.default_rng(1))
    assert len(check_well_formed(masked, tokenizer, SENTENCE_40, capped)) == 4


# --------------------------------------------------------------------------------------------- examples


def test_examples_are_deterministic_and_come_from_their_block(store, tokenizer) -> None:
    config = MaskingConfig()
    a, b = (
        ExampleGenerator(store, tokenizer, config, seed=3),
        ExampleGenerator(store, tokenizer, config, seed=3),
    )
    other = ExampleGenerator(store, tokenizer, config, seed=4)
    first = [a.example(i) for i in range(40)]
    assert [b.example(i) for i in reversed(range(40))][::-1] == first  # any order, any object
    assert [other.example(i) for i in range(40)] != first
    assert a.counters["examples"] == 40
    masks = {tokenizer.mask_token_id}
    for e in first:
        sentences = split_sentences(store.texts([e.source_block])[0])
        restored = [
            label if label != IGNORE_INDEX else tok for tok, label in zip(e.input_ids, e.labels, strict=True)
        ]
        assert any(
            restored == [tokenizer.cls_token_id, *ids_of(tokenizer, s), tokenizer.sep_token_id]
            for s in sentences
        )
        assert masks & set(e.input_ids) and len(e.input_ids) <= config.query_seq_len


def test_skips_are_counted_and_hopeless_stores_fail(tmp_path, tokenizer) -> None:
    pages = [("", "the cat sat on the mat. the dog sat too."), ("", "Paris is old. it is on a river.")]
    store = make_store(tmp_path / "mixed", tokenizer, pages)
    generator = ExampleGenerator(store, tokenizer, MaskingConfig(), seed=0)
    for i in range(30):
        e = generator.example(i)
        assert [label for label in e.labels if label != IGNORE_INDEX] == ids_of(tokenizer, "Paris")
    assert generator.counters["examples"] == 30 and generator.counters["no_salient_span"] > 10
    hopeless = make_store(tmp_path / "lower", tokenizer, pages[:1])
    with pytest.raises(ValueError, match="no maskable sentence in 100 draws"):
        ExampleGenerator(hopeless, tokenizer, MaskingConfig(), seed=0).example(0)
    # the random strategies need no entity
    e = ExampleGenerator(hopeless, tokenizer, MaskingConfig(strategy="random_token"), seed=0).example(0)
    assert tokenizer.mask_token_id in e.input_ids


def test_collate_masked() -> None:
    examples = [
        MaskedExample([101, 103, 102], [-100, 7, -100], 5),
        MaskedExample([101, 9, 103, 11, 102], [-100, -100, 8, -100, -100], 2),
    ]
    batch = collate_masked(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 103, 102, 0, 0], [101, 9, 103, 11, 102]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 7, -100, -100, -100], [-100, -100, 8, -100, -100]]
    assert batch["token_type_ids"].eq(0).all() and batch["source_block"].tolist() == [5, 2]
    assert all(t.dtype == torch.long for t in batch.values())

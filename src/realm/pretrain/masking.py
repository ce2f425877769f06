"""Which tokens of a sentence REALM hides: salient spans (the paper's Sec. 3.4), or BERT/SpanBERT baselines.

REALM masks one *salient span* per sentence, a named entity or a date, because predicting those needs
world knowledge and so rewards retrieval (the paper's Table 2: salient span masking beats random token and
random span masking by a wide margin). The original found spans with a BERT tagger trained on CoNLL-2003
plus a date regex, neither released. We offer two finders:

* `find_salient_spans`: dependency-free compiled regexes for dates, numbers and capitalised entity runs;
  fast enough for millions of sentences, precise enough to produce knowledge-heavy masks.
* `SpacySpanFinder`: spaCy's statistical NER (``pip install 'realm-lm[spacy]'``), closer to the original.

`SentenceMasker` turns a sentence into ``[CLS] masked sentence [SEP]`` ids and MLM labels, following the
released code's rules: every wordpiece fully inside the chosen span becomes [MASK]; a sentence is skipped
(with a named reason) when no span can be masked within ``query_seq_len`` and ``max_masks``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from realm.objectives import IGNORE_INDEX

__all__ = [
    "SPACY_LABELS",
    "STRATEGIES",
    "MaskedSentence",
    "MaskingConfig",
    "SentenceMasker",
    "SpacySpanFinder",
    "find_salient_spans",
]

Span = tuple[int, int, str]  # (start, end) character offsets, end exclusive; kind
SpanFinder = Callable[[str], list[Span]]

STRATEGIES = ("salient", "random_token", "random_span")

# spaCy (OntoNotes) labels kept as salient: CoNLL's PER/ORG/LOC/MISC plus the temporal and numeric ones
# REALM's date regex covered.
SPACY_LABELS = frozenset(
    "PERSON ORG GPE LOC DATE NORP EVENT WORK_OF_ART FAC PRODUCT LAW LANGUAGE TIME PERCENT MONEY QUANTITY "
    "ORDINAL CARDINAL".split()
)

# ---------------------------------------------------------------------------------------------- the regexes

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
    r"Jan\.|Feb\.|Mar\.|Apr\.|Jun\.|Jul\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)"
)
_ERA = r"(?:\s(?:BC|BCE|AD|CE))?"
_TEMPORAL_PREP = (
    r"(?i:in|since|by|from|until|till|before|after|during|between|around|circa|c\.|early|late|mid-?)"
)
_UPPER = "A-ZÀ-ÖØ-ÞĀ-Ž"  # Latin-1 and Latin Extended-A capitals cover the common diacritics in names
_CONNECTORS = r"(?:of|de|da|di|del|della|der|den|des|du|do|dos|la|le|van|von|ter|zu|y|e|bin|ibn|al|the)"
# A capitalised word: "Oxford", "O'Brien", "Rolls-Royce", "McDonald", an initial "J." or "U.S.";
# never a month (months belong to dates, and would otherwise glue a date onto an entity).
_CAP_WORD = rf"(?!{_MONTH}\b)(?:(?:[{_UPPER}]\.){{1,4}}|[{_UPPER}][\w]*(?:[-'’][{_UPPER}][\w]*)*)"
_UNITS = (
    r"(?:%|\s?(?:percent|per\scent|million|billion|trillion|thousand|hundred|km2|km|kilometres|kilometers|"
    r"metres|meters|m|cm|mm|miles|mi|feet|ft|inches|kg|kilograms|g|tonnes|tons|lb|pounds|hectares|acres|"
    r"sq\smi|°C|°F|mph|km/h))"
)
_NUMBER = (
    r"(?:[$£€¥]\s?)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:st|nd|rd|th)?" + rf"(?:{_UNITS}(?!\w))?"
)

_SALIENT = re.compile(
    "|".join(
        [
            # dates, longest forms first: at one start position the first alternative that matches wins
            rf"(?P<date>(?<![\w.])\d{{1,2}}(?:st|nd|rd|th)?\s{_MONTH}(?:,?\s\d{{1,4}}{_ERA})?(?!\w)"
            rf"|{_MONTH}\s\d{{1,2}}(?:st|nd|rd|th)?(?:,\s?\d{{4}}{_ERA})?(?!\w)"
            rf"|{_MONTH}(?:\sof)?\s\d{{3,4}}{_ERA}(?!\w)"
            r"|(?<![\w.])(?:\d{2,3}0s|'\d0s)(?!\w)"
            r"|(?<![\w.,])(?:\d{3,4}\s?[–-]\s?\d{2,4}|\d{1,4}\s(?:BC|BCE|AD|CE)|(?:AD|CE)\s\d{1,4})(?!\w))",
            # "in 1923": the year alone is the span (group `year`), the preposition only disambiguates
            rf"(?<![\w.]){_TEMPORAL_PREP}\s(?:the\s)?(?P<year>\d{{3,4}}{_ERA})(?![\w.,]\d)(?!\w)",
            rf"(?P<number>(?<![\w.,]){_NUMBER})",
            rf"(?P<entity>(?<![\w]){_CAP_WORD}(?:\s(?:{_CONNECTORS}\s){{0,2}}{_CAP_WORD})*)(?!\w)",
        ]
    )
)

# Capitalised only because they open a sentence (or a capitalised pronoun): not entities there.
_STOPWORDS = frozenset(
    """
    The A An In On At By For From With Without Of To As Into Onto Upon Within
    It Its He She His Her Hers Him They Their Them We Our Us I You Your My Me
    This That These Those There Here Then Thus Therefore Hence However But And Or Nor So Yet Also
    After Before During When While Whereas Although Though Since Until If Unless Because Once
    Some Many Most Several Both Each Every All Any Other Another Such No Not Few Much More Less
    What Who Whom Whose Which Where Why How Today Later Meanwhile Despite Under Over Between Among
    Unlike Like Following According Throughout Only Even Still Instead Indeed Often Later Early
    """.split()
)
_OPENING = "\"'“‘«([{"


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip().rstrip(_OPENING).rstrip()
    return not before or before[-1] in ".!?:;"


def find_salient_spans(text: str) -> list[Span]:
    """Salient spans of ``text`` found by regexes: the built-in stand-in for REALM's NER tagger + date regex.

    Kinds: ``"date"`` ("4 July 1776", "July 4, 1776", "March 1990", "1990s", the year of "in 1923",
    "1914-1918", "500 BC"), ``"number"`` ("1,200", "3.5 km", "42%", "$10 million", "19th") and ``"entity"``
    (runs of capitalised words, with up to two lower-case connectors between two of them: "University of
    Oxford", "Leonardo da Vinci"). A capitalised common word that opens a sentence ("The", "In", "He"...)
    is not an entity: alone it is dropped, in front of a run it is cut off ("In Paris" -> "Paris").

    One compiled regex scans the text once, leftmost-first, so spans never overlap; where two kinds could
    start at the same place the earlier alternative wins (dates, then numbers, then entities).

    Returns:
        ``(start, end, kind)`` character spans of ``text``, sorted and non-overlapping.
    """
    spans: list[Span] = []
    for match in _SALIENT.finditer(text):
        kind = match.lastgroup
        if kind == "year":
            spans.append((match.start("year"), match.end("year"), "date"))
            continue
        start, end = match.span()
        if kind == "entity":
            if _sentence_initial(text, start):
                first = text[start:end].split(" ", 1)
                if first[0] in _STOPWORDS:
                    if len(first) == 1:
                        continue
                    start += len(first[0]) + 1
            if text[start:end] == "I":
                continue
        spans.append((start, end, kind or "entity"))
    return spans


class SpacySpanFinder:
    """Salient spans from spaCy's named-entity recogniser (closer to the original's CoNLL tagger).

    Args:
        model_name: An installed spaCy pipeline with an ``ner`` component, e.g. ``"en_core_web_sm"``.
        labels: Entity labels kept (default `SPACY_LABELS`).

    Raises:
        ImportError: spaCy is not installed.
        OSError: The model is not installed.
    """

    def __init__(self, model_name: str, labels: Sequence[str] = tuple(sorted(SPACY_LABELS))) -> None:
        try:
            import spacy
        except ImportError as err:
            raise ImportError(
                "SpacySpanFinder needs spaCy: pip install 'realm-lm[spacy]' && "
                f"python -m spacy download {model_name} (or use the built-in finder: spacy_model=None)"
            ) from err
        try:
            nlp = spacy.load(model_name)
        except OSError as err:
            raise OSError(
                f"spaCy model {model_name!r} is not installed: python -m spacy download {model_name}"
            ) from err
        if "ner" not in nlp.pipe_names:
            raise ValueError(f"spaCy model {model_name!r} has no 'ner' component (it has {nlp.pipe_names})")
        # Only NER and what feeds it: the parser and lemmatiser would triple the time for nothing.
        needed = {"ner", "tok2vec", "transformer"}
        nlp.select_pipes(disable=[name for name in nlp.pipe_names if name not in needed])
        self.model_name = model_name
        self.labels = frozenset(labels)
        self.nlp = nlp

    def __call__(self, text: str) -> list[Span]:
        """``(start, end, label)`` spans of the kept entity labels (spaCy's are sorted and disjoint)."""
        doc = self.nlp(text)
        return [(e.start_char, e.end_char, e.label_) for e in doc.ents if e.label_ in self.labels]


# ---------------------------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class MaskingConfig:
    """How pre-training sentences are masked.

    Attributes:
        strategy: ``"salient"`` (REALM: one salient span), ``"random_token"`` (BERT: ``mask_rate`` of the
            wordpieces, at least one) or ``"random_span"`` (SpanBERT: contiguous spans up to ``mask_rate``).
        spacy_model: A spaCy pipeline for salient spans; None for the built-in `find_salient_spans`.
        query_seq_len: Length cap of ``[CLS] sentence [SEP]`` (96 in the original); longer sentences are cut.
        max_masks: Most [MASK]s per sentence (10 in the original): a longer salient span is skipped, the
            random strategies mask at most this many.
        mask_rate: Fraction of a sentence's wordpieces the random strategies mask.
        span_geometric_p: random_span lengths are Geometric(p) wordpieces (SpanBERT: 0.2) ...
        max_span_length: ... capped at this (SpanBERT: 10); mean about 3.8 with the defaults.
    """

    strategy: str = "salient"
    spacy_model: str | None = None
    query_seq_len: int = 96
    max_masks: int = 10
    mask_rate: float = 0.15
    span_geometric_p: float = 0.2
    max_span_length: int = 10

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"MaskingConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.query_seq_len < 3:
            raise ValueError(
                f"MaskingConfig.query_seq_len must be >= 3 ([CLS] x [SEP]), got {self.query_seq_len}"
            )
        if self.max_masks < 1:
            raise ValueError(f"MaskingConfig.max_masks must be >= 1, got {self.max_masks}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"MaskingConfig.mask_rate must be in (0, 1], got {self.mask_rate}")
        if not 0.0 < self.span_geometric_p <= 1.0:
            raise ValueError(f"MaskingConfig.span_geometric_p must be in (0, 1], got {self.span_geometric_p}")
        if self.max_span_length < 1:
            raise ValueError(f"MaskingConfig.max_span_length must be >= 1, got {self.max_span_length}")


@dataclass(frozen=True)
class MaskedSentence:
    """A masked sentence, or why there is none.

    Attributes:
        input_ids: ``[CLS] sentence [SEP]`` with masked wordpieces replaced by [MASK] (empty if skipped).
        labels: Same length: the original id at masked positions, -100 elsewhere (empty if skipped).
        skip: None, or the reason no example was made: ``"empty_sentence"``, ``"no_salient_span"``
            (no span, or none covering a whole wordpiece), ``"too_many_masks"`` (every span has more than
            ``max_masks`` wordpieces), ``"mask_past_end"`` (every span reaches past ``query_seq_len``).
    """

    input_ids: list[int]
    labels: list[int]
    skip: str | None = None


class SentenceMasker:
    """Mask one sentence (text) with a `MaskingConfig`; randomness comes only from the ``rng`` passed in.

    Args:
        tokenizer: A `RealmTokenizerFast` (salient masking maps character spans to wordpieces through its
            offsets; the slow tokenizer has none) or, for the random strategies, any REALM tokenizer.
        config: The masking configuration.
        span_finder: Overrides the finder the config names (any ``text -> [(start, end, kind)]``).
    """

    def __init__(self, tokenizer: Any, config: MaskingConfig, span_finder: SpanFinder | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.cls_id, self.sep_id, self.mask_id = (
            tokenizer.convert_tokens_to_ids(t)
            for t in (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token)
        )
        self.span_finder: SpanFinder | None = None
        if config.strategy == "salient":
            if span_finder is None:
                span_finder = (
                    SpacySpanFinder(config.spacy_model) if config.spacy_model else find_salient_spans
                )
            self.span_finder = span_finder
            if not hasattr(tokenizer, "backend_tokenizer"):
                raise ValueError(
                    "salient span masking needs character offsets: use RealmTokenizerFast (a store built "
                    "with it saves tokenizer.json, and BlockStore.load_tokenizer() then returns the fast one)"
                )

    def __call__(self, sentence: str, rng: np.random.Generator) -> MaskedSentence:
        """Mask ``sentence``; see `MaskedSentence` for the result and skip reasons."""
        config = self.config
        room = config.query_seq_len - 2  # wordpieces that fit between [CLS] and [SEP]
        if config.strategy == "salient":
            encoded = self.tokenizer([sentence], add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"][0], encoded["offset_mapping"][0]
            if not ids:
                return MaskedSentence([], [], "empty_sentence")
            positions, skip = self._salient_positions(sentence, offsets, room, rng)
            if skip is not None:
                return MaskedSentence([], [], skip)
        else:
            ids = self.tokenizer([sentence], add_special_tokens=False)["input_ids"][0]
            if not ids:
                return MaskedSentence([], [], "empty_sentence")
            n = min(len(ids), room)
            budget = min(config.max_masks, n, max(1, round(config.mask_rate * n)))
            positions = (
                self._random_tokens(n, budget, rng)
                if config.strategy == "random_token"
                else self._random_spans(n, budget, rng)
            )
        ids = ids[:room]
        input_ids = [self.cls_id, *ids, self.sep_id]
        labels = [IGNORE_INDEX] * len(input_ids)
        for p in positions:
            labels[p + 1] = input_ids[p + 1]
            input_ids[p + 1] = self.mask_id
        return MaskedSentence(input_ids, labels)

    def _salient_positions(
        self, sentence: str, offsets: Sequence[tuple[int, int]], room: int, rng: np.random.Generator
    ) -> tuple[list[int], str | None]:
        """Wordpiece indices (into the sentence) of one span drawn uniformly among the maskable ones."""
        valid: list[list[int]] = []
        reasons: set[str] = set()
        for start, end, _ in self.span_finder(sentence):  # type: ignore[misc]
            inside = [i for i, (s, e) in enumerate(offsets) if start <= s and e <= end and e > s]
            if not inside:
                reasons.add("no_salient_span")
            elif len(inside) > self.config.max_masks:
                reasons.add("too_many_masks")
            elif inside[-1] >= room:
                reasons.add("mask_past_end")
            else:
                valid.append(inside)
        if valid:
            return valid[int(rng.integers(len(valid)))], None
        for reason in ("too_many_masks", "mask_past_end"):
            if reason in reasons:
                return [], reason
        return [], "no_salient_span"

    @staticmethod
    def _random_tokens(n: int, budget: int, rng: np.random.Generator) -> list[int]:
        return sorted(rng.choice(n, size=budget, replace=False).tolist())

    def _random_spans(self, n: int, budget: int, rng: np.random.Generator) -> list[int]:
        """SpanBERT: spans of Geometric(p) length (capped) at uniform starts until ``budget`` are masked."""
        chosen: set[int] = set()
        for _ in range(100 * budget):  # a bound on draws; each draw adds >= 1 new position almost surely
            if len(chosen) >= budget:
                break
            length = min(int(rng.geometric(self.config.span_geometric_p)), self.config.max_span_length)
            length = min(length, budget - len(chosen), n)
            start = int(rng.integers(n - length + 1))
            chosen.update(range(start, start + length))
        return sorted(chosen)

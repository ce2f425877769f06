"""Documents -> REALM/ORQA retrieval blocks of at most ``max_block_tokens`` wordpieces.

The recipe is ORQA's (``language/orqa/preprocessing/wiki_preprocessor.py``, used for REALM's 13,353,718
Wikipedia blocks), with a regex sentence splitter instead of NLTK punkt:

1. Filter pages (`skip_reason`): empty pages; with ``filter_pages``, titles starting with ``List of``,
   ``Index of``, ``Outline of`` or containing ``(disambiguation)`` (ORQA's rule, case-sensitive), and
   list-like text: at least 3 non-empty lines of which more than ``max_list_fraction`` start with a list
   marker (``*``, ``#``, ``-``, ``•``, ``1.``, ``1)``...).
2. Split the text into sentences (`realm.corpus.sentences.split_sentences`), tokenize the title and each
   sentence with the given tokenizer (no special tokens).
3. Pack whole sentences greedily, in order, while ``3 + len(title_ids) + len(block_ids) <=
   max_block_tokens`` (room for ``[CLS] title [SEP] block [SEP]``); the block text is its sentences joined
   with one space. A sentence longer than the whole budget starts a new block and is cut between words
   (a word longer than the budget between characters), so nothing is dropped.

Differences from ORQA, all counted in `BuildStats`: oversized sentences are split (ORQA kept them whole, in
blocks longer than 288); titles longer than ``max_title_tokens`` are shortened (at a word if possible);
sentences with no wordpieces (only control characters) are dropped.

Invariant: a block's ``token_ids`` are exactly the tokenizer's ids of its ``text`` (tokenizing each
sentence separately gives the same ids as tokenizing the joined text, since BERT tokenization never
merges across whitespace), and ``title_ids`` those of its ``title``.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import islice
from typing import Any

from .documents import INPUT_FORMATS, ON_ERROR, Document
from .sentences import normalize_whitespace, split_sentences
from .stats import BuildStats

_NO_LIMIT = 1 << 30
_LIST_LINE = re.compile(r"\s*(?:[*#•·▪◦‣+\-–—]|\d{1,3}[.)])\s")
_LIST_TITLE_PREFIXES = ("List of ", "Index of ", "Outline of ")


@dataclass(frozen=True)
class BuildConfig:
    """How documents become blocks.

    Attributes:
        max_block_tokens: Budget of ``[CLS] title [SEP] block [SEP]`` in wordpieces (288 in REALM/ORQA).
        max_title_tokens: Longer titles are shortened (Wikipedia titles are far shorter); None means
            ``max_block_tokens // 4`` (72 for 288).
        filter_pages: Apply ORQA's title filters and the list-text rule (empty pages are always skipped).
        max_list_fraction: The list-text rule's threshold (fraction of list lines); 1.0 turns it off.
        drop_title_line: Drop the text's first line when it repeats the title (WikiExtractor ``<doc>``
            style text).
        unescape_html: Decode HTML entities (``&amp;``) in title and text, as ORQA does.
        input_format: ``"auto"``, ``"jsonl"`` or ``"txt"`` (see `realm.corpus.documents`).
        on_error: ``"raise"`` on malformed input, or ``"skip"`` and count it.
        docs_per_batch: Documents tokenized per tokenizer call (throughput only; output is the same).
    """

    max_block_tokens: int = 288
    max_title_tokens: int | None = None
    filter_pages: bool = True
    max_list_fraction: float = 0.5
    drop_title_line: bool = True
    unescape_html: bool = True
    input_format: str = "auto"
    on_error: str = "raise"
    docs_per_batch: int = 64

    def __post_init__(self) -> None:
        if self.max_block_tokens < 4:
            raise ValueError(
                f"max_block_tokens must be at least 4 ([CLS] [SEP] text [SEP]), got {self.max_block_tokens}"
            )
        if self.title_budget < 0 or self.max_block_tokens - 3 - self.title_budget < 1:
            raise ValueError(
                f"max_block_tokens={self.max_block_tokens} leaves no room for text after [CLS], two [SEP] and "
                f"max_title_tokens={self.max_title_tokens}; use max_block_tokens >= max_title_tokens + 4"
            )
        if self.max_block_tokens > 65535:
            raise ValueError(f"max_block_tokens must be at most 65535, got {self.max_block_tokens}")
        if not 0.0 <= self.max_list_fraction <= 1.0:
            raise ValueError(f"max_list_fraction must be in [0, 1], got {self.max_list_fraction}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.docs_per_batch < 1:
            raise ValueError(f"docs_per_batch must be positive, got {self.docs_per_batch}")

    @property
    def title_budget(self) -> int:
        """Wordpieces a title may keep: ``max_title_tokens``, or ``max_block_tokens // 4`` when None."""
        return self.max_block_tokens // 4 if self.max_title_tokens is None else self.max_title_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BuildConfig:
        """Build from a dict (e.g. a manifest's ``build_config``); an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BuildConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Block:
    """One retrieval block, as stored.

    Attributes:
        title: Title of the block's document.
        text: Block text (whole sentences joined by a space, except where a sentence was too long).
        title_ids: Wordpiece ids of ``title`` (no special tokens).
        token_ids: Wordpiece ids of ``text`` (no special tokens).
        doc_id: Index of the document in the input stream (counting every well-formed document read).
        sentence_starts: Offsets into ``token_ids`` where a sentence starts (ORQA's ``sentence_starts``).
    """

    title: str
    text: str
    title_ids: Sequence[int]
    token_ids: Sequence[int]
    doc_id: int = -1
    sentence_starts: Sequence[int] = ()


def is_list_like(text: str, max_list_fraction: float = 0.5) -> bool:
    """At least 3 non-empty lines, and more than ``max_list_fraction`` of them start with a list marker."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or max_list_fraction >= 1.0:
        return False
    listed = sum(1 for line in lines if _LIST_LINE.match(line + " "))
    return listed > max_list_fraction * len(lines)


def skip_reason(title: str, text: str, config: BuildConfig) -> str | None:
    """Why a page is left out (a key of `realm.corpus.stats.SKIP_REASONS`), or None to keep it."""
    if not text.strip():
        return "empty"
    if config.filter_pages:
        if title.startswith(_LIST_TITLE_PREFIXES):
            return "list_title"
        if "(disambiguation)" in title:
            return "disambiguation"
        if is_list_like(text, config.max_list_fraction):
            return "list_text"
    return None


_SLICE_CHARS = 1 << 18  # characters tokenized per call when streaming a long document


@dataclass(slots=True)
class _Unit:
    """A piece of text to pack: a sentence, or a word/part of a word of an oversized sentence."""

    text: str
    ids: list[int]
    sentence_start: bool = True
    break_after: bool = False


class BlockBuilder:
    """Turn documents into `Block`s with a tokenizer (see the module docstring for the recipe).

    Args:
        tokenizer: A `RealmTokenizer` or `RealmTokenizerFast` (anything with their ``__call__``).
        config: Build options.
        stats: Counters to update (a new `BuildStats` if None).
    """

    def __init__(
        self, tokenizer: Any, config: BuildConfig | None = None, stats: BuildStats | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config or BuildConfig()
        self.stats = stats if stats is not None else BuildStats()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Wordpiece ids of each text, without special tokens."""
        if not texts:
            return []
        encoded = self.tokenizer(
            texts,
            add_special_tokens=False,
            truncation=False,
            max_length=_NO_LIMIT,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def build(self, documents: Iterable[Document], first_doc_id: int = 0) -> Iterator[Block]:
        """Stream the blocks of ``documents``; ``doc_id`` counts documents from ``first_doc_id``."""
        doc_id = first_doc_id
        iterator = iter(documents)
        while batch := list(islice(iterator, self.config.docs_per_batch)):
            kept: list[tuple[int, str, list[str]]] = []
            for document in batch:
                self.stats.documents += 1
                prepared = self._prepare(document)
                if prepared is not None:
                    kept.append((doc_id, *prepared))
                doc_id += 1
            texts = [t for _, title, sentences in kept for t in (title, *sentences)]
            ids = self._encode_stream(texts)
            for doc, title, sentences in kept:
                title_ids = next(ids)
                # Lazily: a 10 MB document is tokenized and packed a slice at a time (bounded memory).
                yield from self._blocks_of(doc, title, title_ids, sentences, islice(ids, len(sentences)))

    def _encode_stream(self, texts: list[str], max_chars: int = _SLICE_CHARS) -> Iterator[list[int] | None]:
        """The ids of each text, in order, tokenizing slices of at most `max_chars` characters at a time
        (a fast tokenizer's encodings of a whole huge document take gigabytes). A single text longer than
        that gets None: the caller tokenizes it word by word (`_ids_within`)."""
        start = 0
        while start < len(texts):
            if len(texts[start]) > max_chars:
                yield None
                start += 1
                continue
            stop, chars = start, 0
            while stop < len(texts) and len(texts[stop]) <= max_chars and chars + len(texts[stop]) <= max_chars:
                chars += len(texts[stop])
                stop += 1
            yield from self.encode(texts[start:stop])
            start = stop

    def _ids_within(self, sentence: str, budget: int) -> list[int] | None:
        """The ids of a very long sentence if they number at most `budget`, else None; word by word, in
        slices (no wordpiece spans a space, so the words' ids are the sentence's)."""
        ids: list[int] = []
        words = sentence.split(" ")
        for word, word_ids in zip(words, self._encode_stream(words), strict=True):
            ids.extend(self.encode([word])[0] if word_ids is None else word_ids)
            if len(ids) > budget:
                return None
        return ids

    def _prepare(self, document: Document) -> tuple[str, list[str]] | None:
        title, text = document.title, document.text
        if self.config.unescape_html:
            title, text = html.unescape(title), html.unescape(text)
        title = normalize_whitespace(title)
        if self.config.drop_title_line and title:
            first, _, rest = text.lstrip().partition("\n")
            if normalize_whitespace(first) == title:
                text = rest
        reason = skip_reason(title, text, self.config)
        sentences = split_sentences(text) if reason is None else []
        if reason is None and not sentences:
            reason = "empty"
        if reason is not None:
            self.stats.skipped[reason] += 1
            return None
        return title, sentences

    def _blocks_of(
        self,
        doc_id: int,
        title: str,
        title_ids: list[int],
        sentences: list[str],
        sentence_ids: Iterable[list[int] | None],
    ) -> Iterator[Block]:
        cfg = self.config
        if len(title_ids) > cfg.title_budget:
            title, title_ids = self._shorten(title, cfg.title_budget)
            self.stats.titles_truncated += 1
        budget = cfg.max_block_tokens - 3 - len(title_ids)
        made = 0
        for texts, ids, starts in _pack_units(self._units(sentences, sentence_ids, budget), budget):
            self.stats.blocks += 1
            self.stats.block_tokens += len(ids)
            made += 1
            yield Block(title, " ".join(texts), title_ids, ids, doc_id, starts)
        if not made:  # only sentences without wordpieces
            self.stats.skipped["empty"] += 1

    def _units(self, sentences: list[str], sentence_ids: Iterable[list[int] | None], budget: int) -> Iterator[_Unit]:
        """The units to pack, streamed; one unit of look-ahead, since an oversized sentence marks the unit
        before it as the end of a block."""
        pending: _Unit | None = None
        for sentence, ids in zip(sentences, sentence_ids, strict=True):
            self.stats.sentences += 1
            if ids is None:  # too long to tokenize whole: an oversized sentence, unless its ids fit
                ids = self._ids_within(sentence, budget)
            if ids is not None and not ids:
                self.stats.empty_sentences += 1
                continue
            if ids is not None and len(ids) <= budget:
                if pending is not None:
                    yield pending
                pending = _Unit(sentence, ids)
                continue
            self.stats.long_sentences += 1
            if pending is not None:
                pending.break_after = True  # an oversized sentence starts a new block
                yield pending
                pending = None
            for unit in self._split_long(sentence, budget):  # the last one stays pending
                if pending is not None:
                    yield pending
                pending = unit
        if pending is not None:
            yield pending

    def _split_long(self, sentence: str, budget: int) -> Iterator[_Unit]:
        """An oversized sentence as word units (oversized words as character chunks, each its own block),
        streamed: a document without sentence ends is one sentence of millions of words."""
        words = sentence.split(" ")
        for i, (word, ids) in enumerate(zip(words, self._encode_stream(words), strict=True)):
            ids = self.encode([word])[0] if ids is None else ids
            if len(ids) <= budget:
                yield _Unit(word, ids, sentence_start=i == 0)
                continue
            self.stats.words_cut += 1
            rest = word
            while len(ids) > budget:
                prefix, prefix_ids = self._shorten(rest, budget)
                yield _Unit(prefix, prefix_ids, sentence_start=i == 0 and rest is word, break_after=True)
                rest = rest[len(prefix) :]
                ids = self.encode([rest])[0]
            yield _Unit(rest, ids, sentence_start=False)

    def _shorten(self, text: str, limit: int) -> tuple[str, list[int]]:
        """The longest prefix of ``text`` with at most ``limit`` wordpieces, cut between words when a whole
        first word fits, else between characters of the first word.

        Word prefixes add up (no wordpiece spans a space), so their counts only grow; inside a word they
        need not (``"bri"`` can take more pieces than ``"bridges"``), so the character search may stop
        short of the longest fit, but what it returns always fits. One character is at most one wordpiece,
        so ``limit >= 1`` always makes progress. The ids are re-encoded from the returned text.
        """
        words = text.split(" ")
        total, keep = 0, 0
        for ids in self.encode(words):
            total += len(ids)
            if total > limit:
                break
            keep += 1
        if keep:
            prefix = " ".join(words[:keep])
            return prefix, self.encode([prefix])[0]
        word = words[0]
        lo, hi = 1, len(word)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.encode([word[:mid]])[0]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return word[:lo], self.encode([word[:lo]])[0]


def _pack_units(units: Sequence[_Unit], budget: int) -> Iterator[tuple[list[str], list[int], list[int]]]:
    """Greedy packing: add units in order while the block's ids stay within ``budget``.

    Yields:
        ``(texts, ids, sentence_starts)`` per block: the unit texts, their concatenated ids, and the
        offsets (into ids) of the units that start a sentence.
    """
    texts: list[str] = []
    ids: list[int] = []
    starts: list[int] = []
    for unit in units:
        if texts and len(ids) + len(unit.ids) > budget:
            yield texts, ids, starts
            texts, ids, starts = [], [], []
        if unit.sentence_start:
            starts.append(len(ids))
        texts.append(unit.text)
        ids.extend(unit.ids)
        if unit.break_after:
            yield texts, ids, starts
            texts, ids, starts = [], [], []
    if texts:
        yield texts, ids, starts


def build_blocks(
    documents: Iterable[Document],
    tokenizer: Any,
    config: BuildConfig | None = None,
    stats: BuildStats | None = None,
    first_doc_id: int = 0,
) -> Iterator[Block]:
    """Stream the `Block`s of ``documents`` (see `BlockBuilder`); ``stats`` is updated as blocks are made."""
    builder = BlockBuilder(tokenizer, config, stats)
    started = time.perf_counter()
    try:
        yield from builder.build(documents, first_doc_id)
    finally:
        builder.stats.seconds += time.perf_counter() - started

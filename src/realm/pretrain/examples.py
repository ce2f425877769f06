"""REALM pre-training examples: masked sentences drawn from a `BlockStore`, deterministic by index.

Example ``i`` of a run is a pure function of ``(seed, i)``: it draws a block and one of its sentences
with ``numpy.random.default_rng([seed, i, attempt])``, masks the sentence (`realm.pretrain.masking`), and
if the sentence cannot be masked (no salient span, span too long...) counts why and tries ``attempt + 1``.
So any process can make any example without coordination, a resumed run reads exactly the examples the
interrupted one would have, and the global batch does not depend on the number of processes.

Sentences come from the block's *text*, not its stored ``token_ids``: the store's ids are from the
uncased tokenizer (lower-cased, accents stripped), and the salient span finder needs capitalisation to
see entities. The text is re-split with the splitter that built the blocks (`realm.corpus.sentences`);
the span finder and the tokenizer then both work on the sentence string itself, so no offsets into the
block are needed.

Shapes: B examples, Q longest masked sentence (<= query_seq_len).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from realm.corpus import BlockStore
from realm.corpus.sentences import split_sentences
from realm.objectives import IGNORE_INDEX
from realm.pretrain.masking import MaskingConfig, SentenceMasker, SpanFinder

__all__ = ["MAX_ATTEMPTS", "ExampleGenerator", "MaskedExample", "collate_masked"]

MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class MaskedExample:
    """One pre-training query.

    Attributes:
        input_ids: ``[CLS] masked sentence [SEP]``, at most ``query_seq_len`` ids.
        labels: Same length: the original id at masked positions, -100 elsewhere.
        source_block: The store block the sentence came from (the REALM step removes it from the
            candidates, else the reader could copy the masked words from it).
    """

    input_ids: list[int]
    labels: list[int]
    source_block: int


class ExampleGenerator:
    """Masked sentences from ``store``, example ``index`` a pure function of ``(seed, index)``.

    Args:
        store: The corpus sentences are drawn from (uniformly over blocks, then over a block's sentences).
        tokenizer: The store's tokenizer (`BlockStore.load_tokenizer`); fast for salient masking.
        config: How to mask.
        seed: The run's seed.
        span_finder: Overrides the config's salient span finder (any ``text -> [(start, end, kind)]``).

    Attributes:
        counters: ``"examples"`` made and, per skip reason (see `MaskedSentence.skip`), sentences skipped.
            Side bookkeeping only: examples do not depend on it.
    """

    def __init__(
        self,
        store: BlockStore,
        tokenizer: Any,
        config: MaskingConfig,
        seed: int = 0,
        span_finder: SpanFinder | None = None,
    ) -> None:
        if len(store) == 0:
            raise ValueError(f"{store.path}: the block store is empty; nothing to draw sentences from")
        self.store = store
        self.config = config
        self.seed = seed
        self.masker = SentenceMasker(tokenizer, config, span_finder)
        self.counters: Counter[str] = Counter()

    def example(self, index: int) -> MaskedExample:
        """The masked example number ``index`` (>= 0) of this seed.

        Raises:
            ValueError: ``MAX_ATTEMPTS`` draws in a row found nothing to mask.
        """
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, index, attempt])
            block = int(rng.integers(len(self.store)))
            sentences = split_sentences(self.store.texts([block])[0])
            if not sentences:
                self.counters["empty_sentence"] += 1
                continue
            sentence = sentences[int(rng.integers(len(sentences)))]
            masked = self.masker(sentence, rng)
            if masked.skip is not None:
                self.counters[masked.skip] += 1
                continue
            self.counters["examples"] += 1
            return MaskedExample(masked.input_ids, masked.labels, block)
        raise ValueError(
            f"no maskable sentence in {MAX_ATTEMPTS} draws (example {index}, seed {self.seed}) with "
            f"strategy={self.config.strategy!r}; skips so far: {dict(self.counters)}. The store "
            f"{self.store.path} has no (or very few) sentences this strategy can mask"
        )


def collate_masked(examples: Sequence[MaskedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids`` (zeros), ``labels`` (-100 on padding), each
        [B, Q] int64, and ``source_block`` [B] int64.
    """
    if not examples:
        raise ValueError("collate_masked needs at least one example")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [B, Q]
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # [B, Q]
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, Q]
    for row, e in enumerate(examples):
        input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        attention_mask[row, : len(e.input_ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": labels,
        "source_block": torch.tensor([e.source_block for e in examples], dtype=torch.long),  # [B]
    }

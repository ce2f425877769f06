"""The Inverse Cloze Task (ORQA, Lee et al. 2019): the retriever's warm start before REALM pre-training.

A sentence of a block is the pseudo-query; its block is the positive; every other block of the (global)
batch is a negative:

    Embed.    q = Embed([CLS] sentence [SEP])                                             [B, D]
              b = Embed([CLS] title [SEP] block [SEP])  the sentence removed with prob. remove_rate
                                                                                          [B, D]
    Score.    s = q . b^T over the blocks of ALL processes                                [B, W B]
    Loss.     cross-entropy of each query against its own block (in-batch softmax)

Removing the sentence 90% of the time (ORQA's ``mask_rate`` 0.9) forces the embedder to match on context,
not on word overlap; keeping it 10% of the time keeps word overlap useful. As the released ICT model, one
embedder serves both towers. Blocks are laid out exactly as `realm.inputs.block_inputs` feeds them to
the index builder, so the embedder is trained on the inputs it will later be asked to index.

Shapes: B local batch, W processes, D projection dim, Q query length, T block length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from realm.corpus import BlockStore
from realm.distributed import freeze_unused
from realm.inputs import block_inputs, collate_questions
from realm.modeling.embedder import RealmEmbedder
from realm.objectives import in_batch_softmax_loss

__all__ = [
    "ICTConfig",
    "ICTExample",
    "ICTExampleGenerator",
    "ICTModel",
    "ICTOutput",
    "collate_ict",
    "gather_blocks",
    "in_batch_softmax_loss",
]

MAX_ATTEMPTS = 100

# The embedder's masked-LM head (kept so released checkpoints load) never feeds the ICT loss: frozen, so
# that DistributedDataParallel sees every trainable parameter receive a gradient.
UNUSED_PARAMETER_PREFIXES = ("embedder.cls.predictions.",)


@dataclass(frozen=True)
class ICTConfig:
    """ORQA's ICT input settings.

    Attributes:
        query_seq_len: Length cap of ``[CLS] sentence [SEP]`` (64).
        block_seq_len: Length cap of ``[CLS] title [SEP] block [SEP]`` (288).
        remove_rate: How often the query sentence is removed from its block (0.9).
    """

    query_seq_len: int = 64
    block_seq_len: int = 288
    remove_rate: float = 0.9

    def __post_init__(self) -> None:
        if self.query_seq_len < 3:
            raise ValueError(
                f"ICTConfig.query_seq_len must be >= 3 ([CLS] x [SEP]), got {self.query_seq_len}"
            )
        if self.block_seq_len < 4:
            raise ValueError(f"ICTConfig.block_seq_len must be >= 4, got {self.block_seq_len}")
        if not 0.0 <= self.remove_rate <= 1.0:
            raise ValueError(f"ICTConfig.remove_rate must be in [0, 1], got {self.remove_rate}")


@dataclass(frozen=True)
class ICTExample:
    """One (pseudo-query, block) pair.

    Attributes:
        query_ids: ``[CLS] sentence [SEP]``, at most ``query_seq_len`` ids.
        block_ids: ``[CLS] title [SEP] block [SEP]`` as `block_inputs` makes it, at most ``block_seq_len``.
        block_type_ids: 0 for ``[CLS] title [SEP]``, 1 after.
        source_block: The store block (for inspection; the loss does not use it).
        removed: Whether the sentence was taken out of the block.
    """

    query_ids: list[int]
    block_ids: list[int]
    block_type_ids: list[int]
    source_block: int = -1
    removed: bool = False


class ICTExampleGenerator:
    """ICT pairs from a `BlockStore`; example ``index`` is a pure function of ``(seed, index)``.

    Uses the stored ``token_ids`` and ``sentence_starts`` only (no text, no tokenizing): a sentence is the
    ids from one sentence start to the next. Blocks with fewer than two sentences are redrawn (counted as
    ``"too_few_sentences"``): with one sentence, removing it would leave an empty block.

    Args:
        store: The corpus.
        tokenizer: Unused beyond checking; the special ids come from the store (kept for a uniform
            generator signature with `realm.pretrain.examples.ExampleGenerator`).
        config: Lengths and the removal rate.
        seed: The run's seed.
    """

    def __init__(self, store: BlockStore, tokenizer: Any, config: ICTConfig, seed: int = 0) -> None:
        if len(store) == 0:
            raise ValueError(f"{store.path}: the block store is empty")
        self.store = store
        self.config = config
        self.seed = seed
        self.cls_id, self.sep_id, _ = store.special_ids
        self.counters: Counter[str] = Counter()

    def example(self, index: int) -> ICTExample:
        """The ICT pair number ``index`` of this seed.

        Raises:
            ValueError: ``MAX_ATTEMPTS`` draws in a row hit blocks with fewer than two sentences.
        """
        config = self.config
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, index, attempt])
            block = int(rng.integers(len(self.store)))
            starts = self.store.sentence_starts([block])[0]
            if len(starts) < 2:
                self.counters["too_few_sentences"] += 1
                continue
            token_ids = self.store.token_ids([block])[0]
            title_ids = self.store.title_ids([block])[0]
            i = int(rng.integers(len(starts)))
            lo, hi = starts[i], starts[i + 1] if i + 1 < len(starts) else len(token_ids)
            sentence = token_ids[lo:hi]
            removed = bool(rng.random() < config.remove_rate)
            context = token_ids[:lo] + token_ids[hi:] if removed else token_ids
            query = [self.cls_id, *sentence[: config.query_seq_len - 2], self.sep_id]
            block_ids, block_types = block_inputs(
                title_ids, context, self.cls_id, self.sep_id, config.block_seq_len
            )
            self.counters["examples"] += 1
            return ICTExample(query, block_ids, block_types, block, removed)
        raise ValueError(
            f"no block with >= 2 sentences in {MAX_ATTEMPTS} draws (example {index}, seed {self.seed}): the "
            f"store {self.store.path} is unsuitable for ICT (blocks need several sentences)"
        )


def collate_ict(examples: Sequence[ICTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``query_input_ids``/``query_attention_mask`` [B, Q], ``block_input_ids``,
    ``block_attention_mask``, ``block_token_type_ids`` [B, T] (types 0 on padding), all int64."""
    if not examples:
        raise ValueError("collate_ict needs at least one example")
    query_ids, query_mask = collate_questions([e.query_ids for e in examples], pad_id)
    block_ids, block_mask = collate_questions([e.block_ids for e in examples], pad_id)
    block_types, _ = collate_questions([e.block_type_ids for e in examples], 0)
    return {
        "query_input_ids": query_ids,
        "query_attention_mask": query_mask,
        "block_input_ids": block_ids,
        "block_attention_mask": block_mask,
        "block_token_type_ids": block_types,
    }


def gather_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's block embeddings, concatenated in rank order, with gradient back to each process.

    Local batches may differ in size (the last batch of a run): they are padded to the largest for the
    collective and the padding is dropped.

    Returns:
        ``(all_blocks [G, D], offset)``: ``offset`` is where this process's blocks start in ``all_blocks``.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return blocks, 0
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([blocks.shape[0]], device=blocks.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = F.pad(blocks, (0, 0, 0, longest - blocks.shape[0]))  # [max B, D]
    gathered = all_gather(padded)  # W x [max B, D]; backward sums every process's gradient
    rank = dist.get_rank()
    return torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)]), sum(counts[:rank])


@dataclass
class ICTOutput:
    """``loss``: mean in-batch cross-entropy of this process's queries; ``accuracy``: top-1 retrieval
    accuracy among the global batch's blocks (no gradient)."""

    loss: torch.Tensor
    accuracy: torch.Tensor


class ICTModel(nn.Module):
    """ICT training with one shared `RealmEmbedder` for queries and blocks (as the released ICT module).

    Under ``torch.distributed`` (initialised, world size > 1) each query is scored against the blocks of
    ALL processes, gathered with gradient. DistributedDataParallel averages gradients over processes, and
    the gather's backward sums into each process the gradients of every process's loss with respect to its
    blocks; so W processes with equal local batches B/W produce exactly the update of one process with batch B
    (same negatives, same mean loss), and the number of negatives grows with the world size.
    """

    def __init__(self, embedder: RealmEmbedder) -> None:
        super().__init__()
        self.embedder = embedder
        freeze_unused(self, UNUSED_PARAMETER_PREFIXES)

    def forward(
        self,
        query_input_ids: torch.Tensor,
        query_attention_mask: torch.Tensor,
        block_input_ids: torch.Tensor,
        block_attention_mask: torch.Tensor,
        block_token_type_ids: torch.Tensor,
    ) -> ICTOutput:
        """Inputs as `collate_ict` makes them: [B, Q] queries and [B, T] blocks."""
        query = self.embedder(
            query_input_ids,
            attention_mask=query_attention_mask,
            token_type_ids=torch.zeros_like(query_input_ids),
        ).projected_score  # [B, D]
        blocks = self.embedder(
            block_input_ids, attention_mask=block_attention_mask, token_type_ids=block_token_type_ids
        ).projected_score  # [B, D]
        all_blocks, offset = gather_blocks(blocks)  # [W B, D]
        targets = torch.arange(query.shape[0], device=query.device) + offset  # [B]
        loss, accuracy = in_batch_softmax_loss(query, all_blocks, targets)
        return ICTOutput(loss, accuracy)

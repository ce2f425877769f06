"""Which retrieved blocks contain an answer, from their stored token ids: the retriever loss's positives.

`RealmRetriever.block_has_answer` finds answers in the encoded `[CLS] question [SEP] block [SEP]` rows of
all K retrieved blocks, which means building K reader inputs (5000 in training) to read 5. Here the same
`has_answers` comes from the blocks' pre-tokenized ids in one vectorised numpy search, without building
any reader input: only the pair layout (how many block tokens survive truncation, how long each row is)
is computed, once per distinct block length.

The result equals `block_has_answer` on the rows `RealmRetriever(store, tokenizer)(ids, question,
answers, max_length)` builds, including its corner cases: an answer is looked for at every start inside
the (truncated) block, and the tokens it is compared with may run past the block into the closing [SEP]
and the row's padding (the port slices the padded row), and a [SEP] id inside a block ends the search
there (the port stops at the second [SEP] of the row), so even answers or blocks that contain [SEP] or
[PAD] ids match exactly when the port's would. One exception: with the fast tokenizer an empty block gives a
row without a second [SEP], on which `block_has_answer` raises; here it simply has no answer.

Shapes: K blocks, L longest block, P starts searched (the longest truncated block), C columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from realm.retrieval import clean_answer_ids

NO_TOKEN = -1  # fills positions past a row's end: equal to no answer id (answers are >= 0)


def pair_layout(
    tokenizer: Any, question: Sequence[int], block_lengths: np.ndarray, max_length: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Row length and kept block tokens of each `[CLS] question [SEP] block [SEP]` pair.

    Truncation depends only on the two lengths, so the tokenizer's own rule (`encode_pair_ids`, slow or
    fast) is applied once per distinct block length to placeholder ids.

    Args:
        question: the question's ids without special tokens.
        block_lengths: [K] block lengths in tokens.
    Returns:
        row_lengths [K] and kept_lengths [K] (block tokens left after truncation), int64.
    """
    distinct, inverse = np.unique(block_lengths, return_inverse=True)
    rows = np.empty(distinct.size, dtype=np.int64)
    kept = np.empty(distinct.size, dtype=np.int64)
    for i, length in enumerate(distinct.tolist()):
        ids, types = tokenizer.encode_pair_ids(list(question), [0] * length, max_length)
        rows[i] = len(ids)
        kept[i] = max(sum(types) - 1, 0)  # type-1 tokens are the block and its closing [SEP]
    return rows[inverse], kept[inverse]


def answers_in_blocks(
    tokenizer: Any,
    question_ids: Sequence[int],
    block_tokens: np.ndarray,
    block_lengths: np.ndarray,
    answer_ids: Any,
    max_length: int | None,
) -> np.ndarray:
    """`has_answers` of `RealmRetriever.block_has_answer` for K blocks, from their token ids.

    Args:
        tokenizer: the store's tokenizer (its truncation rule and special ids).
        question_ids: the question as the model sees it (special tokens and padding are dropped, as the
            retriever drops them).
        block_tokens: [K, >= L] block ids, right-padded with anything (e.g. `BlockStore.token_ids_array`).
        block_lengths: [K] block lengths.
        answer_ids: the question's answers, each a list of token ids (-1 entries are padding).
        max_length: the reader's sequence length (None: no truncation).
    Returns:
        [K] bool: the block, as truncated in the reader's input, contains an answer.
    """
    answers = clean_answer_ids(answer_ids)
    block_lengths = np.asarray(block_lengths, dtype=np.int64)
    k = block_lengths.shape[0]
    found = np.zeros(k, dtype=bool)
    if k == 0 or not answers:
        return found
    special = set(tokenizer.all_special_ids)
    question = [int(t) for t in question_ids if int(t) not in special]
    row_lengths, kept = pair_layout(tokenizer, question, block_lengths, max_length)

    # Each row from the block on: kept block tokens, [SEP], then the padding up to the longest row.
    tail = kept + 1 + (row_lengths.max() - row_lengths)  # [K] block + [SEP] + pads
    starts = int(kept.max())  # P
    if starts == 0:
        return found
    columns = np.arange(max(int(tail.max()), starts + max(len(a) for a in answers)))  # [C]
    rows = np.full((k, columns.size), NO_TOKEN, dtype=np.int64)  # [K, C]
    width = min(starts, block_tokens.shape[1])
    inside = columns[None, :width] < kept[:, None]  # [K, width]
    rows[:, :width] = np.where(inside, block_tokens[:, :width], NO_TOKEN)
    rows[columns[None, :] == kept[:, None]] = tokenizer.sep_token_id
    rows[(columns[None, :] > kept[:, None]) & (columns[None, :] < tail[:, None])] = tokenizer.pad_token_id

    # The port searches up to the row's second [SEP]: a [SEP] id inside a block ends its search early.
    sep_inside = rows[:, :starts] == tokenizer.sep_token_id  # [K, P]
    search_end = np.where(sep_inside.any(axis=1), sep_inside.argmax(axis=1), kept)  # [K]
    can_start = columns[None, :starts] < search_end[:, None]  # [K, P]
    for answer in answers:
        match = can_start.copy()
        for offset, token in enumerate(answer):
            match &= rows[:, offset : offset + starts] == token  # [K, P]
        found |= match.any(axis=1)
    return found

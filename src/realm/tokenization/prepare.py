"""The slow tokenizer's path from token ids to model inputs: truncate, add special tokens, pad.

(The fast tokenizer leaves all of this to the Rust backend.) Layout: single ``[CLS] X [SEP]``;
pair ``[CLS] A [SEP] B [SEP]``; token type 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``; padding
on the right with ``[PAD]``, token type 0, attention 0 and special-tokens-mask 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .encoding import PaddingStrategy, TruncationStrategy

__all__ = ["pad_batch", "pad_single", "prepare_for_model", "truncate_sequences"]

logger = logging.getLogger(__name__)


def truncate_sequences(
    ids: list[int],
    pair_ids: list[int] | None,
    num_tokens_to_remove: int,
    strategy: TruncationStrategy,
) -> tuple[list[int], list[int] | None]:
    """Remove ``num_tokens_to_remove`` tokens from the right, as the port's *slow* tokenizer does.

    ``longest_first`` on a pair first evens out the two lengths, then removes the rest half and
    half; when that rest is odd the *second* sequence loses the extra token. (The fast, Rust
    tokenizer splits the budget differently; see the package docstring.) When the sequence that
    must shrink is too short, nothing is removed and a warning is logged, as in the port.
    """
    if num_tokens_to_remove <= 0:
        return ids, pair_ids
    if strategy == TruncationStrategy.ONLY_FIRST or (
        strategy == TruncationStrategy.LONGEST_FIRST and pair_ids is None
    ):
        if len(ids) > num_tokens_to_remove:
            return ids[:-num_tokens_to_remove], pair_ids
        logger.warning(
            "cannot truncate: %d tokens must go but the first sequence has only %d; "
            "the result is longer than max_length (try truncation='longest_first' or 'only_second')",
            num_tokens_to_remove,
            len(ids),
        )
        return ids, pair_ids
    if strategy == TruncationStrategy.LONGEST_FIRST:
        assert pair_ids is not None
        first_remove = min(abs(len(pair_ids) - len(ids)), num_tokens_to_remove)
        rest = num_tokens_to_remove - first_remove
        if len(ids) > len(pair_ids):
            ids_to_remove, pair_to_remove = first_remove + rest // 2, rest - rest // 2
        else:
            ids_to_remove, pair_to_remove = rest // 2, first_remove + rest - rest // 2
        if ids_to_remove > 0:
            ids = ids[:-ids_to_remove]
        if pair_to_remove > 0:
            pair_ids = pair_ids[:-pair_to_remove]
        return ids, pair_ids
    if strategy == TruncationStrategy.ONLY_SECOND and pair_ids is not None:
        if len(pair_ids) > num_tokens_to_remove:
            return ids, pair_ids[:-num_tokens_to_remove]
        logger.warning(
            "cannot truncate: %d tokens must go but the second sequence has only %d; "
            "the result is longer than max_length (try truncation='longest_first' or 'only_first')",
            num_tokens_to_remove,
            len(pair_ids),
        )
    return ids, pair_ids


def prepare_for_model(
    ids: list[int],
    pair_ids: list[int] | None,
    *,
    cls_id: int,
    sep_id: int,
    add_special_tokens: bool,
    truncation_strategy: TruncationStrategy,
    max_length: int | None,
    return_token_type_ids: bool | None,
    return_special_tokens_mask: bool,
) -> dict[str, list[int]]:
    """Truncate, add ``[CLS]``/``[SEP]`` and build the per-token fields of one (pair of) sequence(s), unpadded.

    Returns:
        A dict with ``input_ids`` and, as requested, ``token_type_ids`` and ``special_tokens_mask``.

    Raises:
        ValueError: When ``return_token_type_ids=True`` is combined with ``add_special_tokens=False``
            (the port refuses this too).
    """
    if return_token_type_ids and not add_special_tokens:
        raise ValueError(
            "return_token_type_ids=True with add_special_tokens=False is undefined; "
            "set add_special_tokens=True or leave return_token_type_ids=None"
        )
    if return_token_type_ids is None:
        return_token_type_ids = True
    pair = pair_ids is not None
    num_special = (3 if pair else 2) if add_special_tokens else 0
    total_len = len(ids) + (len(pair_ids) if pair else 0) + num_special
    if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length and total_len > max_length:
        ids, pair_ids = truncate_sequences(ids, pair_ids, total_len - max_length, truncation_strategy)

    if add_special_tokens:
        sequence = [cls_id] + ids + [sep_id] + (pair_ids + [sep_id] if pair else [])
        type_ids = [0] * (len(ids) + 2) + ([1] * (len(pair_ids) + 1) if pair else [])
        special = [1] + [0] * len(ids) + [1] + ([0] * len(pair_ids) + [1] if pair else [])
    else:
        sequence = ids + (pair_ids if pair else [])
        type_ids = [0] * len(sequence)
        special = [0] * len(sequence)
    out: dict[str, list[int]] = {"input_ids": sequence}
    if return_token_type_ids:
        out["token_type_ids"] = type_ids
    if return_special_tokens_mask:
        out["special_tokens_mask"] = special
    return out


def pad_single(
    encoded: dict[str, list[int]],
    *,
    strategy: PaddingStrategy,
    max_length: int | None,
    pad_id: int,
    return_attention_mask: bool,
) -> dict[str, list[int]]:
    """Right-pad one encoding and add ``attention_mask`` when asked.

    An empty ``input_ids`` is returned unpadded (with an empty attention mask), as the port's slow
    tokenizer does; inside a batch (`pad_batch`) an empty row is padded like any other.
    """
    if len(encoded["input_ids"]) == 0:
        return {**encoded, "attention_mask": []} if return_attention_mask else dict(encoded)
    return _pad_row(encoded, strategy, max_length, pad_id, return_attention_mask)


def pad_batch(
    rows: Sequence[dict[str, list[int]]],
    *,
    strategy: PaddingStrategy,
    max_length: int | None,
    pad_id: int,
    return_attention_mask: bool,
) -> dict[str, list[list[int]]]:
    """Pad a batch of encodings to a common length and regroup them as ``{field: [row, ...]}``."""
    if not rows:
        return {"input_ids": []} | ({"attention_mask": []} if return_attention_mask else {})
    if strategy == PaddingStrategy.LONGEST:
        strategy, max_length = PaddingStrategy.MAX_LENGTH, max(len(r["input_ids"]) for r in rows)
    batch: dict[str, list[list[int]]] = {}
    for row in rows:
        for key, value in _pad_row(row, strategy, max_length, pad_id, return_attention_mask).items():
            batch.setdefault(key, []).append(value)
    return batch


def _pad_row(
    row: dict[str, list[int]],
    strategy: PaddingStrategy,
    max_length: int | None,
    pad_id: int,
    return_attention_mask: bool,
) -> dict[str, list[int]]:
    """A padded copy of ``row``; only ``MAX_LENGTH`` pads (a single row is its own longest)."""
    row = dict(row)
    n = len(row["input_ids"])
    if return_attention_mask and "attention_mask" not in row:
        row["attention_mask"] = [1] * n
    if strategy == PaddingStrategy.MAX_LENGTH and max_length is not None and n < max_length:
        extra = max_length - n
        if return_attention_mask:
            row["attention_mask"] = row["attention_mask"] + [0] * extra
        if "token_type_ids" in row:
            row["token_type_ids"] = row["token_type_ids"] + [0] * extra
        if "special_tokens_mask" in row:
            row["special_tokens_mask"] = row["special_tokens_mask"] + [1] * extra
        row["input_ids"] = row["input_ids"] + [pad_id] * extra
    return row

"""Model inputs from token ids: the block layout every tower reads, and right-padding into tensors.

One home for the layout `[CLS] title [SEP] text [SEP]` (the index builder, pre-training's re-embedding and
ICT all feed blocks this way, so a tower is trained on the inputs it is later asked to index) and for the
padding of id lists into [n, L] tensors.

Shapes: n sequences (any number), L the longest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def block_inputs(
    title_ids: list[int], token_ids: list[int], cls_id: int, sep_id: int, max_length: int
) -> tuple[list[int], list[int]]:
    """`[CLS] title [SEP] text [SEP]` with token types 0 / 1, the text truncated to fit `max_length`."""
    room = max(max_length - 3 - len(title_ids), 0)
    ids = [cls_id, *title_ids, sep_id, *token_ids[:room], sep_id][:max_length]
    types = [0] * (len(title_ids) + 2) + [1] * (len(ids) - len(title_ids) - 2)
    return ids, types


def collate_questions(question_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: input_ids [B, Q] and attention_mask [B, Q]."""
    width = max(len(q) for q in question_ids)
    ids = torch.full((len(question_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(question_ids), width), dtype=torch.long)
    for row, q in enumerate(question_ids):
        ids[row, : len(q)] = torch.tensor(q, dtype=torch.long)
        mask[row, : len(q)] = 1
    return ids, mask


def pad_sequences(
    ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: input_ids, token_type_ids, attention_mask, each [n, L]."""
    width = max(len(s) for s in ids)
    out_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    out_types = torch.zeros((len(ids), width), dtype=torch.long)
    out_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (seq, seq_types) in enumerate(zip(ids, types, strict=True)):
        out_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        out_types[row, : len(seq_types)] = torch.tensor(seq_types, dtype=torch.long)
        out_mask[row, : len(seq)] = 1
    return out_ids.to(device), out_types.to(device), out_mask.to(device)

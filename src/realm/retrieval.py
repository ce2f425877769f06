"""`RealmRetriever`: turns retrieved block ids into reader inputs and finds the answer spans in them.

Semantics are the transformers port's: the question is decoded from its ids and re-encoded with each
block as a `[CLS] question [SEP] block [SEP]` pair (padding to the longest, longest-first truncation to
`max_length`), and an answer is found by exact token-id matching strictly between the first and the
second `[SEP]`.

The blocks are either in memory (a numpy array of UTF-8 bytes, or a list of str/bytes, the port's way)
or a memory-mapped `BlockStore`. With a store, nothing is decoded or re-tokenized: the reader inputs are
assembled from the question's ids and the store's pre-tokenized block ids, with the tokenizer's own
truncation rule, giving the ids the port's decode-and-re-encode gives.

The port stores records as a pickled object array in `block_records.npy`; we read that only with an
explicit `allow_pickle=True`, since unpickling an untrusted file can run arbitrary code, and write them
as a plain fixed-width bytes array that needs no pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from realm.atomic import atomic_save_npy
from realm.corpus.store import BlockStore
from realm.files import resolve_file
from realm.tokenization import BatchEncoding, RealmTokenizer, RealmTokenizerFast

BLOCK_RECORDS_NAME = "block_records.npy"

AnswerIds = list[list[int]]


def _as_records(block_records: Any) -> np.ndarray:
    if isinstance(block_records, np.ndarray):
        if block_records.ndim != 1:
            raise ValueError(f"block_records must be 1-D, got shape {block_records.shape}")
        return block_records
    return np.array([r.encode("utf-8") if isinstance(r, str) else bytes(r) for r in block_records], dtype=object)


def _block_text(record: Any) -> str:
    return record.decode("utf-8") if isinstance(record, bytes | np.bytes_) else str(record)


def clean_answer_ids(answer_ids: Any) -> AnswerIds:
    """One question's answers as lists of token ids: a tensor or nested list, -1 (padding) removed.

    The port would look for the padding ids literally (and fail on an empty answer); we drop them.
    """
    if isinstance(answer_ids, torch.Tensor | np.ndarray):
        answer_ids = answer_ids.tolist()
    if answer_ids and isinstance(answer_ids[0], int):
        raise ValueError(
            "answer_ids must be a list of answers, each a list of token ids (e.g. "
            "tokenizer(answers, add_special_tokens=False).input_ids), not a flat list of ids"
        )
    answers = [[int(t) for t in answer if int(t) >= 0] for answer in answer_ids]
    return [a for a in answers if a]


class ReaderInputs(NamedTuple):
    """What `RealmRetriever` returns for one question: a tuple, as the port's, whose parts have names.

    Attributes:
        has_answers: [K] block k contains an answer (None without answers).
        start_pos, end_pos: [K, A] the answers' first and last (inclusive) positions, -1 padded (None
            without answers).
        concat_inputs: the encoded (question, block) pairs: `input_ids`, `token_type_ids`, `attention_mask`,
            `special_tokens_mask`, each [K, T].
    """

    has_answers: list[bool] | None
    start_pos: list[list[int]] | None
    end_pos: list[list[int]] | None
    concat_inputs: BatchEncoding


class RealmRetriever:
    """Build reader inputs for retrieved blocks.

    Args:
        block_records: a `BlockStore`, or the port's 1-D numpy array of UTF-8 `bytes`, or a sequence of
            str/bytes.
        tokenizer: a `RealmTokenizer` or `RealmTokenizerFast` (for a store: the one it was built with).
    """

    def __init__(self, block_records: Any, tokenizer: RealmTokenizer | RealmTokenizerFast) -> None:
        self.store = block_records if isinstance(block_records, BlockStore) else None
        self.block_records = None if self.store is not None else _as_records(block_records)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.store) if self.store is not None else len(self.block_records)

    def block_texts(self, ids: Any) -> list[str]:
        """The text of each block id."""
        ids = np.atleast_1d(np.asarray(torch.as_tensor(ids).cpu())).tolist()
        if self.store is not None:
            return self.store.texts(ids)
        return [_block_text(r) for r in np.take(self.block_records, ids, axis=0)]

    def __call__(
        self,
        retrieved_block_ids: Any,
        question_input_ids: Any,
        answer_ids: Any = None,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> ReaderInputs:
        """Encode (question, block) pairs for the retrieved blocks and locate the answers.

        Args:
            retrieved_block_ids: [K] block ids.
            question_input_ids: [1, Q] (or [Q]) ids of the question; special tokens are dropped.
            answer_ids: the question's answers, each a list of token ids without special tokens.
            max_length: truncate each pair to this many tokens (RealmForOpenQA uses reader_seq_len).
        Returns:
            `ReaderInputs(has_answers [K], start_pos [K, A], end_pos [K, A], concat_inputs)`: a tuple, as the
            port's (-1 padded; None without answers), with named parts.
        """
        ids = np.atleast_1d(np.asarray(torch.as_tensor(retrieved_block_ids).cpu()))
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"block ids must be in [0, {len(self)}); got {ids.min()}..{ids.max()}")
        question_ids = torch.as_tensor(question_input_ids)
        if question_ids.dim() == 2:
            question_ids = question_ids[0]
        if self.store is not None:
            concat = self._encode_from_store(ids.tolist(), question_ids.tolist(), max_length)
        else:
            blocks = [_block_text(r) for r in np.take(self.block_records, ids, axis=0)]
            question = self.tokenizer.decode(question_ids.tolist(), skip_special_tokens=True)
            concat = self.tokenizer(
                [question] * len(blocks),
                blocks,
                padding=True,
                truncation=True,
                return_special_tokens_mask=True,
                max_length=max_length,
            )
        concat.convert_to_tensors(return_tensors)
        if answer_ids is None:
            return ReaderInputs(None, None, None, concat)
        return ReaderInputs(*self.block_has_answer(concat, clean_answer_ids(answer_ids)), concat)

    def _encode_from_store(self, ids: list[int], question_ids: list[int], max_length: int | None) -> BatchEncoding:
        """The port's (question, block) encoding, from ids: special tokens are dropped from the question as its
        `decode(skip_special_tokens=True)` drops them, and blocks come pre-tokenized from the store."""
        special = set(self.tokenizer.all_special_ids)
        question = [t for t in question_ids if t not in special]
        rows = [self.tokenizer.encode_pair_ids(question, block, max_length) for block in self.store.token_ids(ids)]
        width = max((len(r[0]) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        data: dict[str, list[list[int]]] = {
            "input_ids": [], "token_type_ids": [], "attention_mask": [], "special_tokens_mask": []
        }
        for input_ids, types in rows:
            fill = width - len(input_ids)
            data["input_ids"].append(input_ids + [pad] * fill)
            data["token_type_ids"].append(types + [0] * fill)
            data["attention_mask"].append([1] * len(input_ids) + [0] * fill)
            data["special_tokens_mask"].append(_added_special_positions(types) + [1] * fill)
        return BatchEncoding(data)

    def block_has_answer(
        self, concat_inputs: BatchEncoding, answer_ids: AnswerIds
    ) -> tuple[list[bool], list[list[int]], list[list[int]]]:
        """Find every occurrence of every answer between the first and second [SEP] of each row.

        Returns:
            has_answers [K]; start_pos and end_pos [K, A] (inclusive), right-padded with -1 to the largest
            number of matches A of any row (A can be 0).
        """
        sep = self.tokenizer.sep_token_id
        has_answers: list[bool] = []
        starts: list[list[int]] = []
        ends: list[list[int]] = []
        for row in concat_inputs["input_ids"]:
            tokens = row.tolist() if hasattr(row, "tolist") else list(row)
            first_sep = tokens.index(sep)
            second_sep = first_sep + 1 + tokens[first_sep + 1 :].index(sep)
            row_starts, row_ends = [], []
            for answer in answer_ids:
                for idx in range(first_sep + 1, second_sep):
                    if tokens[idx : idx + len(answer)] == answer:
                        row_starts.append(idx)
                        row_ends.append(idx + len(answer) - 1)
            has_answers.append(bool(row_starts))
            starts.append(row_starts)
            ends.append(row_ends)
        width = max((len(s) for s in starts), default=0)
        starts = [s + [-1] * (width - len(s)) for s in starts]
        ends = [e + [-1] * (width - len(e)) for e in ends]
        return has_answers, starts, ends

    # -- files ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        tokenizer: RealmTokenizer | RealmTokenizerFast | None = None,
        *,
        allow_pickle: bool = False,
    ) -> RealmRetriever:
        """Load `block_records.npy` (and the tokenizer saved beside it unless one is given).

        Args:
            allow_pickle: read the port's pickled object array. Only for files you trust: unpickling can
                run arbitrary code.
        """
        path = resolve_file(name_or_path, BLOCK_RECORDS_NAME)
        try:
            records = np.load(path, allow_pickle=allow_pickle)
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise
            raise ValueError(
                f"{path} is a pickled object array (the transformers port's format). Unpickling can run "
                "arbitrary code; if you trust the file, pass allow_pickle=True"
            ) from None
        if tokenizer is None:
            tokenizer = RealmTokenizerFast.from_pretrained(name_or_path)
        return cls(records, tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write `block_records.npy` (a fixed-width bytes array, loadable without pickle) and the tokenizer."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        records = np.array([bytes(r) for r in self.block_records], dtype=np.bytes_)
        atomic_save_npy(directory / BLOCK_RECORDS_NAME, records)
        self.tokenizer.save_pretrained(directory)
        return directory


def _added_special_positions(types: list[int]) -> list[int]:
    """1 at the [CLS] and [SEP]s the encoding added (by position: a [SEP] written inside a text is not one)."""
    n = len(types)
    return [int(i == 0 or i == n - 1 or (types[i] == 0 and types[i + 1] == 1)) for i in range(n)]


def stack_reader_inputs(encodings: list[BatchEncoding], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Per-question reader inputs [R, T_b] (from `RealmRetriever.__call__`) -> [B, R, T] tensors, right-padded
    to the longest T_b, plus `block_mask` [B, R, T]: true on evidence-block tokens (type 1, not special)."""
    t = max(e["input_ids"].shape[1] for e in encodings)
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}
    out = {}
    for key, value in fill.items():
        rows = [torch.nn.functional.pad(e[key], (0, t - e[key].shape[1]), value=value) for e in encodings]
        out[key] = torch.stack(rows).to(device)
    out["block_mask"] = ~out["special_tokens_mask"].bool() & out["token_type_ids"].bool()
    return out

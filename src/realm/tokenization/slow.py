"""`RealmTokenizer`: the pure-Python BERT WordPiece tokenizer of the REALM port.

Pipeline of `RealmTokenizer.tokenize`, in the port's order:

1. if ``do_lower_case``: lower-case the text *character by character*, leaving the special tokens
   (``[CLS]`` ...) untouched (so Greek final sigma is not applied: ``"ΟΔΟΣ"`` -> ``"οδοσ"``);
2. cut the text around special tokens written in it (``"a [MASK] b"`` keeps ``[MASK]`` whole);
3. `BasicTokenizer` then `WordpieceTokenizer` on every other piece.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .base import RealmTokenizerBase
from .basic import BasicTokenizer, WordpieceTokenizer
from .encoding import BatchEncoding, PaddingStrategy, TruncationStrategy, clean_up_tokenization
from .files import VOCAB_FILE
from .prepare import pad_batch, pad_single, prepare_for_model, truncate_sequences

__all__ = ["RealmTokenizer", "load_vocab"]

logger = logging.getLogger(__name__)


def load_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
    """Read ``vocab.txt``: one token per line, id = line number (a repeated token keeps its last id).

    Raises:
        FileNotFoundError: Naming the missing path.
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"vocabulary file not found: {path} (expected a vocab.txt with one token per line)"
        )
    # Universal-newline text mode and readlines(), as the port: only \n, \r\n and \r end a line.
    with open(path, encoding="utf-8") as reader:
        lines = reader.readlines()
    return {line.rstrip("\n"): index for index, line in enumerate(lines)}


class RealmTokenizer(RealmTokenizerBase):
    """REALM's slow (pure-Python) tokenizer: BERT basic tokenization + WordPiece.

    Args:
        vocab_file: Path of ``vocab.txt`` (token per line, id = line index).
        do_lower_case: Lower-case the input (all published REALM checkpoints are uncased).
        do_basic_tokenize: Run `BasicTokenizer` before WordPiece (else only split on whitespace).
        never_split: Words that the basic tokenizer keeps whole and WordPiece does not touch.
        unk_token: Token for words WordPiece cannot cover.
        sep_token: Separator token.
        pad_token: Padding token.
        cls_token: Classifier token starting every input.
        mask_token: Masked-LM token.
        tokenize_chinese_chars: Split CJK ideographs into single-character words.
        strip_accents: ``None`` = strip when lower-casing; ``True``/``False`` force it.
        model_max_length: Default length for truncation and ``padding="max_length"``.
        clean_up_tokenization_spaces: Default of `decode`'s clean-up (``False`` like the port).
        padding_side: Only ``"right"`` is supported.
        truncation_side: Only ``"right"`` is supported.

    Raises:
        FileNotFoundError: If ``vocab_file`` does not exist.
        ValueError: If a special token is not in the vocabulary.
    """

    pretrained_files = ((VOCAB_FILE, True),)

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        do_lower_case: bool = True,
        do_basic_tokenize: bool = True,
        never_split: Iterable[str] | None = None,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        model_max_length: int = 512,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> None:
        self._init_common(
            do_lower_case=do_lower_case,
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            padding_side=padding_side,
            truncation_side=truncation_side,
        )
        self._vocab = load_vocab(vocab_file)
        self._check_special_tokens_in_vocab(self._vocab, str(vocab_file))
        self._ids_to_tokens = {index: token for token, index in self._vocab.items()}
        self.do_basic_tokenize = do_basic_tokenize
        self.never_split = list(never_split) if never_split is not None else None
        self.basic_tokenizer = BasicTokenizer(
            do_lower_case=do_lower_case,
            never_split=never_split,
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
        )
        self.wordpiece_tokenizer = WordpieceTokenizer(self._vocab, unk_token=self.unk_token)
        # Longest first, so the alternation behaves like the port's trie (leftmost, then longest).
        specials = sorted(set(self.all_special_tokens), key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(tok) for tok in specials) + ")")

    @classmethod
    def _from_files(cls, files: dict[str, str | None], init_kwargs: dict[str, Any]) -> RealmTokenizer:
        return cls(files[VOCAB_FILE], **init_kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab(self) -> dict[str, int]:
        """Token -> id (the tokenizer's own dict, as in the port: do not modify it)."""
        return self._vocab

    def get_vocab(self) -> dict[str, int]:
        """Token -> id (a copy)."""
        return dict(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def __len__(self) -> int:
        return len(self._vocab)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) -> id(s); unknown tokens map to ``[UNK]``'s id."""
        unk = self._vocab[self.unk_token]
        if isinstance(tokens, str):
            return self._vocab.get(tokens, unk)
        return [self._vocab.get(tok, unk) for tok in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Id(s) -> token(s); unknown ids map to ``[UNK]``.

        Args:
            ids: One id or a sequence of ids.
            skip_special_tokens: Drop ids of special tokens (only for a sequence).
        """
        if isinstance(ids, int):
            return self._ids_to_tokens.get(ids, self.unk_token)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._ids_to_tokens.get(int(i), self.unk_token) for i in ids if int(i) not in special]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join with spaces and glue ``##`` continuations: ``["un", "##want"]`` -> ``"unwant"``."""
        return " ".join(tokens).replace(" ##", "").strip()

    # ------------------------------------------------------------------ tokenization

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens (no special tokens added).

        Example: ``"UNwant\\u00e9d,running"`` -> ``["un", "##want", "##ed", ",", "runn", "##ing"]``
        with the toy vocabulary of the port's tests.
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
        specials = set(self.all_special_tokens)
        pieces = self._special_split.split(text)
        tokens: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 1:  # a special token written in the text
                tokens.append(piece)
                continue
            if self.do_lower_case:
                piece = "".join(ch.lower() for ch in piece)
            if not piece:
                continue
            tokens.extend(self._tokenize_piece(piece, specials))
        return tokens

    def _tokenize_piece(self, text: str, specials: set[str]) -> list[str]:
        if not self.do_basic_tokenize:
            return self.wordpiece_tokenizer.tokenize(text)
        out: list[str] = []
        for word in self.basic_tokenizer.tokenize(text, never_split=specials):
            if word in self.basic_tokenizer.never_split:
                out.append(word)
            else:
                out.extend(self.wordpiece_tokenizer.tokenize(word))
        return out

    # ------------------------------------------------------------------ encoding

    def truncate_pair_ids(self, ids: list[int], pair_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
        excess = len(ids) + len(pair_ids) + 3 - max_length
        first, second = truncate_sequences(list(ids), list(pair_ids), excess, TruncationStrategy.LONGEST_FIRST)
        return first, second or []

    def _encode(
        self,
        pairs: list[tuple[str, str | None]],
        *,
        is_batched: bool,
        add_special_tokens: bool,
        padding_strategy: PaddingStrategy,
        truncation_strategy: TruncationStrategy,
        max_length: int | None,
        return_tensors: str | None,
        return_token_type_ids: bool | None,
        return_attention_mask: bool | None,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
    ) -> BatchEncoding:
        if return_offsets_mapping:
            raise NotImplementedError(
                "return_offsets_mapping is only available with RealmTokenizerFast (the Rust backend tracks offsets)"
            )
        attention = True if return_attention_mask is None else return_attention_mask
        rows = []
        for text, text_pair in pairs:
            ids = self.convert_tokens_to_ids(self.tokenize(text))
            pair_ids = self.convert_tokens_to_ids(self.tokenize(text_pair)) if text_pair is not None else None
            row = prepare_for_model(
                ids,  # type: ignore[arg-type]
                pair_ids,  # type: ignore[arg-type]
                cls_id=self.cls_token_id,
                sep_id=self.sep_token_id,
                add_special_tokens=add_special_tokens,
                truncation_strategy=truncation_strategy,
                max_length=max_length,
                return_token_type_ids=return_token_type_ids,
                return_special_tokens_mask=return_special_tokens_mask,
            )
            self._warn_if_too_long(row["input_ids"], max_length)
            rows.append(row)
        pad_args = dict(
            strategy=padding_strategy,
            max_length=max_length,
            pad_id=self.pad_token_id,
            return_attention_mask=attention,
        )
        if not is_batched:
            row = rows[0]
            if padding_strategy != PaddingStrategy.DO_NOT_PAD or attention:
                row = pad_single(row, **pad_args)  # type: ignore[arg-type]
            return BatchEncoding(row, tensor_type=return_tensors, prepend_batch_axis=True)
        return BatchEncoding(pad_batch(rows, **pad_args), tensor_type=return_tensors)  # type: ignore[arg-type]

    def _warn_if_too_long(self, ids: list[int], max_length: int | None) -> None:
        if max_length is None and len(ids) > self.model_max_length:
            logger.warning(
                "sequence of %d tokens is longer than model_max_length=%d; pass truncation=True",
                len(ids),
                self.model_max_length,
            )

    # ------------------------------------------------------------------ decoding

    def _decode(self, ids: list[int], *, skip_special_tokens: bool, clean_up: bool) -> str:
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:  # an out-of-range id became "[UNK]": also special
            specials = set(self.all_special_tokens)
            tokens = [tok for tok in tokens if tok not in specials]
        text = self.convert_tokens_to_string(tokens)
        return clean_up_tokenization(text) if clean_up else text

    # ------------------------------------------------------------------ files

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str]:
        """Write ``vocab.txt`` (tokens in id order) into ``save_directory``.

        Args:
            save_directory: A directory (or, as in the port, a file path to write to).
            filename_prefix: Written as ``{prefix}-vocab.txt``.

        Returns:
            The path written, in a 1-tuple.
        """
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        target = Path(save_directory)
        path = target / f"{prefix}{VOCAB_FILE}" if target.is_dir() else target.with_name(prefix + target.name)
        expected = 0
        with open(path, "w", encoding="utf-8") as writer:
            for token, index in sorted(self._vocab.items(), key=lambda kv: kv[1]):
                if index != expected:
                    logger.warning(
                        "saving %s: vocabulary ids are not consecutive (gap before id %d)", path, index
                    )
                    expected = index
                writer.write(token + "\n")
                expected += 1
        return (str(path),)

    def _save_model_files(self, directory: Path) -> tuple[str, ...]:
        return self.save_vocabulary(directory)

    def __repr__(self) -> str:
        return (
            f"RealmTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
            f"model_max_length={self.model_max_length})"
        )

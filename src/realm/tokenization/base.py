"""What the slow and the fast REALM tokenizers share: special tokens, the ``__call__`` front end,
``batch_encode_candidates``, decoding helpers and ``save_pretrained``/``from_pretrained``.

A subclass provides the vocabulary (``convert_tokens_to_ids``, ``convert_ids_to_tokens``,
``vocab``, ``vocab_size``, ``__len__``), ``tokenize``, ``_encode`` (the batch encoder behind
``__call__``), ``_decode`` and ``_save_model_files``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .encoding import (
    BatchEncoding,
    PaddingStrategy,
    TruncationStrategy,
    resolve_strategies,
    split_call_inputs,
)
from .files import (
    SPECIAL_TOKEN_KEYS,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    read_init_kwargs,
    resolve_files,
    token_content,
    write_json,
)

__all__ = ["RealmTokenizerBase"]


class RealmTokenizerBase:
    """Shared behaviour of `RealmTokenizer` and `RealmTokenizerFast` (not used directly)."""

    # Files `from_pretrained` fetches from the Hub: (name, required).
    pretrained_files: tuple[tuple[str, bool], ...] = ()

    def _init_common(
        self,
        *,
        do_lower_case: bool,
        tokenize_chinese_chars: bool,
        strip_accents: bool | None,
        unk_token: str,
        sep_token: str,
        pad_token: str,
        cls_token: str,
        mask_token: str,
        model_max_length: int,
        clean_up_tokenization_spaces: bool,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side != "right":
                raise NotImplementedError(
                    f"{name}={side!r} is not supported; REALM tokenizers pad and truncate on the right"
                )
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.unk_token = token_content(unk_token)
        self.sep_token = token_content(sep_token)
        self.pad_token = token_content(pad_token)
        self.cls_token = token_content(cls_token)
        self.mask_token = token_content(mask_token)
        self.model_max_length = int(model_max_length)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

    # ------------------------------------------------------------------ special tokens

    def _special_id(self, token: str) -> int:
        ids = self.convert_tokens_to_ids([token])  # type: ignore[attr-defined]
        return ids[0]

    @property
    def unk_token_id(self) -> int:
        return self._special_id(self.unk_token)

    @property
    def sep_token_id(self) -> int:
        return self._special_id(self.sep_token)

    @property
    def pad_token_id(self) -> int:
        return self._special_id(self.pad_token)

    @property
    def cls_token_id(self) -> int:
        return self._special_id(self.cls_token)

    @property
    def mask_token_id(self) -> int:
        return self._special_id(self.mask_token)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """``{"unk_token": "[UNK]", ...}``."""
        return {key: getattr(self, key) for key in SPECIAL_TOKEN_KEYS}

    @property
    def all_special_tokens(self) -> list[str]:
        """``[UNK] [SEP] [PAD] [CLS] [MASK]`` (the port's order)."""
        return [getattr(self, key) for key in SPECIAL_TOKEN_KEYS]

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of `all_special_tokens`, same order."""
        return self.convert_tokens_to_ids(self.all_special_tokens)  # type: ignore[attr-defined]

    def _check_special_tokens_in_vocab(self, vocab: dict[str, int], source: str) -> None:
        missing = [tok for tok in self.all_special_tokens if tok not in vocab]
        if missing:
            raise ValueError(
                f"special token(s) {missing} not found in the vocabulary {source}; "
                "add them as lines of vocab.txt (the port would append them as extra ids, which we do not support)"
            )

    # ------------------------------------------------------------------ layout helpers

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        out = [self.cls_token_id] + list(token_ids_0) + [self.sep_token_id]
        if token_ids_1 is not None:
            out += list(token_ids_1) + [self.sep_token_id]
        return out

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where `build_inputs_with_special_tokens` would put (or has put) a special token, else 0.

        Args:
            token_ids_0: Ids of the first sequence.
            token_ids_1: Ids of the second sequence, if any.
            already_has_special_tokens: ``token_ids_0`` is already a full model input; then every id in
                `all_special_ids` (including ``[UNK]``, ``[PAD]``, ``[MASK]``) is marked.

        Raises:
            ValueError: If ``token_ids_1`` is given together with ``already_has_special_tokens=True``.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("do not pass token_ids_1 when token_ids_0 already has special tokens")
            special = set(self.all_special_ids)
            return [1 if tok in special else 0 for tok in token_ids_0]
        if token_ids_1 is not None:
            return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]
        return [1] + [0] * len(token_ids_0) + [1]

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``."""
        if token_ids_1 is None:
            return [0] * (len(token_ids_0) + 2)
        return [0] * (len(token_ids_0) + 2) + [1] * (len(token_ids_1) + 1)

    def truncate_pair_ids(self, ids: list[int], pair_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
        """``longest_first`` truncation of an already tokenized pair to ``max_length`` tokens including its 3
        special tokens, exactly as ``__call__(a, b, truncation=True, max_length=...)`` would cut it."""
        raise NotImplementedError

    def encode_pair_ids(
        self, ids: list[int], pair_ids: list[int], max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        """``[CLS] A [SEP] B [SEP]`` input ids and token types from token ids, without re-tokenizing text.

        Equal to ``__call__(text_a, text_b, truncation=True, max_length=max_length)`` when ``ids`` and
        ``pair_ids`` are the tokens of ``text_a`` and ``text_b`` (what a pre-tokenized block store holds).
        """
        if max_length is not None:
            ids, pair_ids = self.truncate_pair_ids(list(ids), list(pair_ids), max_length)
        return (
            self.build_inputs_with_special_tokens(list(ids), list(pair_ids)),
            self.create_token_type_ids_from_sequences(list(ids), list(pair_ids)),
        )

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """2 for a single sequence, 3 for a pair."""
        return 3 if pair else 2

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[tuple[str, str]],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str | PaddingStrategy = False,
        truncation: bool | str | TruncationStrategy | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Encode one text, one pair, or a batch of texts or pairs.

        Args:
            text: A string, a list of strings, or a list of ``(a, b)`` pairs.
            text_pair: The second sequence(s): a string for a single ``text``, a list for a batch.
            add_special_tokens: Add ``[CLS]``/``[SEP]``.
            padding: ``False``/``"do_not_pad"``, ``True``/``"longest"`` (longest in the batch) or
                ``"max_length"`` (``max_length``, else ``model_max_length``).
            truncation: ``None``/``False``/``"do_not_truncate"``, ``True``/``"longest_first"``,
                ``"only_first"`` or ``"only_second"``. Passing only ``max_length`` turns on ``longest_first``.
            max_length: Length limit for truncation and ``"max_length"`` padding (special tokens included).
            return_tensors: ``None`` (lists), ``"pt"`` or ``"np"``; single inputs get a batch axis of 1.
            return_token_type_ids: Include ``token_type_ids`` (default: yes).
            return_attention_mask: Include ``attention_mask`` (default: yes).
            return_special_tokens_mask: Include ``special_tokens_mask`` (1 at ``[CLS]``, ``[SEP]`` and pads).
            return_offsets_mapping: Include ``(start, end)`` character offsets per token (fast tokenizer only).

        Returns:
            A `BatchEncoding`; with a single input and no ``return_tensors`` its values are flat lists.
        """
        is_batched, pairs = split_call_inputs(text, text_pair)
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, self.model_max_length
        )
        return self._encode(  # type: ignore[attr-defined]
            pairs,
            is_batched=is_batched,
            add_special_tokens=add_special_tokens,
            padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
        )

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int]:
        """Ids of one text (or pair); keyword arguments as in ``__call__``."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def batch_encode_candidates(
        self, text: Sequence[Sequence[str]], text_pair: Sequence[Sequence[str]] | None = None, **kwargs: Any
    ) -> BatchEncoding:
        """Encode ``[batch][num_candidates]`` texts (or pairs) into ``[B, K, T]`` fields (spec 4.2).

        Every candidate is padded to ``max_length`` (``model_max_length`` if not given) so the
        candidates stack; nothing is truncated unless ``truncation`` is passed. Returns
        ``input_ids``, ``attention_mask`` and ``token_type_ids`` (those that were produced).

        Args:
            text: ``B`` lists of ``C`` strings each.
            text_pair: Optional second sequences, same shape.
            **kwargs: Passed to ``__call__`` (``max_length``, ``truncation``, ``return_tensors``, ...);
                ``padding`` is always ``"max_length"``.

        Raises:
            ValueError: (on tensor conversion) when candidates have different lengths, e.g. because a
                candidate is longer than ``max_length`` and truncation is off.
        """
        kwargs["padding"] = PaddingStrategy.MAX_LENGTH
        return_tensors = kwargs.pop("return_tensors", None)
        out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for i, candidates in enumerate(text):
            pair = text_pair[i] if text_pair is not None else None
            encoded = self(candidates, pair, return_tensors=None, **kwargs)
            for key in out:
                if encoded.get(key) is not None:
                    out[key].append(encoded[key])
        return BatchEncoding({k: v for k, v in out.items() if v}, tensor_type=return_tensors)

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        token_ids: int | Sequence[int] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Ids (list, numpy array or tensor) -> text.

        Args:
            token_ids: One id or a 1-D sequence of ids.
            skip_special_tokens: Drop ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``[UNK]``.
            clean_up_tokenization_spaces: Remove spaces before punctuation/contractions; defaults to the
                tokenizer's setting (``False``, as the port in transformers 4.57).
        """
        ids = _to_id_list(token_ids)
        clean = (
            self.clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is None
            else clean_up_tokenization_spaces
        )
        return self._decode(ids, skip_special_tokens=skip_special_tokens, clean_up=clean)  # type: ignore[attr-defined]

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """`decode` each row of a 2-D list, array or tensor."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in sequences]

    # ------------------------------------------------------------------ files

    def _config_dict(self) -> dict[str, Any]:
        added = {
            str(self._special_id(tok)): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for tok in sorted(set(self.all_special_tokens), key=self._special_id)
        }
        config: dict[str, Any] = {
            "added_tokens_decoder": added,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "do_basic_tokenize": getattr(self, "do_basic_tokenize", True),
            "do_lower_case": self.do_lower_case,
            "extra_special_tokens": {},
            "model_max_length": self.model_max_length,
            "never_split": getattr(self, "never_split", None),
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "tokenizer_class": "RealmTokenizer",
        }
        config.update(self.special_tokens_map)
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the port's files (``tokenizer_config.json``, ``special_tokens_map.json``, ``vocab.txt``
        and, for the fast tokenizer, ``tokenizer.json``) so transformers can load them too.

        Returns:
            The paths written.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained needs a directory, but {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / TOKENIZER_CONFIG_FILE
        map_path = directory / SPECIAL_TOKENS_MAP_FILE
        write_json(config_path, self._config_dict())
        write_json(map_path, self.special_tokens_map)
        files = self._save_model_files(directory)  # type: ignore[attr-defined]
        return (str(config_path), str(map_path), *files)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Load from a directory written by `save_pretrained` (ours or transformers'), or a Hub repo id.

        A path that does not exist locally is treated as a Hub repo id (e.g.
        ``"google/realm-orqa-nq-openqa"``) when ``huggingface_hub`` is installed.

        Args:
            pretrained_model_name_or_path: Local directory or Hub repo id.
            revision: Hub revision (branch, tag or commit).
            cache_dir: Hub cache directory.
            token: Hub access token.
            **kwargs: Constructor arguments that override the saved configuration.

        Raises:
            FileNotFoundError: A required file (e.g. ``vocab.txt``) is missing from a local directory.
            OSError: The path is not local and ``huggingface_hub`` is missing, or the Hub has no such repo.
        """
        files = resolve_files(
            str(pretrained_model_name_or_path), cls.pretrained_files, revision, cache_dir, token
        )
        init_kwargs = read_init_kwargs(files, str(pretrained_model_name_or_path))
        init_kwargs.update(kwargs)
        return cls._from_files(files, init_kwargs)  # type: ignore[attr-defined]


def _to_id_list(token_ids: Any) -> list[int]:
    if hasattr(token_ids, "tolist"):  # numpy array or torch tensor
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    return [int(t) for t in token_ids]

"""`RealmTokenizerFast`: the REALM tokenizer on the Rust ``tokenizers`` backend.

The backend pipeline is BERT's: ``BertNormalizer`` (clean text, CJK spacing, accent stripping,
per-character lower-casing) -> ``BertPreTokenizer`` (whitespace and punctuation) -> ``WordPiece``
(``##`` continuations, 100-character limit) -> ``TemplateProcessing`` (``[CLS] A [SEP] B [SEP]``,
type ids 0/1), decoded by the ``WordPiece`` decoder. Truncation and padding are done by the backend
too, configured per call exactly as transformers configures it, so pair truncation follows the
Rust rules (see the package docstring for how they differ from the slow tokenizer's).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .base import RealmTokenizerBase
from .encoding import BatchEncoding, PaddingStrategy, TruncationStrategy, clean_up_tokenization
from .files import TOKENIZER_FILE, VOCAB_FILE
from .slow import load_vocab

__all__ = ["RealmTokenizerFast"]

logger = logging.getLogger(__name__)


class RealmTokenizerFast(RealmTokenizerBase):
    """REALM's fast tokenizer, backed by HuggingFace ``tokenizers``; adds offset mapping.

    Args:
        vocab_file: Path of ``vocab.txt``; used to build the backend when ``tokenizer_file`` is absent.
        tokenizer_file: Path of a serialized backend (``tokenizer.json``); preferred when given.
        do_lower_case: Lower-case the input.
        unk_token: Token for words WordPiece cannot cover.
        sep_token: Separator token.
        pad_token: Padding token.
        cls_token: Classifier token starting every input.
        mask_token: Masked-LM token.
        tokenize_chinese_chars: Split CJK ideographs into single-character words.
        strip_accents: ``None`` = strip when lower-casing; ``True``/``False`` force it.
        model_max_length: Default length for truncation and ``padding="max_length"``.
        clean_up_tokenization_spaces: Extra clean-up in `decode` (``False`` like the port; the backend's
            WordPiece decoder already removes the space before ``. , ! ?``).
        do_basic_tokenize: Accepted for config compatibility; the backend always does basic tokenization.
        never_split: Accepted for config compatibility; ignored by the backend (as in the port).
        padding_side: Only ``"right"`` is supported.
        truncation_side: Only ``"right"`` is supported.

    Raises:
        ValueError: If neither file is given, or a special token is not in the vocabulary.
        FileNotFoundError: If a given file does not exist.
    """

    pretrained_files = ((TOKENIZER_FILE, True), (VOCAB_FILE, True))

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        do_lower_case: bool = True,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        model_max_length: int = 512,
        clean_up_tokenization_spaces: bool = False,
        do_basic_tokenize: bool = True,
        never_split: Sequence[str] | None = None,
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
        if not do_basic_tokenize or never_split:
            logger.warning(
                "RealmTokenizerFast ignores do_basic_tokenize=False and never_split (the port does too)"
            )
        self.do_basic_tokenize = do_basic_tokenize
        self.never_split = list(never_split) if never_split is not None else None
        if tokenizer_file is not None:
            if not Path(tokenizer_file).is_file():
                raise FileNotFoundError(f"tokenizer file not found: {tokenizer_file}")
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            source = str(tokenizer_file)
        elif vocab_file is not None:
            vocab = load_vocab(vocab_file)
            self._check_special_tokens_in_vocab(vocab, str(vocab_file))
            self._tokenizer = self._build_backend(vocab)
            source = str(vocab_file)
        else:
            raise ValueError(
                "RealmTokenizerFast needs a vocab_file (vocab.txt) or a tokenizer_file (tokenizer.json)"
            )
        self._check_special_tokens_in_vocab(self._tokenizer.get_vocab(with_added_tokens=True), source)
        self._sync_normalizer()
        self._lock = threading.Lock()

    def _build_backend(self, vocab: dict[str, int]) -> Tokenizer:
        """The BERT pipeline on ``vocab`` (what transformers' converter builds from ``vocab.txt``)."""
        backend = Tokenizer(models.WordPiece(vocab, unk_token=self.unk_token, max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=self.strip_accents,
            lowercase=self.do_lower_case,
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = self.cls_token, self.sep_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
        backend.decoder = decoders.WordPiece(prefix="##")
        specials = sorted(set(self.all_special_tokens), key=lambda tok: vocab.get(tok, len(vocab)))
        backend.add_special_tokens([AddedToken(tok, normalized=False, special=True) for tok in specials])
        return backend

    def _sync_normalizer(self) -> None:
        """Rebuild a loaded ``BertNormalizer`` whose settings disagree with the constructor (as the port does)."""
        if self._tokenizer.normalizer is None:
            return
        state = json.loads(self._tokenizer.normalizer.__getstate__())
        if state.get("type") != "BertNormalizer":
            return
        wanted = {
            "lowercase": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "handle_chinese_chars": self.tokenize_chinese_chars,
        }
        if any(state.get(key, value) != value for key, value in wanted.items()):
            self._tokenizer.normalizer = normalizers.BertNormalizer(
                clean_text=state.get("clean_text", True), **wanted
            )

    @classmethod
    def _from_files(cls, files: dict[str, str | None], init_kwargs: dict[str, Any]) -> RealmTokenizerFast:
        return cls(vocab_file=files.get(VOCAB_FILE), tokenizer_file=files.get(TOKENIZER_FILE), **init_kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tokenizer

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab(self) -> dict[str, int]:
        """Token -> id, including the special tokens."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, including the special tokens."""
        return self.vocab

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) -> id(s); unknown tokens map to ``[UNK]``'s id."""
        unk = self._tokenizer.token_to_id(self.unk_token)
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return unk if found is None else found
        out = []
        for tok in tokens:
            found = self._tokenizer.token_to_id(tok)
            out.append(unk if found is None else found)
        return out

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Id(s) -> token(s). Unlike the port (which returns ``None``), an unknown id maps to ``[UNK]``."""
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids) or self.unk_token
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) or self.unk_token for i in ids if int(i) not in special]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens -> text with the backend's WordPiece decoder (``["a", "##b", ","]`` -> ``"ab,"``)."""
        return self._tokenizer.decoder.decode(list(tokens))

    # ------------------------------------------------------------------ tokenization

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens (no special tokens added)."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
        encodings = self._run(
            [text], False, PaddingStrategy.DO_NOT_PAD, TruncationStrategy.DO_NOT_TRUNCATE, None
        )
        return encodings[0].tokens

    def _run(
        self,
        inputs: list[Any],
        add_special_tokens: bool,
        padding_strategy: PaddingStrategy,
        truncation_strategy: TruncationStrategy,
        max_length: int | None,
    ) -> list[Any]:
        """Configure backend truncation/padding for this call (as transformers does) and encode."""
        with self._lock:
            backend = self._tokenizer
            if truncation_strategy == TruncationStrategy.DO_NOT_TRUNCATE:
                backend.no_truncation()
            else:
                backend.enable_truncation(
                    max_length, stride=0, strategy=truncation_strategy.value, direction="right"
                )
            if padding_strategy == PaddingStrategy.DO_NOT_PAD:
                backend.no_padding()
            else:
                backend.enable_padding(
                    direction="right",
                    pad_id=self.pad_token_id,
                    pad_type_id=0,
                    pad_token=self.pad_token,
                    length=max_length if padding_strategy == PaddingStrategy.MAX_LENGTH else None,
                )
            try:
                return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except Exception as err:  # the backend raises a bare Exception
                raise ValueError(
                    f"the tokenizers backend could not encode with truncation={truncation_strategy.value!r}, "
                    f"max_length={max_length}: {err}"
                ) from err

    def encode_pair_ids(
        self, ids: list[int], pair_ids: list[int], max_length: int | None = None
    ) -> tuple[list[int], list[int]]:
        if not pair_ids:  # the Rust backend encodes (a, "") as the single sequence a
            ids = list(ids) if max_length is None else list(ids)[: max(max_length - 2, 0)]
            return self.build_inputs_with_special_tokens(ids), self.create_token_type_ids_from_sequences(ids)
        return super().encode_pair_ids(ids, pair_ids, max_length)

    def truncate_pair_ids(self, ids: list[int], pair_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
        # The Rust backend's longest-first rule for pairs: the shorter part keeps up to half the budget,
        # the longer one the rest (on equal lengths the second part is the "longer" one).
        budget = max_length - 3
        n1, n2 = len(ids), len(pair_ids)
        if budget < 0 or n1 + n2 <= budget:
            return list(ids), list(pair_ids)
        swap = n1 > n2
        if swap:
            n1, n2 = n2, n1
        n2 = n1 if n1 > budget else max(n1, budget - n1)
        if n1 + n2 > budget:
            n1 = budget // 2
            n2 = n1 + budget % 2
        if swap:
            n1, n2 = n2, n1
        return list(ids[:n1]), list(pair_ids[:n2])

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
        if is_batched:
            inputs = [text if pair is None else (text, pair) for text, pair in pairs]
        else:
            # The port drops an empty second text of a single pair ("" -> no pair); kept for parity.
            text, pair = pairs[0]
            inputs = [(text, pair) if pair else text]
        encodings = self._run(inputs, add_special_tokens, padding_strategy, truncation_strategy, max_length)
        fields: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids is None or return_token_type_ids:
            fields["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is None or return_attention_mask:
            fields["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            fields["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            fields["offset_mapping"] = [e.offsets for e in encodings]
        for ids in fields["input_ids"]:
            if max_length is None and len(ids) > self.model_max_length:
                logger.warning(
                    "sequence of %d tokens is longer than model_max_length=%d; pass truncation=True",
                    len(ids),
                    self.model_max_length,
                )
        if not is_batched and return_tensors is None:
            return BatchEncoding({key: value[0] for key, value in fields.items()}, encodings)
        return BatchEncoding(fields, encodings, tensor_type=return_tensors)

    # ------------------------------------------------------------------ decoding

    def _decode(self, ids: list[int], *, skip_special_tokens: bool, clean_up: bool) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if clean_up else text

    # ------------------------------------------------------------------ files

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write ``vocab.txt`` (``{prefix}-vocab.txt``) into ``save_directory`` via the backend model.

        Returns:
            The paths written.
        """
        if not Path(save_directory).is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory, got {save_directory}")
        return tuple(self._tokenizer.model.save(str(save_directory), filename_prefix))

    def _save_model_files(self, directory: Path) -> tuple[str, ...]:
        vocab_files = self.save_vocabulary(directory)
        path = directory / TOKENIZER_FILE
        with self._lock:  # save a backend without per-call truncation/padding settings
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
            self._tokenizer.save(str(path))
        return (*vocab_files, str(path))

    def __repr__(self) -> str:
        return (
            f"RealmTokenizerFast(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
            f"model_max_length={self.model_max_length})"
        )

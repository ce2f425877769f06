"""`BatchEncoding` and the ``__call__`` argument handling shared by both REALM tokenizers.

`resolve_strategies` turns ``padding``/``truncation``/``max_length`` into explicit strategies the
way the port does; `split_call_inputs` validates the text arguments. What happens next differs:
the slow tokenizer truncates and pads lists of ids itself (`realm.tokenization.prepare`), the fast
one configures the Rust backend to do it, as transformers does.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import numpy as np

__all__ = [
    "BatchEncoding",
    "PaddingStrategy",
    "TruncationStrategy",
    "clean_up_tokenization",
    "resolve_strategies",
    "split_call_inputs",
]

logger = logging.getLogger(__name__)

# transformers' sentinel values: a model_max_length above LARGE_INTEGER means "no known limit".
LARGE_INTEGER = int(1e20)
VERY_LARGE_INTEGER = int(1e30)


class PaddingStrategy(str, enum.Enum):
    """Where to pad to: the longest sequence of the batch, a fixed ``max_length``, or not at all."""

    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    DO_NOT_PAD = "do_not_pad"


class TruncationStrategy(str, enum.Enum):
    """Which part of a (pair of) sequence(s) loses tokens when it is longer than ``max_length``."""

    LONGEST_FIRST = "longest_first"
    ONLY_FIRST = "only_first"
    ONLY_SECOND = "only_second"
    DO_NOT_TRUNCATE = "do_not_truncate"


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict (``input_ids``, ``token_type_ids``, ...) with attribute access.

    Values are Python lists until `convert_to_tensors` turns them, in place, into ``torch`` tensors
    ("pt") or ``numpy`` arrays ("np").

    Args:
        data: The encoded fields.
        encodings: For the fast tokenizer, the backend ``tokenizers.Encoding`` of each row.
        tensor_type: ``None``, ``"pt"`` or ``"np"``; converts immediately when given.
        prepend_batch_axis: Wrap each value in a batch of one before converting (single inputs).
    """

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        encodings: list[Any] | None = None,
        tensor_type: str | None = None,
        prepend_batch_axis: bool = False,
    ) -> None:
        super().__init__(data or {})
        self.encodings = encodings
        self.convert_to_tensors(tensor_type, prepend_batch_axis=prepend_batch_axis)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": dict(self), "encodings": self.encodings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state["data"])
        self.encodings = state["encodings"]

    def convert_to_tensors(
        self, tensor_type: str | None = None, prepend_batch_axis: bool = False
    ) -> BatchEncoding:
        """Convert every value to a tensor of ``tensor_type``, in place.

        Args:
            tensor_type: ``"pt"`` (torch), ``"np"`` (numpy) or ``None`` (leave as lists).
            prepend_batch_axis: Wrap each value in a list first, so a single example gets shape ``[1, L]``.

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: For an unknown ``tensor_type``, or when rows have different lengths (pad them).
        """
        if tensor_type is None:
            return self
        tensor_type = str(getattr(tensor_type, "value", tensor_type))
        if tensor_type not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {tensor_type!r}")
        for key, value in self.items():
            if prepend_batch_axis:
                value = [value]
            try:
                array = _to_numpy(value)
            except ValueError as err:
                raise ValueError(
                    f"Unable to create a tensor from {key!r}: its rows have different lengths. "
                    "Use padding=True (or padding='max_length') and truncation=True to get a rectangular batch."
                ) from err
            if tensor_type == "pt":
                import torch

                self[key] = torch.from_numpy(array)
            else:
                self[key] = array
        return self

    def to(self, device: Any) -> BatchEncoding:
        """Move every torch tensor to ``device`` (in place) and return ``self``."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # a torch tensor
        return value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError("ragged")
    if array.dtype.kind in "iub" or array.size == 0:
        array = array.astype(np.int64)
    return array


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces a decode leaves before English punctuation and contractions (``"a ."`` -> ``"a."``)."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def resolve_strategies(
    padding: bool | str | PaddingStrategy,
    truncation: bool | str | TruncationStrategy | None,
    max_length: int | None,
    model_max_length: int,
) -> tuple[PaddingStrategy, TruncationStrategy, int | None]:
    """Turn the user's ``padding``/``truncation``/``max_length`` into explicit strategies, as the port does.

    * ``max_length`` alone (``padding=False``, ``truncation=None``) switches on ``longest_first``.
    * ``padding=True`` means ``"longest"``; ``truncation=True`` means ``"longest_first"``.
    * Without ``max_length``, ``padding="max_length"`` and truncation use ``model_max_length``, unless
      that is the "no limit" sentinel (> 1e20): then they are switched off with a warning.

    Returns:
        ``(padding_strategy, truncation_strategy, max_length)``.

    Raises:
        ValueError: For an unknown padding or truncation value.
    """
    if max_length is not None and padding is False and truncation is None:
        truncation = TruncationStrategy.LONGEST_FIRST

    if padding is True:
        padding_strategy = PaddingStrategy.LONGEST
    elif padding is False or padding is None:
        padding_strategy = PaddingStrategy.DO_NOT_PAD
    else:
        try:
            padding_strategy = PaddingStrategy(padding)
        except ValueError:
            allowed = ", ".join(repr(p.value) for p in PaddingStrategy)
            raise ValueError(f"padding must be True, False or one of {allowed}; got {padding!r}") from None

    if truncation is True:
        truncation_strategy = TruncationStrategy.LONGEST_FIRST
    elif truncation is False or truncation is None:
        truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
    else:
        try:
            truncation_strategy = TruncationStrategy(truncation)
        except ValueError:
            allowed = ", ".join(repr(t.value) for t in TruncationStrategy)
            raise ValueError(
                f"truncation must be True, False, None or one of {allowed}; got {truncation!r}"
            ) from None

    if max_length is None:
        if padding_strategy == PaddingStrategy.MAX_LENGTH:
            if model_max_length > LARGE_INTEGER:
                logger.warning(
                    "padding='max_length' without max_length and the tokenizer has no model_max_length: not padding"
                )
                padding_strategy = PaddingStrategy.DO_NOT_PAD
            else:
                max_length = model_max_length
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE:
            if model_max_length > LARGE_INTEGER:
                logger.warning(
                    "truncation without max_length and the tokenizer has no model_max_length: not truncating"
                )
                truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
            else:
                max_length = model_max_length
    return padding_strategy, truncation_strategy, max_length


def split_call_inputs(text: Any, text_pair: Any) -> tuple[bool, list[tuple[str, str | None]]]:
    """Validate ``__call__``'s ``text``/``text_pair`` and return ``(is_batched, [(a, b_or_None), ...])``.

    Accepted: a string; a string and a string pair; a list of strings; a list of strings with a list
    of pair strings of the same length; a list of ``(a, b)`` pairs.

    Raises:
        TypeError: For any other shape, naming what was received.
        ValueError: When ``text`` and ``text_pair`` batches have different lengths.
    """
    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(
                f"text is a single string, so text_pair must be a string or None, got {type(text_pair).__name__}"
            )
        return False, [(text, text_pair)]
    if not isinstance(text, (list, tuple)):
        raise TypeError(
            "text must be a str, a list of str, or a list of (str, str) pairs; "
            f"got {type(text).__name__}. Pre-tokenized input (is_split_into_words) is not supported."
        )
    if text_pair is not None:
        if isinstance(text_pair, str) or not isinstance(text_pair, (list, tuple)):
            raise TypeError("when text is a batch (list), text_pair must be a list of the same length")
        if len(text) != len(text_pair):
            raise ValueError(
                f"batch length of text ({len(text)}) does not match batch length of text_pair ({len(text_pair)})"
            )
        pairs = list(zip(text, text_pair, strict=True))
    else:
        pairs = []
        for item in text:
            if isinstance(item, str):
                pairs.append((item, None))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise TypeError(
                    "each element of a batch must be a str or an (a, b) pair of str; "
                    f"got {type(item).__name__} {item!r:.60}. Pre-tokenized input is not supported."
                )
    for a, b in pairs:
        if not isinstance(a, str) or not (b is None or isinstance(b, str)):
            raise TypeError(f"batch elements must be strings, got {type(a).__name__} and {type(b).__name__}")
    return True, pairs

"""Pure-Python BERT text splitting: the two stages of the slow REALM tokenizer.

``BasicTokenizer`` turns raw text into words (cleaning, CJK splitting, lower-casing, accent
stripping, punctuation splitting); ``WordpieceTokenizer`` turns each word into vocabulary pieces
(greedy longest-match-first, ``##`` marks a piece that continues a word).

The character classes follow the original BERT code and the transformers port exactly:

* whitespace: space, tab, newline, carriage return, and every character of category ``Zs``;
* control: category ``C*`` (including unassigned ``Cn`` and private-use ``Co``) except tab,
  newline and carriage return. Control characters are deleted, so the soft hyphen ``\\xad`` and
  zero-width characters (``Cf``) vanish;
* punctuation: the ASCII ranges 33-47, 58-64, 91-96, 123-126 (so ``$``, ``^`` and ``` ` ``` count)
  and every character of category ``P*``;
* CJK: the CJK Unified Ideographs blocks and their extensions A-E, plus the compatibility blocks.
  Japanese kana and Korean hangul are *not* in these blocks and are treated like Latin letters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

__all__ = [
    "BasicTokenizer",
    "WordpieceTokenizer",
    "is_chinese_char",
    "is_control",
    "is_punctuation",
    "is_whitespace",
    "whitespace_tokenize",
]

# Inclusive code-point ranges that BERT treats as CJK ideographs (each becomes its own word).
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_whitespace(char: str) -> bool:
    """True for space, tab, newline, carriage return and Unicode space separators (``Zs``)."""
    if char in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    """True for ``C*`` characters other than tab, newline and carriage return (BERT counts those as whitespace)."""
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char).startswith("C")


def is_punctuation(char: str) -> bool:
    """True for ASCII non-alphanumeric printable characters and Unicode punctuation (``P*``)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_chinese_char(cp: int) -> bool:
    """True if the code point ``cp`` lies in one of BERT's CJK ideograph blocks."""
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def whitespace_tokenize(text: str) -> list[str]:
    """Split on runs of whitespace (Python's notion), dropping empty pieces."""
    return text.split()


class BasicTokenizer:
    """Split raw text into words the way BERT does before WordPiece.

    Steps, in order: delete NUL, U+FFFD and control characters and map whitespace to a space; put
    spaces around CJK ideographs; split on whitespace; for each word not in
    ``never_split``: lower-case (if ``do_lower_case``), strip accents (NFD, then drop ``Mn`` marks),
    then split punctuation into single-character words.

    Args:
        do_lower_case: Lower-case every word.
        never_split: Words that are kept whole (no lower-casing, no punctuation splitting).
        tokenize_chinese_chars: Put spaces around CJK ideographs.
        strip_accents: ``None`` follows ``do_lower_case`` (strip when lower-casing); ``True`` always
            strips; ``False`` never strips.
        do_split_on_punc: Split punctuation off words.

    Unlike transformers' newer ``BertTokenizer``, the REALM port does *not* NFC-normalise the text
    first, so a decomposed ``"e\u0301"`` and a precomposed ``"\u00e9"`` differ when accents are kept.
    """

    def __init__(
        self,
        do_lower_case: bool = True,
        never_split: Iterable[str] | None = None,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        do_split_on_punc: bool = True,
    ) -> None:
        self.do_lower_case = do_lower_case
        self.never_split: set[str] = set(never_split or ())
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.do_split_on_punc = do_split_on_punc

    def tokenize(self, text: str, never_split: Iterable[str] | None = None) -> list[str]:
        """Split ``text`` into words.

        Args:
            text: Raw text.
            never_split: Extra words to keep whole for this call only.

        Returns:
            The words, in order.
        """
        keep = self.never_split.union(never_split) if never_split else self.never_split
        text = self._clean_text(text)
        if self.tokenize_chinese_chars:
            text = self._space_cjk(text)
        words: list[str] = []
        for word in whitespace_tokenize(text):
            if word not in keep:
                if self.do_lower_case:
                    word = word.lower()
                    if self.strip_accents is not False:
                        word = self._strip_accents(word)
                elif self.strip_accents:
                    word = self._strip_accents(word)
            words.extend(self._split_on_punc(word, keep))
        return whitespace_tokenize(" ".join(words))

    @staticmethod
    def _strip_accents(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    def _split_on_punc(self, word: str, keep: set[str]) -> list[str]:
        if not self.do_split_on_punc or word in keep:
            return [word]
        pieces: list[list[str]] = []
        start_new = True
        for char in word:
            if is_punctuation(char):
                pieces.append([char])
                start_new = True
            else:
                if start_new:
                    pieces.append([])
                    start_new = False
                pieces[-1].append(char)
        return ["".join(p) for p in pieces]

    @staticmethod
    def _space_cjk(text: str) -> str:
        return "".join(f" {c} " if is_chinese_char(ord(c)) else c for c in text)

    @staticmethod
    def _clean_text(text: str) -> str:
        out: list[str] = []
        for char in text:
            if char in ("\x00", "\ufffd") or is_control(char):
                continue
            out.append(" " if is_whitespace(char) else char)
        return "".join(out)


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece over a fixed vocabulary.

    Args:
        vocab: Token -> id mapping (only membership is used).
        unk_token: Emitted, once, for a word that cannot be covered by vocabulary pieces.
        max_input_chars_per_word: Longer words become ``unk_token`` without being tried.
    """

    def __init__(self, vocab: Mapping[str, int], unk_token: str, max_input_chars_per_word: int = 100) -> None:
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text: str) -> list[str]:
        """Split already-basic-tokenized ``text`` (words separated by whitespace) into pieces.

        Example: ``"unaffable"`` -> ``["un", "##aff", "##able"]`` with a suitable vocabulary.
        """
        pieces: list[str] = []
        for word in whitespace_tokenize(text):
            pieces.extend(self._word_pieces(word))
        return pieces

    def _word_pieces(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

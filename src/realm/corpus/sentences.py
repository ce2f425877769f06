"""A dependency-free sentence splitter for encyclopedic English (a stand-in for ORQA's NLTK punkt).

Rules, in order (see `split_sentences`):

1. Paragraphs: the text is cut at newlines first; a sentence never spans two lines.
2. Candidates: ``.``, ``!``, ``?``, an ellipsis (``...`` or ``…``), optionally followed by closing quotes
   or brackets, then whitespace, then a character that can start a sentence (an upper-case or caseless
   letter, a digit, an opening quote or bracket). So ``3.14``, ``Dr.Smith`` and ``e.g. the`` never split.
   CJK full stops (``。！？``) split without needing whitespace.
3. ``!``, ``?`` and ellipses always split at a candidate. A single ``.`` looks at the word before it:

   * a title, month or reference abbreviation (``Dr.``, ``Mr.``, ``St.``, ``Jan.``, ``No.``, ``vs.``,
     ``e.g.``...): never splits (``Dr. Smith``);
   * an initial (``J.``), a dotted acronym (``U.S.``, ``Ph.D.``) or an abbreviation that may end a
     sentence (``etc.``, ``Inc.``, ``Jr.``...): splits only when the next word is a common sentence opener
     (``The``, ``He``, ``In``...): ``J. R. R. Tolkien`` and ``U.S. Army`` stay whole, ``...in the U.S. The
     next year`` splits;
   * anything else (a word, a number, a closing bracket) splits.

Sentences are returned stripped, with runs of whitespace collapsed to one space, so joining them with
``" "`` gives back the normalised paragraph text.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "normalize_whitespace"]

# Abbreviations that precede a name, a number or a lower-case continuation: a "." after them never ends
# a sentence. Compared lower-cased, without the final ".".
_NEVER_FINAL = frozenset(
    """
    mr mrs ms mx dr prof st mt ft gen col lt sgt capt cpt maj adm cmdr cdr rev fr hon sen rep gov pres
    messrs mme mlle msgr
    jan feb mar apr jun jul aug sep sept oct nov dec
    no nos vol vols fig figs pp ch chap sec art op cf vs viz approx ca esp ed eds trans
    e.g i.e a.k.a c.f
    """.split()
)
# Abbreviations that often end a sentence: treated like initials and acronyms (split before an opener).
_MAYBE_FINAL = frozenset("etc inc ltd co corp jr sr al bros plc llc a.m p.m a.d b.c".split())
# Capitalised words that typically open a sentence (used only after an initial, acronym or abbreviation).
_OPENERS = frozenset(
    """
    The A An This That These Those There Then Thus Therefore However But And Although Though While When
    Whereas After Before During Since Until Following According In On At By For From With Without Of As
    It Its He She His Her They Their Them We Our I You Some Many Most Several Both Each All Other Another
    One Today Later Meanwhile Also Despite Under Over Between Among If Unlike Like Such
    """.split()
)

_OPENING_PUNCT = "\"'“‘«([{¿¡"
_CLOSING_PUNCT = "\"'”’»)]}"
_CANDIDATE = re.compile(
    r"(?P<end>\.{2,}|…+|[.!?]+|[。！？]+)(?P<close>[" + re.escape(_CLOSING_PUNCT) + r"]*)(?P<space>\s*)"
)
_WORD_AFTER = re.compile(r"\S+")
_ACRONYM = re.compile(r"(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}")


def normalize_whitespace(text: str) -> str:
    """Strip ``text`` and collapse every run of whitespace (as ``str.split`` sees it) to one space."""
    return " ".join(text.split())


def _starts_sentence(ch: str) -> bool:
    return ch.isdigit() or ch in _OPENING_PUNCT or (ch.isalpha() and not ch.islower())


def _is_boundary(paragraph: str, match: re.Match[str]) -> bool:
    end = match.group("end")
    if end[0] in "。！？":
        return True
    if not match.group("space") or match.end() >= len(paragraph):
        return False
    if not _starts_sentence(paragraph[match.end()]):
        return False
    if end != ".":
        return True  # "!", "?", "?!", ellipses
    word = paragraph[paragraph.rfind(" ", 0, match.start()) + 1 : match.start()].lstrip(_OPENING_PUNCT)
    if not word:
        return True
    key = word.lower()
    if key in _NEVER_FINAL:
        return False
    ambiguous = (
        (len(word) == 1 and word.isalpha()) or _ACRONYM.fullmatch(word) is not None or key in _MAYBE_FINAL
    )
    if not ambiguous:
        return True
    after = _WORD_AFTER.match(paragraph, match.end())
    next_word = after.group(0).lstrip(_OPENING_PUNCT).rstrip(".,;:!?" + _CLOSING_PUNCT) if after else ""
    return next_word in _OPENERS


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (rules in the module docstring).

    Args:
        text: Any text; newlines separate paragraphs.

    Returns:
        Non-empty sentences in order, whitespace-normalised (`normalize_whitespace`).

    Example:
        >>> split_sentences("Dr. Smith moved to the U.S. in 1990. He was 3.5 m tall... Really? Yes.")
        ['Dr. Smith moved to the U.S. in 1990.', 'He was 3.5 m tall...', 'Really?', 'Yes.']
    """
    sentences: list[str] = []
    for line in text.splitlines():
        paragraph = normalize_whitespace(line)  # from here on every gap is exactly one " "
        start = 0
        for match in _CANDIDATE.finditer(paragraph):
            if _is_boundary(paragraph, match):
                sentences.append(paragraph[start : match.end("close")])
                start = match.end()
        if start < len(paragraph):
            sentences.append(paragraph[start:])
    return sentences

"""REALM tokenizers: `RealmTokenizer` (pure Python) and `RealmTokenizerFast` (Rust ``tokenizers``).

Both reproduce transformers' REALM port (4.57.6) token for token and read/write its files
(``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``, ``tokenizer.json``).

Where the port's slow and fast tokenizers disagree, each of ours follows its own counterpart:

* **Pair truncation, ``longest_first``** (budget ``n = max_length - 3``). Slow: trim the longer
  sequence down to the shorter one, then both alternately; an odd leftover token stays with the
  *first* sequence. Fast (Rust): the shorter sequence keeps ``min(len, n // 2)`` tokens and the
  longer one the rest (on a tie the second counts as the longer). They differ when the budget is
  odd, both sequences are longer than ``n // 2`` and the second is at least as long as the first: two
  15-token texts at ``max_length=10`` keep 4 + 3 tokens (slow) but 3 + 4 (fast).
* **Impossible truncation** (``only_first``/``only_second`` when that sequence is too short, or
  ``max_length`` below the number of special tokens). Slow: log and return the input untruncated.
  Fast: ``only_first``/``only_second`` on a pair raise a ``ValueError`` from the backend (transformers
  lets the bare ``Exception`` through); a ``max_length`` below the special-token count truncates
  nothing, silently.
* **Empty second text of a single pair** (``tok("a", "")``): slow encodes ``[CLS] a [SEP] [SEP]``;
  fast drops the pair and encodes ``[CLS] a [SEP]`` (batches keep the pair in both).
* **Empty single input padded to max_length** (``add_special_tokens=False``): slow returns ``[]``;
  fast returns pads.
* **decode**: ``clean_up_tokenization_spaces`` defaults to ``False`` (the port's 4.57 default), so
  slow ``decode`` gives ``"hello , world ."``; the fast WordPiece decoder always glues ``. , ! ?``
  to the previous word: ``"hello, world."``. Re-tokenizing either gives the same ids.
* **Unicode tables.** Python's ``unicodedata`` (Unicode 14 on Python 3.11) and the Rust crates
  behind ``BertNormalizer`` (an older Unicode) disagree on some code points, so texts containing
  them get different tokens:
  - unassigned code points (``Cn``, e.g. U+0378): Python deletes them as "control" characters,
    Rust keeps them (-> ``[UNK]``);
  - characters newer than Rust's tables: punctuation such as U+2E5D is split off only by the
    slow tokenizer, combining marks such as U+0898 are stripped only by it, format characters
    such as U+0890 are deleted only by it;
  - a few characters whose category changed (U+166D, U+1734, U+1885, U+1886);
  - CJK Extension E block start U+2B820-U+2B91F: Rust's CJK range starts at U+2B920.
  Private-use characters (``Co``) are deleted by both. On characters assigned since Unicode 3.2
  whose category has not changed (all of Latin, Greek, Cyrillic, CJK, Arabic, ..., and the
  emoji tested) slow and fast give identical tokens and ids.

Our own deviations: only right-side padding/truncation; no added (non-special) tokens; a special
token missing from ``vocab.txt`` is an error; no ``stride``/overflowing tokens, no pre-tokenized
input; the fast ``get_special_tokens_mask`` also works without ``already_has_special_tokens``.
"""

from .encoding import BatchEncoding
from .fast import RealmTokenizerFast
from .slow import RealmTokenizer

__all__ = ["BatchEncoding", "RealmTokenizer", "RealmTokenizerFast"]

"""`encode_pair_ids`: a pre-tokenized pair gives exactly what encoding the texts gives (slow and fast rules)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from realm import RealmTokenizer, RealmTokenizerFast
from tests.conftest import REFERENCE

WORDS = "the cat sat on a mat while dogs barked loudly at night under bright stars unbelievably 1984 , .".split()
SLOW = RealmTokenizer.from_pretrained(REFERENCE / "tokenizer" / "slow")
FAST = RealmTokenizerFast.from_pretrained(REFERENCE / "tokenizer" / "fast")
texts = st.lists(st.sampled_from(WORDS), max_size=14).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(a=texts, b=texts, max_length=st.integers(3, 32))
def test_pair_ids_equal_text_encoding(a: str, b: str, max_length: int) -> None:
    for tokenizer in (SLOW, FAST):
        expected = tokenizer(a, b, truncation=True, max_length=max_length)
        ids, types = tokenizer.encode_pair_ids(
            tokenizer(a, add_special_tokens=False).input_ids, tokenizer(b, add_special_tokens=False).input_ids, max_length
        )
        assert ids == expected["input_ids"], type(tokenizer).__name__
        assert types == expected["token_type_ids"], type(tokenizer).__name__

"""REALM tokenizers: the port's own test expectations (spec 8.2) and its recorded outputs.

`tests/fixtures/reference/tokenizer/` was written by `scripts/reference/make_tokenizer_fixtures.py`
with transformers 4.57.6: `cases.json` holds the port's slow and fast outputs, `slow/` and `fast/`
the files its `save_pretrained` wrote. Each of our classes is compared with its own counterpart.
"""

from __future__ import annotations

import builtins
import json
import pickle
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm.tokenization import BatchEncoding, RealmTokenizer, RealmTokenizerFast
from realm.tokenization.basic import (
    BasicTokenizer,
    WordpieceTokenizer,
    is_control,
    is_punctuation,
    is_whitespace,
)

FIXTURE = Path(__file__).parent / "fixtures" / "reference" / "tokenizer"
VOCAB = FIXTURE / "vocab.txt"
CASES = json.loads((FIXTURE / "cases.json").read_text(encoding="utf-8"))
MAX_LEN = CASES["meta"]["model_max_length"]
TOY_VOCAB = [
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[PAD]",
    "[MASK]",
    "want",
    "##want",
    "##ed",
    "wa",
    "un",
    "runn",
    "##ing",
    ",",
    "low",
    "lowest",
]
CLASSES = {"slow": RealmTokenizer, "fast": RealmTokenizerFast}


def plain(value: Any) -> Any:
    """Tensors, arrays and tuples -> nested lists, as the fixtures store them."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.loads(json.dumps(value))


def plain_encoding(enc: BatchEncoding) -> dict[str, Any]:
    return {key: plain(value) for key, value in enc.items()}


_TOKENIZERS: dict[tuple[str, str], Any] = {}


def tokenizer(kind: str, **kwargs: Any) -> Any:
    """A tokenizer on the real uncased vocab, cached per (kind, options)."""
    key = (kind, json.dumps(kwargs, sort_keys=True))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = CLASSES[kind](VOCAB, model_max_length=MAX_LEN, **kwargs)
    return _TOKENIZERS[key]


@pytest.fixture
def toy_vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(tok + "\n" for tok in TOY_VOCAB), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Spec 8.2: the port's test_tokenization_realm.py expectations (toy vocab, no downloads).


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_full_tokenizer(toy_vocab: Path, kind: str) -> None:
    tok = CLASSES[kind](toy_vocab)
    tokens = tok.tokenize("UNwant\u00e9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tok.convert_tokens_to_ids(tokens) == [9, 6, 7, 12, 10, 11]
    assert tok.decode(tok.encode("UNwant\u00e9d,running", add_special_tokens=False)) in (
        "unwanted , running",  # slow: no clean-up by default
        "unwanted, running",  # fast: the WordPiece decoder glues the comma
    )


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_rust_and_python_full_tokenizers(toy_vocab: Path, do_lower_case: bool) -> None:
    slow = RealmTokenizer(toy_vocab, do_lower_case=do_lower_case)
    fast = RealmTokenizerFast(toy_vocab, do_lower_case=do_lower_case)
    text = "UNwant\u00e9d,running"
    assert slow.tokenize(text) == fast.tokenize(text)
    assert slow.encode(text, add_special_tokens=False) == fast.encode(text, add_special_tokens=False)
    assert slow.encode(text) == fast.encode(text)


def test_chinese() -> None:
    assert BasicTokenizer().tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]


def test_basic_tokenizer_lower() -> None:
    tok = BasicTokenizer(do_lower_case=True)
    assert tok.tokenize(" \tHeLLo!how  \n Are yoU?  ") == ["hello", "!", "how", "are", "you", "?"]
    assert tok.tokenize("H\u00e9llo") == ["hello"]


@pytest.mark.parametrize(
    ("lower", "strip", "expected"),
    [
        (True, False, ["hällo", "!", "how", "are", "you", "?"]),
        (True, True, ["hallo", "!", "how", "are", "you", "?"]),
        (True, None, ["hallo", "!", "how", "are", "you", "?"]),
        (False, None, ["HäLLo", "!", "how", "Are", "yoU", "?"]),
        (False, False, ["HäLLo", "!", "how", "Are", "yoU", "?"]),
        (False, True, ["HaLLo", "!", "how", "Are", "yoU", "?"]),
    ],
)
def test_basic_tokenizer_strip_accents(lower: bool, strip: bool | None, expected: list[str]) -> None:
    tok = BasicTokenizer(do_lower_case=lower, strip_accents=strip)
    assert tok.tokenize(" \tHäLLo!how  \n Are yoU?  ") == expected


def test_basic_tokenizer_respects_never_split() -> None:
    tok = BasicTokenizer(do_lower_case=False, never_split=["[UNK]"])
    assert tok.tokenize(" \tHeLLo!how  \n Are yoU? [UNK]") == [
        "HeLLo",
        "!",
        "how",
        "Are",
        "yoU",
        "?",
        "[UNK]",
    ]


def test_wordpiece_tokenizer() -> None:
    vocab = {
        tok: i
        for i, tok in enumerate(
            ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing"]
        )
    }
    tok = WordpieceTokenizer(vocab=vocab, unk_token="[UNK]")
    assert tok.tokenize("") == []
    assert tok.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert tok.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    assert tok.tokenize("w" * 101) == ["[UNK]"]


def test_character_classes() -> None:
    for char in (" ", "\t", "\r", "\n", "\u00a0"):
        assert is_whitespace(char)
    for char in ("A", "-"):
        assert not is_whitespace(char)
    assert is_control("\u0005")
    for char in ("A", " ", "\t", "\r"):
        assert not is_control(char)
    for char in ("-", "$", "`", "."):
        assert is_punctuation(char)
    for char in ("A", " "):
        assert not is_punctuation(char)


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_clean_text(toy_vocab: Path, kind: str) -> None:
    tok = CLASSES[kind](toy_vocab)
    assert [tok.tokenize(t) for t in ["Test", "\xad", "test"]] == [["[UNK]"], [], ["[UNK]"]]


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_sequence_builders(kind: str) -> None:
    tok = tokenizer(kind)
    a = tok.encode("sequence builders", add_special_tokens=False)
    b = tok.encode("multi-sequence build", add_special_tokens=False)
    assert tok.build_inputs_with_special_tokens(a) == [101] + a + [102]
    assert tok.build_inputs_with_special_tokens(a, b) == [101] + a + [102] + b + [102]


@pytest.mark.parametrize(
    ("do_lower_case", "tokens", "spans"),
    [
        (
            True,
            "[CLS] a , naive [MASK] allen ##nl ##p sentence . [SEP]",
            ["", "A", ",", "naïve", "[MASK]", "Allen", "NL", "P", "sentence", ".", ""],
        ),
        (  # uncased vocab without lower-casing: capitalised words and "naïve" are unknown
            False,
            "[CLS] [UNK] , [UNK] [MASK] [UNK] sentence . [SEP]",
            ["", "A", ",", "naïve", "[MASK]", "AllenNLP", "sentence", ".", ""],
        ),
    ],
)
def test_offsets_with_special_characters(do_lower_case: bool, tokens: str, spans: list[str]) -> None:
    text = "A, naïve [MASK] AllenNLP sentence."
    enc = tokenizer("fast", do_lower_case=do_lower_case)(text, return_offsets_mapping=True)
    assert tokenizer("fast").convert_ids_to_tokens(enc.input_ids) == tokens.split()
    assert [text[start:end] for start, end in enc.offset_mapping] == spans
    assert enc.offset_mapping[0] == enc.offset_mapping[-1] == (0, 0)
    with pytest.raises(NotImplementedError, match="RealmTokenizerFast"):
        tokenizer("slow")(text, return_offsets_mapping=True)


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_batch_encode_candidates_shapes(kind: str, return_tensors: str) -> None:
    text = [["Hello world!", "Nice to meet you!"], ["The cute cat.", "The adorable dog."]]
    out = tokenizer(kind).batch_encode_candidates(text, max_length=10, return_tensors=return_tensors)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    for value in out.values():
        assert tuple(value.shape) == (2, 2, 10)
        assert isinstance(value, torch.Tensor if return_tensors == "pt" else np.ndarray)


# ---------------------------------------------------------------------------------------------
# The port's recorded outputs (cases.json).


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("record", CASES["texts"], ids=lambda r: f"{r['kwargs']}-{r['text'][:12]!r}")
def test_text_cases(kind: str, record: dict[str, Any]) -> None:
    text, want = record["text"], record[kind]
    tok = tokenizer(kind, **record["kwargs"])
    ids = tok(text)["input_ids"]
    assert tok.tokenize(text) == want["tokens"]
    assert ids == want["ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == want["ids_no_special"]
    assert tok.decode(ids) == want["decode"]
    assert tok.decode(ids, skip_special_tokens=True) == want["decode_skip"]
    assert tok.decode(ids, clean_up_tokenization_spaces=True) == want["decode_clean"]
    if kind == "fast":
        assert plain(tok(text, return_offsets_mapping=True)["offset_mapping"]) == want["offsets"]


def _check_call(kind: str, want: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    tok = tokenizer(kind)
    if "error" in want:
        with pytest.raises(ValueError):
            tok(*args, **kwargs)
        return
    assert plain_encoding(tok(*args, **kwargs)) == want


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("case", CASES["singles"], ids=lambda c: f"{c['text'][:8]!r}-{c['kwargs']}")
def test_single_cases(kind: str, case: dict[str, Any]) -> None:
    _check_call(kind, case[kind], case["text"], **case["kwargs"])


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("case", CASES["pairs"], ids=lambda c: f"{c['a'][:8]!r}-{c['b'][:8]!r}-{c['kwargs']}")
def test_pair_cases(kind: str, case: dict[str, Any]) -> None:
    _check_call(kind, case[kind], case["a"], case["b"], **case["kwargs"])


def test_pair_truncation_differs_like_the_port() -> None:
    """Both long, odd budget: the slow tokenizer keeps one more token of the first text."""
    case = next(
        c
        for c in CASES["pairs"]
        if c["a"].startswith("one two")
        and c["b"].startswith("fifteen")
        and c["kwargs"].get("max_length") == 10
        and c["kwargs"].get("truncation") is True
    )
    slow, fast = case["slow"]["token_type_ids"], case["fast"]["token_type_ids"]
    assert (slow.count(0) - 2, slow.count(1) - 1) == (4, 3)
    assert (fast.count(0) - 2, fast.count(1) - 1) == (3, 4)


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("case", CASES["batches"], ids=lambda c: str(c["kwargs"]))
def test_batch_cases(kind: str, case: dict[str, Any]) -> None:
    _check_call(kind, case[kind], case["text"], case.get("text_pair"), **case["kwargs"])


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("case", CASES["candidates"], ids=lambda c: str(c["kwargs"]))
def test_candidate_cases(kind: str, case: dict[str, Any]) -> None:
    out = tokenizer(kind).batch_encode_candidates(case["text"], **case["kwargs"])
    assert plain_encoding(out) == case[kind]
    assert {k: list(np.asarray(v).shape) for k, v in out.items()} == case[kind + "_shapes"]


@pytest.mark.parametrize("case", CASES["decode"], ids=lambda c: str(c["ids"][:4]))
def test_decode_cases(case: dict[str, Any]) -> None:
    slow, fast = tokenizer("slow"), tokenizer("fast")
    for kind, tok in (("slow", slow), ("fast", fast)):
        ids = case["ids"]
        got = [
            tok.decode(ids),
            tok.decode(ids, skip_special_tokens=True),
            tok.decode(ids, clean_up_tokenization_spaces=True),
        ]
        assert got == case[kind]
        assert tok.decode(torch.tensor(ids, dtype=torch.long)) == case[kind][0]
        assert tok.decode(np.array(ids, dtype=np.int64)) == case[kind][0]
    assert slow.convert_ids_to_tokens(case["ids"]) == case["slow_tokens"]
    assert slow.convert_tokens_to_string(case["slow_tokens"]) == case["slow_string"]
    assert fast.convert_tokens_to_string(fast.convert_ids_to_tokens(case["ids"])) == case["fast_string"]
    assert slow.batch_decode([case["ids"], case["ids"]]) == [case["slow"][0]] * 2


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("case", CASES["special_tokens_mask"], ids=lambda c: str(c["ids1"]))
def test_special_tokens_helpers(kind: str, case: dict[str, Any]) -> None:
    tok = tokenizer(kind)
    ids0, ids1 = case["ids0"], case["ids1"]
    assert tok.get_special_tokens_mask(ids0, ids1) == case["mask"]
    assert tok.build_inputs_with_special_tokens(ids0, ids1) == case["built"] == case["built_fast"]
    assert tok.create_token_type_ids_from_sequences(ids0, ids1) == case["type_ids"]
    built = tok.build_inputs_with_special_tokens(ids0, ids1) + [0, 100, 103]
    assert tok.get_special_tokens_mask(built, already_has_special_tokens=True) == case["already"]
    with pytest.raises(ValueError):
        tok.get_special_tokens_mask(built, [1], already_has_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# Files: the port's saved tokenizers, our round trip, the Hub path.


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("folder", ["slow", "fast"])
def test_load_port_files(kind: str, folder: str) -> None:
    tok = CLASSES[kind].from_pretrained(FIXTURE / folder)
    assert tok.model_max_length == int(1e30)  # the port's plain constructor writes "no limit"
    assert tok.do_lower_case is True and tok.strip_accents is None and tok.tokenize_chinese_chars is True
    assert tok.clean_up_tokenization_spaces is False
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert tok.all_special_tokens == ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"]
    assert tok.all_special_ids == [100, 102, 0, 101, 103]
    assert tok.vocab_size == len(tok) == len(tok.vocab) == 30522
    for record in CASES["texts"][:20]:
        assert record["kwargs"] == {}
        assert tok(record["text"])["input_ids"] == record[kind]["ids"]
    # No known model_max_length: padding="max_length" without max_length does not pad (with a warning).
    assert tok(["a", "a b c"], padding="max_length")["input_ids"] == [
        [101, 1037, 102],
        [101, 1037, 1038, 1039, 102],
    ]


def test_fast_backend_equals_port_tokenizer_json() -> None:
    port = json.loads((FIXTURE / "fast" / "tokenizer.json").read_text(encoding="utf-8"))
    ours = json.loads(RealmTokenizerFast(VOCAB).backend_tokenizer.to_str())
    for key in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"):
        assert ours[key] == port[key], key


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    tok = CLASSES[kind](VOCAB, do_lower_case=False, strip_accents=True, model_max_length=77)
    # A call configures the backend's truncation/padding; none of it may leak into the saved files.
    tok("warm up the backend", padding="max_length", max_length=9, truncation=True)
    written = tok.save_pretrained(tmp_path / "saved")
    names = sorted(Path(p).name for p in written)
    expected = ["special_tokens_map.json", "tokenizer_config.json", "vocab.txt"] + (
        ["tokenizer.json"] if kind == "fast" else []
    )
    assert names == sorted(expected)
    assert (tmp_path / "saved" / "vocab.txt").read_bytes() == VOCAB.read_bytes()
    port_config = json.loads((FIXTURE / kind / "tokenizer_config.json").read_text(encoding="utf-8"))
    ours = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert set(ours) == set(port_config)
    assert ours["added_tokens_decoder"] == port_config["added_tokens_decoder"]
    assert (ours["model_max_length"], ours["do_lower_case"], ours["strip_accents"]) == (77, False, True)
    if kind == "fast":
        saved = json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))
        assert saved["truncation"] is None and saved["padding"] is None
    for cls in CLASSES.values():
        loaded = cls.from_pretrained(tmp_path / "saved")
        assert (loaded.do_lower_case, loaded.strip_accents, loaded.model_max_length) == (False, True, 77)
        for text in ("Héllo WORLD, naïve café!", "ah\u535a\u63a8zz [MASK]"):
            assert loaded.tokenize(text) == tok.tokenize(text)
    assert CLASSES[kind].from_pretrained(tmp_path / "saved", do_lower_case=True).tokenize("HeLLo") == [
        "hello"
    ]


# tokenizer_config.json of the google/realm-orqa-nq-* hub repos, as published.
HUB_CONFIG = {
    "do_lower_case": True,
    "do_basic_tokenize": True,
    "never_split": None,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
    "tokenize_chinese_chars": True,
    "strip_accents": None,
    "special_tokens_map_file": None,
    "name_or_path": "bert-base-uncased",
    "tokenizer_class": "RealmTokenizer",
    "model_max_length": 512,
}


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_load_hub_style_config(kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copyfile(VOCAB, tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG), encoding="utf-8")
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            }
        ),
        encoding="utf-8",
    )
    with caplog.at_level("WARNING"):
        tok = CLASSES[kind].from_pretrained(tmp_path)
    assert not caplog.records
    assert tok.model_max_length == 512
    enc = tok.batch_encode_candidates([["Hello world!"]], return_tensors="np")  # pads to 512
    assert enc["input_ids"].shape == (1, 1, 512)


def test_save_vocabulary_prefix(tmp_path: Path) -> None:
    for kind in CLASSES:
        (path,) = tokenizer(kind).save_vocabulary(tmp_path, filename_prefix=kind)
        assert Path(path).name == f"{kind}-vocab.txt"
        assert Path(path).read_bytes() == VOCAB.read_bytes()


def test_fast_loads_from_slow_files_and_rebuilds_normalizer(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "fast", tmp_path / "fast")
    tok = RealmTokenizerFast.from_pretrained(tmp_path / "fast", do_lower_case=False)
    assert tok.tokenize("HeLLo") == RealmTokenizer(VOCAB, do_lower_case=False).tokenize("HeLLo") == ["[UNK]"]
    (tmp_path / "fast" / "tokenizer.json").unlink()  # vocab.txt alone is enough
    assert RealmTokenizerFast.from_pretrained(tmp_path / "fast").tokenize("HeLLo") == ["hello"]


def test_missing_files_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope" / "vocab.txt"
    for cls in (RealmTokenizer, RealmTokenizerFast):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            cls(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        RealmTokenizer.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="vocab_file"):
        RealmTokenizerFast()

    real_import = builtins.__import__

    def no_hub(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(OSError, match=r"google/realm-nope.*realm-lm\[hub\]"):
        RealmTokenizer.from_pretrained("google/realm-nope")


def test_from_pretrained_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import EntryNotFoundError

    requested = []

    def fake_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        requested.append((repo_id, filename))
        path = FIXTURE / "fast" / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    tok = RealmTokenizerFast.from_pretrained("google/realm-cc-news-pretrained-embedder")
    assert tok.encode("Hello world!") == [101, 7592, 2088, 999, 102]
    assert ("google/realm-cc-news-pretrained-embedder", "added_tokens.json") in requested
    assert RealmTokenizer.from_pretrained("google/realm-cc-news-pretrained-embedder").vocab_size == 30522


def test_missing_special_token_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[CLS]\n[SEP]\n[PAD]\nhello\n", encoding="utf-8")
    for cls in CLASSES.values():
        with pytest.raises(ValueError, match=r"\[MASK\]"):
            cls(path)


# ---------------------------------------------------------------------------------------------
# Arguments, BatchEncoding.


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_argument_errors(kind: str) -> None:
    tok = tokenizer(kind)
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle")
    with pytest.raises(TypeError):
        tok(42)
    with pytest.raises(TypeError):
        tok(["a", "b"], "c")
    with pytest.raises(ValueError, match="batch length"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a", "a b c"], return_tensors="pt")
    with pytest.raises(NotImplementedError):
        CLASSES[kind](VOCAB, padding_side="left")


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_max_length_padding_defaults_to_model_max_length(kind: str) -> None:
    enc = CLASSES[kind](VOCAB, model_max_length=16)(
        ["hello", "hello world"], padding="max_length", return_tensors="pt"
    )
    assert enc.input_ids.shape == (2, 16)
    assert enc.input_ids.dtype == torch.long


@pytest.mark.parametrize("kind", ["slow", "fast"])
def test_batch_encoding(kind: str) -> None:
    enc = tokenizer(kind)(["Hello world!", "hi"], padding=True, return_special_tokens_mask=True)
    assert isinstance(enc, BatchEncoding) and enc.input_ids is enc["input_ids"]
    with pytest.raises(AttributeError, match="input_ids"):
        _ = enc.offsets
    same = enc.convert_to_tensors("np")
    assert same is enc and isinstance(enc["attention_mask"], np.ndarray)
    enc.convert_to_tensors("pt")
    assert enc.to("cpu").input_ids.dtype == torch.long
    assert plain(pickle.loads(pickle.dumps(enc)).input_ids) == plain(enc.input_ids)
    single = tokenizer(kind)("Hello world!", return_tensors="pt")
    assert single.input_ids.shape == (1, 5) and single.token_type_ids.shape == (1, 5)
    with pytest.raises(ValueError, match="return_tensors"):
        enc.convert_to_tensors("tf")


def test_pickled_fast_tokenizer_still_works() -> None:
    tok = pickle.loads(pickle.dumps(tokenizer("fast")))
    assert tok.encode("Hello world!") == [101, 7592, 2088, 999, 102]


# ---------------------------------------------------------------------------------------------
# Property: slow == fast on any single text.


def _same_in_python_and_rust(char: str) -> bool:
    """Characters on which Python's and Rust's Unicode tables agree (see the package docstring).

    Letters, numbers and symbols (emoji included) are word characters for both, however new, unless
    their category changed since Unicode 3.2 or they sit in Rust's mis-typed CJK Extension E start.
    Marks, punctuation, separators and controls must be long-standing: assigned in Unicode 3.2 with
    the same category today. Unassigned code points (deleted by Python, kept by Rust) are out.
    """
    cp, cat, old = ord(char), unicodedata.category(char), unicodedata.ucd_3_2_0.category(char)
    if cat[0] in "LNS":
        return old in ("Cn", cat) and not 0x2B820 <= cp <= 0x2B91F
    return cat not in ("Cn", "Cs") and old == cat


STABLE_CHARS = [chr(cp) for cp in range(0x30000) if _same_in_python_and_rust(chr(cp))]
_CHARS = st.one_of(
    st.characters(max_codepoint=0x2FFFF).filter(_same_in_python_and_rust), st.sampled_from(STABLE_CHARS)
)
# fmt: off
_NASTY = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x00", "\x07", "\x7f", "\xad", "\u200b", "\u200d", "\ufeff", "\ufffd", "\x85",
     "\u2028", "\u3000", "\u00a0", "\ue000", "\u0301", "\u0308", "[MASK]", "[CLS]", "[mask]", "##", "...", "e\u0301",
     "\u00e9", "ΟΔΟΣ", "İ", "ß", "ﬁ", "Ǆ", "\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469",
     "\u535a", "\U00020000", "\uf900", "a" * 101, "x" * 99 + "\u0301", "Ab" * 60, "un", "##want"]
)
# fmt: on
TEXTS = st.lists(st.one_of(st.text(_CHARS, max_size=12), _NASTY), max_size=8).map("".join)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, lower=st.booleans(), strip=st.sampled_from([None, True, False]))
def test_slow_equals_fast_on_any_text(text: str, lower: bool, strip: bool | None) -> None:
    slow = tokenizer("slow", do_lower_case=lower, strip_accents=strip)
    fast = tokenizer("fast", do_lower_case=lower, strip_accents=strip)
    assert slow.tokenize(text) == fast.tokenize(text)
    assert slow.encode(text) == fast.encode(text)


@pytest.mark.parametrize(
    ("text", "slow", "fast"),
    [
        ("private \ue000 end", ["private", "end"], ["private", "end"]),  # Co: deleted by both
        ("a\u0378b", ["ab"], ["[UNK]"]),  # unassigned: Python deletes, Rust keeps
        ("x\u2e5dy", ["x", "[UNK]", "y"], ["[UNK]"]),  # punctuation newer than Rust's tables
        ("a\u166db", ["[UNK]"], ["a", "[UNK]", "b"]),  # Po in old Unicode, So today
        ("a\U0002b820b", ["a", "[UNK]", "b"], ["[UNK]"]),  # Rust's CJK Extension E range starts at U+2B920
    ],
)
def test_known_unicode_divergences(text: str, slow: list[str], fast: list[str]) -> None:
    """Where the port's slow and fast disagree on a single text, ours disagree the same way."""
    assert tokenizer("slow").tokenize(text) == slow
    assert tokenizer("fast").tokenize(text) == fast

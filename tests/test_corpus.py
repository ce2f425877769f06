"""The knowledge corpus: document readers, sentence splitting, ORQA block packing, the block store."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realm.corpus import (
    Block,
    BlockStore,
    BuildConfig,
    BuildStats,
    CorpusFormatError,
    Document,
    DocumentReader,
    build_blocks,
    build_store,
    import_block_records,
    read_documents,
    skip_reason,
    source_fingerprint,
    split_sentences,
    tokenizer_fingerprint,
)
from realm.corpus import writer as writer_module
from realm.tokenization import RealmTokenizer, RealmTokenizerFast

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
BERT_VOCAB = REFERENCE / "tokenizer" / "vocab.txt"
BLOCK_RECORDS = REFERENCE / "openqa_eval" / "block_records.npy"
WORDS = "the cat sat on mat paris capital france tower river city old famous bridges known".split()


def toy_vocab(path: Path, extra: list[str] = ()) -> Path:
    """Specials, every ASCII letter/digit/punctuation (also as ##pieces) and some words: covers any ASCII."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *chars,
        *("##" + c for c in chars),
        *WORDS,
        *extra,
    ]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> RealmTokenizerFast:
    vocab = BERT_VOCAB if BERT_VOCAB.is_file() else toy_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    return RealmTokenizerFast(vocab_file=vocab)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def synthetic_blocks(n: int, seed: int = 0) -> list[Block]:
    rng = np.random.default_rng(seed)
    blocks = []
    for i in range(n):
        ids = rng.integers(1000, 30000, size=int(rng.integers(0, 40))).tolist()
        blocks.append(
            Block(
                f"title {i % 97}",
                f"text of block {i} " * int(rng.integers(1, 4)),
                [7, i % 500],
                ids,
                i // 3,
                [0],
            )
        )
    return blocks


# ---------------------------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        (
            "The U.S. Army left. He moved to the U.S. The next year he returned.",
            ["The U.S. Army left.", "He moved to the U.S.", "The next year he returned."],
        ),
        (
            "J. R. R. Tolkien wrote it. George W. Bush spoke.",
            ["J. R. R. Tolkien wrote it.", "George W. Bush spoke."],
        ),
        ("Pi is 3.14159 roughly. It costs $2.50 today.", ["Pi is 3.14159 roughly.", "It costs $2.50 today."]),
        ("He waited... Then he left. Wait... what?", ["He waited...", "Then he left.", "Wait... what?"]),
        ('Really?! Yes. "Go." She went.', ["Really?!", "Yes.", '"Go."', "She went."]),
        (
            "Apples, pears, etc. The shop closed. See Fig. 3 now.",
            ["Apples, pears, etc.", "The shop closed.", "See Fig. 3 now."],
        ),
        (
            "Roe v. Wade, e.g. the case. Prices rose in Jan. 2001.",
            ["Roe v. Wade, e.g. the case.", "Prices rose in Jan. 2001."],
        ),
        ("(Born 1950.) After that, nothing.", ["(Born 1950.)", "After that, nothing."]),
        ("東京は首都です。大阪は大きい。", ["東京は首都です。", "大阪は大きい。"]),
        (
            "First line.\nSecond  line\twithout end\n\n  Third. ",
            ["First line.", "Second line without end", "Third."],
        ),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


# ---------------------------------------------------------------------------------------------- packing

sentence_st = st.lists(
    st.sampled_from(WORDS + ["internationalization", "Überbrückung", "3.5", "(a)"]), min_size=1, max_size=12
).map(lambda words: " ".join(["The", *words]) + ".")


@settings(max_examples=60, deadline=None)
@given(
    sentences=st.lists(sentence_st, min_size=1, max_size=12),
    title=st.sampled_from(["", "Paris", "The old famous bridges of paris"]),
    max_block_tokens=st.integers(12, 48),
)
def test_packing_respects_budget_and_keeps_every_sentence_in_order(
    tokenizer, sentences, title, max_block_tokens
):
    config = BuildConfig(max_block_tokens=max_block_tokens, max_title_tokens=8)
    text = " ".join(sentences)
    assert split_sentences(text) == sentences
    stats = BuildStats()
    blocks = list(build_blocks([Document(title, text, "mem", 1)], tokenizer, config, stats))
    for block in blocks:
        assert 3 + len(block.title_ids) + len(block.token_ids) <= max_block_tokens  # the budget, exactly
        assert list(block.token_ids) == ids_of(tokenizer, block.text)
        assert list(block.title_ids) == ids_of(tokenizer, block.title)
    if stats.words_cut:  # a word cut between characters: nothing lost, nothing added
        assert "".join(b.text for b in blocks).replace(" ", "") == text.replace(" ", "")
        return
    assert " ".join(b.text for b in blocks) == text  # every sentence, once, in order
    budget = max_block_tokens - 3 - len(blocks[0].title_ids)
    fitting = [s for s in sentences if len(ids_of(tokenizer, s)) <= budget]
    assert stats.long_sentences == len(sentences) - len(fitting)
    if not stats.long_sentences:
        # Whole sentences only, greedily: the next block's first sentence did not fit in the previous block.
        pieces = [split_sentences(b.text) for b in blocks]
        assert sum(pieces, []) == sentences
        for prev, nxt in zip(blocks, pieces[1:], strict=False):
            assert len(prev.token_ids) + len(ids_of(tokenizer, nxt[0])) > budget
        for block, piece in zip(blocks, pieces, strict=True):
            starts = np.cumsum([0] + [len(ids_of(tokenizer, s)) for s in piece[:-1]]).tolist()
            assert list(block.sentence_starts) == starts


def test_long_sentence_is_split_not_dropped(tokenizer):
    long = "The " + " ".join(["river"] * 50) + "."
    text = f"Paris is old. {long} The city is famous."
    stats = BuildStats()
    blocks = list(
        build_blocks([Document("Paris", text, "mem", 1)], tokenizer, BuildConfig(max_block_tokens=20), stats)
    )
    assert stats.long_sentences == 1 and stats.words_cut == 0
    assert " ".join(b.text for b in blocks) == text
    assert blocks[0].text == "Paris is old."  # an oversized sentence starts a new block
    assert all(3 + len(b.title_ids) + len(b.token_ids) <= 20 for b in blocks)
    giant = "x" * 30 + "-" * 60  # one whitespace-free "word" of ~61 wordpieces
    stats = BuildStats()
    blocks = list(
        build_blocks(
            [Document("", giant, "mem", 1)],
            tokenizer,
            BuildConfig(max_block_tokens=20, max_title_tokens=4),
            stats,
        )
    )
    assert stats.words_cut == 1 and "".join(b.text for b in blocks) == giant
    assert all(list(b.token_ids) == ids_of(tokenizer, b.text) and len(b.token_ids) <= 17 for b in blocks)


def test_long_title_is_shortened(tokenizer):
    title = " ".join(["bridges"] * 30)
    stats = BuildStats()
    (block,) = build_blocks(
        [Document(title, "Paris is old.", "mem", 1)], tokenizer, BuildConfig(max_title_tokens=5), stats
    )
    assert stats.titles_truncated == 1 and block.title == "bridges bridges bridges bridges bridges"
    assert list(block.title_ids) == ids_of(tokenizer, block.title)


# ---------------------------------------------------------------------------------------------- filters


def test_skip_reasons():
    config = BuildConfig()
    assert skip_reason("Paris", "  \n ", config) == "empty"
    assert skip_reason("List of cities", "A city.", config) == "list_title"
    assert skip_reason("Index of physics articles", "x.", config) == "list_title"
    assert skip_reason("Outline of France", "x.", config) == "list_title"
    assert skip_reason("Mercury (disambiguation)", "x.", config) == "disambiguation"
    assert skip_reason("Paris", "* one\n* two\n- three\nSome prose.", config) == "list_text"
    assert skip_reason("Paris", "1. one\n2) two\nProse here.\nMore prose.", config) is None  # 2 of 4
    assert skip_reason("Paris", "Paris is old.", config) is None
    assert skip_reason("List of cities", "A city.", BuildConfig(filter_pages=False)) is None


def test_build_counts_what_it_skips(tokenizer, tmp_path):
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"title": "Paris", "text": "Paris is the capital of France. It is old."},
            {"title": "List of bridges", "text": "Bridge one."},
            {"title": "Seine (disambiguation)", "text": "Seine may refer to a river."},
            {"title": "Empty", "text": ""},
            {"title": "Only title", "text": "Only title\n"},
            {"title": "Bullets", "text": "* a\n* b\n* c"},
            {"title": "Rome", "text": "Rome &amp; Paris are old."},
        ],
    )
    stats = build_store(corpus, tmp_path / "store", tokenizer, progress=False)
    assert stats.documents == 7 and stats.documents_kept == 2
    assert stats.skipped == {"list_title": 1, "disambiguation": 1, "empty": 2, "list_text": 1}
    assert stats.blocks == 2 and stats.sentences == 3
    summary = stats.summary()
    assert "read 7 documents" in summary and "2 empty" in summary and "wrote 2 blocks" in summary
    store = BlockStore.open(tmp_path / "store")
    assert store.texts([0, 1]) == ["Paris is the capital of France. It is old.", "Rome & Paris are old."]
    assert store.doc_ids([0, 1]).tolist() == [0, 6]
    assert store.manifest["parts"][0]["stats"]["skipped"]["empty"] == 2


def test_build_config_checks():
    with pytest.raises(ValueError, match="unknown BuildConfig key"):
        BuildConfig.from_dict({"max_block_tokens": 128, "max_blok": 1})
    assert BuildConfig.from_dict(BuildConfig(max_block_tokens=128).to_dict()).max_block_tokens == 128
    with pytest.raises(ValueError, match="no room"):
        BuildConfig(max_block_tokens=10, max_title_tokens=8)
    with pytest.raises(ValueError, match="on_error"):
        BuildConfig(on_error="ignore")


# ---------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"title": "T"}', 'missing "text"'),
        ('{"text": "T"}', 'missing "title"'),
        ('{"title": 3, "text": "x"}', '"title" must be a string, got int'),
        ('{"title": "t", "text": null}', '"text" must be a string, got NoneType'),
        (
            '<doc id="1" url="u" title="t">',
            "this is WikiExtractor's <doc> output; rerun WikiExtractor with --json",
        ),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, problem):
    good = json.dumps({"title": "a", "text": "b"})
    path = tmp_path / "corpus.jsonl"
    path.write_text(f"{good}\n\n{good}\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="^" + re.escape(f"{path}:4: {problem}")) as err:
        list(read_documents(path))
    assert err.value.line == 4 and err.value.path == str(path)
    reader = DocumentReader(path, on_error="skip")
    assert [d.line for d in reader] == [1, 3, 5] and reader.malformed == 1


def test_invalid_utf8_and_skip_counting(tokenizer, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"title": "a", "text": "Paris is old."}\n{"title": "\xff", "text": "b"}\n{"oops"\n')
    with pytest.raises(CorpusFormatError, match=r"corpus.jsonl:2: not valid UTF-8"):
        list(read_documents(path))
    stats = build_store(path, tmp_path / "s", tokenizer, BuildConfig(on_error="skip"), progress=False)
    assert stats.skipped["malformed"] == 2 and stats.documents == 3 and stats.blocks == 1


def test_wikiextractor_tree(tmp_path):
    def page(i: int, title: str) -> str:
        return json.dumps(
            {"id": str(i), "url": f"https://w/?curid={i}", "title": title, "text": f"{title} is a page."}
        )

    (tmp_path / "AA").mkdir()
    (tmp_path / "AB").mkdir()
    (tmp_path / "AA" / "wiki_00").write_text(page(12, "Anarchism") + "\n" + page(25, "Autism") + "\n")
    (tmp_path / "AA" / "wiki_01.bz2").write_bytes(bz2.compress((page(39, "Albedo") + "\n").encode()))
    (tmp_path / "AB" / "wiki_00.gz").write_bytes(gzip.compress((page(290, "A") + "\n").encode()))
    (tmp_path / "README.md").write_text("not a corpus file")
    (tmp_path / ".hidden").write_text("{}")
    reader = DocumentReader(tmp_path)
    documents = list(reader)
    assert [d.title for d in documents] == ["Anarchism", "Autism", "Albedo", "A"]
    assert [d.source_id for d in documents] == ["12", "25", "39", "290"]
    assert [(Path(d.source).relative_to(tmp_path).as_posix(), d.line) for d in documents] == [
        ("AA/wiki_00", 1),
        ("AA/wiki_00", 2),
        ("AA/wiki_01.bz2", 1),
        ("AB/wiki_00.gz", 1),
    ]
    assert [p.name for p in reader.ignored_files] == ["README.md"]
    assert reader.bytes_read == reader.total_bytes
    fingerprint = reader.fingerprint()
    assert fingerprint == source_fingerprint(tmp_path)
    (tmp_path / "AA" / "wiki_00").write_text(page(12, "Anarchism") + "\n")
    assert source_fingerprint(tmp_path) != fingerprint


def test_folder_of_txt_files(tokenizer, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "Seine.txt").write_text(
        "The Seine flows through Paris.\nIt has many bridges.", encoding="utf-8"
    )
    (tmp_path / "Paris.txt").write_text("\ufeffParis is the capital of France.", encoding="utf-8")
    (tmp_path / "Rome.txt.gz").write_bytes(gzip.compress(b"Rome is old."))
    documents = list(read_documents(tmp_path))
    assert [(d.title, d.line) for d in documents] == [("Paris", 1), ("Rome", 1), ("Seine", 1)]
    assert documents[0].text == "Paris is the capital of France."
    build_store(tmp_path, tmp_path / "store", tokenizer, progress=False)
    store = BlockStore.open(tmp_path / "store")
    assert store.titles(range(3)) == ["Paris", "Rome", "Seine"]
    assert store.texts([2]) == ["The Seine flows through Paris. It has many bridges."]


# ---------------------------------------------------------------------------------------------- store


def test_store_round_trip(tokenizer, tmp_path):
    records = [
        {"title": f"Page {i}", "text": " ".join(["The river is old and famous."] * (i % 13 + 1))}
        for i in range(60)
    ]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    config = BuildConfig(max_block_tokens=40)
    expected = list(build_blocks(read_documents(corpus), tokenizer, config))
    build_store(corpus, tmp_path / "store", tokenizer, config, progress=False)
    store = BlockStore.open(tmp_path / "store")
    ids = range(len(store))
    assert len(store) == len(expected) > 60
    assert store.get(ids) == [
        Block(b.title, b.text, list(b.title_ids), list(b.token_ids), b.doc_id, list(b.sentence_starts))
        for b in expected
    ]
    assert store.token_ids(ids) == [ids_of(tokenizer, t) for t in store.texts(ids)]
    assert store.title_ids(ids) == [ids_of(tokenizer, t) for t in store.titles(ids)]
    assert store.tokenizer_fingerprint == tokenizer_fingerprint(tokenizer)
    assert store.source_fingerprint == source_fingerprint(corpus)
    assert store.special_ids == (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    assert store.manifest["token_dtype"] == "uint16" and store.manifest["max_block_tokens"] == 40
    assert store.load_tokenizer().vocab == tokenizer.vocab


def test_gather_matches_brute_force(tokenizer, tmp_path):
    blocks = synthetic_blocks(103)
    store = BlockStore.create(tmp_path / "s", blocks, tokenizer, batch_rows=7, segment_rows=30)
    assert len(store.manifest["segments"]) == 4 and len(store) == 103
    rng = np.random.default_rng(1)
    for ids in (rng.integers(0, 103, size=50), [102, 0, 0, 31, 30, 29], np.arange(103), [5]):
        ids = [int(i) for i in ids]
        assert store.get(ids) == [blocks[i] for i in ids]
        assert store.texts(ids) == [blocks[i].text for i in ids]
        assert store.token_ids(ids) == [blocks[i].token_ids for i in ids]
        padded, lengths = store.token_ids_array(ids, pad_id=-1)
        assert lengths.tolist() == [len(blocks[i].token_ids) for i in ids]
        for row, i in zip(padded, ids, strict=True):
            assert row.tolist() == blocks[i].token_ids + [-1] * (padded.shape[1] - len(blocks[i].token_ids))
    assert store.texts([]) == [] and store.token_ids_array([])[0].shape == (0, 0)
    assert store[42] == blocks[42]
    assert pickle.loads(pickle.dumps(store)).get([3, 99]) == [blocks[3], blocks[99]]
    with pytest.raises(IndexError, match="block id 103 is out of range"):
        store.texts([1, 103])
    batches = list(store.iter_batches(batch_size=16, columns=("text", "token_ids", "doc_id")))
    assert [len(b) for b in batches] == [16] * 6 + [7]
    assert sum((b.texts for b in batches), []) == [b.text for b in blocks]
    assert np.concatenate([b.doc_ids for b in batches]).tolist() == [b.doc_id for b in blocks]
    assert batches[1].ids.tolist() == list(range(16, 32)) and batches[0].titles is None


def test_open_is_lazy(tokenizer, tmp_path):
    n = 200_000
    started = time.perf_counter()
    store = BlockStore.create(
        tmp_path / "big",
        (Block("t", f"block {i} of the corpus", [7], [1000 + i % 20000] * 24, i, [0]) for i in range(n)),
        tokenizer,
    )
    build_seconds = time.perf_counter() - started
    del store

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss() if os.path.exists("/proc/self/statm") else 0
    started = time.perf_counter()
    store = BlockStore.open(tmp_path / "big")
    open_seconds = time.perf_counter() - started
    grown = (rss() - before) if before else 0
    assert len(store) == n and open_seconds < 0.5, open_seconds
    assert grown < 16 * 2**20, f"open grew RSS by {grown / 2**20:.1f} MiB"
    assert store.texts([n - 1, 0]) == [f"block {n - 1} of the corpus", "block 0 of the corpus"]
    assert build_seconds < 60


def test_crash_mid_create_leaves_no_store(tokenizer, tmp_path, monkeypatch):
    def exploding(n):
        yield from synthetic_blocks(n)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        BlockStore.create(tmp_path / "s", exploding(50), tokenizer, batch_rows=8)
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a complete block store"):
        BlockStore.open(tmp_path / "s")

    # A crash while writing the manifest (the last step) leaves nothing that opens either.
    def no_manifest(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(writer_module, "write_json_atomic", no_manifest)
    with pytest.raises(OSError, match="disk full"):
        BlockStore.create(tmp_path / "s", synthetic_blocks(20), tokenizer)
    with pytest.raises(FileNotFoundError):
        BlockStore.open(tmp_path / "s")

    # A directory with segments but no manifest (a hard kill mid-append) does not open as a store.
    monkeypatch.undo()
    BlockStore.create(tmp_path / "s", synthetic_blocks(20), tokenizer)
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="segment files but no manifest"):
        BlockStore.open(tmp_path / "s")


def test_create_refuses_to_clobber(tokenizer, tmp_path):
    BlockStore.create(tmp_path / "s", synthetic_blocks(5), tokenizer)
    with pytest.raises(FileExistsError, match="overwrite"):
        BlockStore.create(tmp_path / "s", synthetic_blocks(5), tokenizer)
    assert len(BlockStore.create(tmp_path / "s", synthetic_blocks(9), tokenizer, overwrite=True)) == 9
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a block store"):
        BlockStore.create(tmp_path / "other", synthetic_blocks(5), tokenizer, overwrite=True)
    with pytest.raises(ValueError, match="over max_block_tokens=10"):
        BlockStore.create(tmp_path / "t", [Block("", "x", [1] * 5, [1] * 5)], tokenizer, max_block_tokens=10)
    assert not (tmp_path / "t").exists()


def test_append_adds_a_segment(tokenizer, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"title": "Paris", "text": "Paris is old."}] * 3)
    second = write_jsonl(tmp_path / "b.jsonl", [{"title": "Rome", "text": "Rome is older."}] * 2)
    build_store(first, tmp_path / "s", tokenizer, progress=False)
    segment = tmp_path / "s" / "segment-00000.arrow"
    old_bytes, old_fingerprint = segment.read_bytes(), BlockStore.open(tmp_path / "s").fingerprint
    stats = build_store(second, tmp_path / "s", tokenizer, progress=False, append=True)
    store = BlockStore.open(tmp_path / "s")
    assert stats.blocks == 2 and len(store) == 5 and len(store.manifest["segments"]) == 2
    assert segment.read_bytes() == old_bytes and store.fingerprint != old_fingerprint
    assert store.titles(range(5)) == ["Paris"] * 3 + ["Rome"] * 2
    assert store.doc_ids(range(5)).tolist() == [0, 1, 2, 3, 4] and store.num_documents == 5
    assert [p["source_fingerprint"] for p in store.manifest["parts"]] == [
        source_fingerprint(first),
        source_fingerprint(second),
    ]
    with pytest.raises(ValueError, match="max_block_tokens"):
        build_store(
            second, tmp_path / "s", tokenizer, BuildConfig(max_block_tokens=128), progress=False, append=True
        )
    other = RealmTokenizerFast(vocab_file=toy_vocab(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match="was built with tokenizer"):
        store.append(synthetic_blocks(2), other)

    def exploding():
        yield from synthetic_blocks(3)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.append(exploding())
    assert len(BlockStore.open(tmp_path / "s")) == 5 and not (tmp_path / "s" / "segment-00002.arrow").exists()


def test_slow_and_fast_tokenizers_build_the_same_store(tmp_path):
    vocab = BERT_VOCAB if BERT_VOCAB.is_file() else toy_vocab(tmp_path / "vocab.txt")
    slow, fast = RealmTokenizer(vocab), RealmTokenizerFast(vocab_file=vocab)
    assert tokenizer_fingerprint(slow) == tokenizer_fingerprint(fast)
    text = "Café Zürich, naïve résumé! It's 3.5 km... The U.S. Army (1941–45) fought."
    documents = [Document("Zürich", text * 3, "mem", 1), Document("Paris", "Paris is old.", "mem", 2)]
    config = BuildConfig(max_block_tokens=32)
    assert list(build_blocks(documents, slow, config)) == list(build_blocks(documents, fast, config))


def test_large_vocab_uses_int32_ids(tmp_path):
    vocab = toy_vocab(tmp_path / "vocab.txt", [f"w{i}" for i in range(70_000)])
    tokenizer = RealmTokenizerFast(vocab_file=vocab)
    big = tokenizer.convert_tokens_to_ids("w69999")
    store = BlockStore.create(tmp_path / "s", [Block("w69999", "w69999", [big], [big, 5])], tokenizer)
    assert store.manifest["token_dtype"] == "int32" and store.token_ids([0]) == [[big, 5]] and big > 65535


# ---------------------------------------------------------------------------------------------- import


def test_import_block_records_needs_allow_pickle(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="allow_pickle=True"):
        import_block_records(BLOCK_RECORDS, tokenizer, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    store = import_block_records(BLOCK_RECORDS, tokenizer, tmp_path / "s", allow_pickle=True, progress=False)
    texts = json.loads((BLOCK_RECORDS.parent / "block_records.json").read_text(encoding="utf-8"))
    assert store.texts(range(len(store))) == texts and store.titles(range(len(store))) == [""] * len(texts)
    assert store.token_ids(range(len(store))) == [ids_of(tokenizer, t) for t in texts]
    assert store.doc_ids(range(len(texts))).tolist() == list(range(len(texts)))
    assert store.manifest["max_block_tokens"] is None and store.source_fingerprint == source_fingerprint(
        BLOCK_RECORDS
    )

    plain = tmp_path / "plain.npy"  # fixed-width bytes: no pickle, no flag, memory-mapped
    np.save(plain, np.array([t.encode() for t in texts], dtype=np.bytes_))
    again = import_block_records(plain, tokenizer, tmp_path / "s2", progress=False)
    assert again.texts(range(len(texts))) == texts and again.sentence_starts([0]) == [[0]]


def test_build_store_progress_goes_to_stderr(tokenizer, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"title": "Paris", "text": "Paris is old."}])
    build_store(corpus, tmp_path / "s", tokenizer, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "docs" in err


def test_worker_processes_write_the_same_store(tokenizer, tmp_path):
    records = [{"title": f"Page {i}", "text": "The river is old. " * (i % 50 + 1)} for i in range(300)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    config = BuildConfig(max_block_tokens=64, docs_per_batch=8)
    serial = build_store(corpus, tmp_path / "serial", tokenizer, config, progress=False)
    parallel = build_store(corpus, tmp_path / "parallel", tokenizer, config, progress=False, num_workers=2)
    assert parallel.to_dict() | {"seconds": 0} == serial.to_dict() | {"seconds": 0}
    assert (
        BlockStore.open(tmp_path / "parallel").fingerprint == BlockStore.open(tmp_path / "serial").fingerprint
    )

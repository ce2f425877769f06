"""REALM pre-training: the marginal loss, the step, refresh, resume, processes, and that it learns."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmEmbedder, RealmForOpenQA, RealmKnowledgeAugEncoder, RealmTokenizerFast
from realm.config import RealmConfig
from realm.corpus import Block, BlockStore
from realm.index import ExactIndex, open_index
from realm.index.build import IndexBuildConfig, build_index
from realm.objectives import IGNORE_INDEX, marginal_mlm_loss, marginal_mlm_loss_per_sequence
from realm.pretrain import PretrainConfig, RealmPretrainer, pretrain
from realm.pretrain.refresh import RefreshFiles
from realm.qa import search_blocks
from realm.train.state import LAST_DIR

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# -- a synthetic corpus: each invented fact is told by two blocks of different documents ------------

SYLLABLES = "zor quex blar vim trel osk pran gul fex dro kiv nam sul wep yad mox".split()
TELLINGS = (
    ("The capital of {E} is {A}.", "Travellers say {A} is the capital of {E}."),
    ("The river of {E} is the {A}.", "The {A} is the river that crosses {E}."),
    ("The founder of {E} was {A}.", "It was {A} who founded {E}."),
)

REMARKS = ("lies near the sea.", "has old walls.", "is known for its songs.", "is quiet in winter.",
           "has green hills.", "trades in salt.")  # fmt: skip


def invented(rng: random.Random, count: int, used: set[str]) -> list[str]:
    words = []
    while len(words) < count:
        # 16^2 two-syllable words, then three-syllable ones.
        syllables = 2 if len(used) < 200 else 3
        word = "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()
        if word not in used:
            used.add(word)
            words.append(word)
    return words


def fact_corpus(
    num_facts: int, seed: int = 0, num_answers: int | None = None, remarks: bool = False, same_telling: bool = False
) -> list[tuple[str, str]]:
    """(title, text) blocks: two per fact, in different documents, shuffled. Entities are unique; answers
    are drawn from a pool of `num_answers` (default: one per fact)."""
    rng = random.Random(seed)
    used: set[str] = set()
    entities, pool = invented(rng, num_facts, used), invented(rng, num_answers or num_facts, used)
    answers = [pool[i % len(pool)] for i in range(num_facts)]
    blocks = []
    for i, (e, a) in enumerate(zip(entities, answers, strict=True)):
        first, second = TELLINGS[i % len(TELLINGS)]
        second = first if same_telling else second
        # A second sentence about each block's subject gives the Inverse Cloze Task something to ask.
        blocks.append((e, first.format(E=e, A=a) + (f" {e} {rng.choice(REMARKS)}" if remarks else "")))
        blocks.append((a, second.format(E=e, A=a) + (f" {a} {rng.choice(REMARKS)}" if remarks else "")))
    rng.shuffle(blocks)
    return blocks


def tiny_config(vocab_size: int, **changes: object) -> RealmConfig:
    values = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        retriever_proj_size=32, max_position_embeddings=128, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0, num_block_records=0,
    )  # fmt: skip
    values.update(changes)
    return RealmConfig(**values)


def make_corpus(
    root: Path, num_facts: int = 24, seed: int = 0, init_std: float = 0.2, sentences_per_block: int = 1,
    num_answers: int | None = None, remarks: bool = False, same_telling: bool = False,
) -> dict[str, Path]:
    """A store of the fact blocks (`sentences_per_block` tellings each), tiny embedder and encoder
    checkpoints, and an index built by the embedder."""
    blocks = fact_corpus(num_facts, seed, num_answers, remarks, same_telling)
    if sentences_per_block > 1:
        groups = [blocks[i : i + sentences_per_block] for i in range(0, len(blocks), sentences_per_block)]
        blocks = [(group[0][0], " ".join(text for _, text in group)) for group in groups]
    words = sorted({w for title, text in blocks for w in (title + " " + text).lower().replace(".", " .").split()})
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    tokenizer = RealmTokenizerFast(vocab_file=str(root / "vocab.txt"))
    records = []
    for i, (title, text) in enumerate(blocks):
        ids, starts = [], []
        for sentence in text.split(". "):
            starts.append(len(ids))
            ids += tokenizer(sentence if sentence.endswith(".") else sentence + ".", add_special_tokens=False).input_ids
        title_ids = tokenizer(title, add_special_tokens=False).input_ids
        records.append(Block(title, text, title_ids, ids, doc_id=i, sentence_starts=starts))
    store = BlockStore.create(root / "store", records, tokenizer)
    config = tiny_config(len(tokenizer))
    torch.manual_seed(seed)
    embedder = RealmEmbedder(config.copy(initializer_range=init_std))
    embedder.config = config
    embedder.save_pretrained(root / "embedder")
    RealmKnowledgeAugEncoder(config).save_pretrained(root / "encoder")
    build_index(
        store, root / "embedder", root / "index", IndexBuildConfig(max_length=64),
        store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False,
    )  # fmt: skip
    return {"root": root, "store": root / "store", "embedder": root / "embedder", "encoder": root / "encoder",
            "index": root / "index"}  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("pretrain") / "corpus")


def pretrainer(corpus: dict[str, Path], shared: bool = True, **kwargs: object) -> RealmPretrainer:
    store = BlockStore.open(corpus["store"])
    query = RealmEmbedder.from_pretrained(corpus["embedder"])
    block = query if shared else RealmEmbedder.from_pretrained(corpus["embedder"])
    encoder = RealmKnowledgeAugEncoder.from_pretrained(corpus["encoder"])
    kwargs = {"num_candidates": 4, "block_seq_len": 64, "joint_seq_len": 96, **kwargs}
    model = RealmPretrainer(query, block, encoder, store, **kwargs)
    model.set_index(open_index(corpus["index"]))
    return model


def masked_batch(store: BlockStore, ids: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Sentences `[CLS] text [SEP]` of the given blocks with 1-3 random tokens masked."""
    rng = np.random.default_rng(seed)
    cls_id, sep_id, pad_id = store.special_ids
    mask_id = 4
    rows = [[cls_id, *t, sep_id] for t in store.token_ids(ids)]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention[r, : len(row)] = 1
        for p in rng.choice(np.arange(1, len(row) - 1), size=int(rng.integers(1, 4)), replace=False):
            labels[r, p] = row[p]
            input_ids[r, p] = mask_id
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "source_block": torch.tensor(ids)}  # fmt: skip


# -- the math --------------------------------------------------------------------------------------


def test_marginal_losses_equal_the_sums_written_out() -> None:
    g = torch.Generator().manual_seed(0)
    b, c, t, v = 2, 3, 4, 7
    logits, relevance = torch.randn(b, c, t, v, generator=g), torch.randn(b, c, generator=g)
    labels = torch.tensor([[3, IGNORE_INDEX, 1, IGNORE_INDEX], [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX]])
    mask = (labels != IGNORE_INDEX).long()
    p_block = relevance.softmax(-1)
    p_token = logits.softmax(-1)
    per_token, per_sequence, count = 0.0, 0.0, 0
    for i in range(b):
        sequence = 0.0
        for z in range(c):
            product = float(p_block[i, z])
            for j in range(t):
                if labels[i, j] != IGNORE_INDEX:
                    product *= float(p_token[i, z, j, labels[i, j]])
            sequence += product
        per_sequence += math.log(sequence)
        for j in range(t):
            if labels[i, j] != IGNORE_INDEX:
                count += 1
                per_token += math.log(sum(float(p_block[i, z] * p_token[i, z, j, labels[i, j]]) for z in range(c)))
    assert float(marginal_mlm_loss(logits, labels, relevance, mask)) == pytest.approx(-per_token / count, rel=1e-5)
    assert float(marginal_mlm_loss_per_sequence(logits, labels, relevance, mask)) == pytest.approx(
        -per_sequence / count, rel=1e-5
    )


def test_step_equals_the_encoder_loss_over_full_sequences_and_reaches_every_tower(corpus) -> None:
    model = pretrainer(corpus, shared=False)
    batch = masked_batch(model.store, [0, 5, 9])
    out = model(**batch)
    # The same numbers from the knowledge-augmented encoder reading every position (the port's way).
    candidates = out.candidate_ids
    sentences = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    joint = model.joint_inputs(sentences, candidates, torch.device("cpu"))
    with torch.no_grad():
        query = model.query_embedder(batch["input_ids"], attention_mask=batch["attention_mask"]).projected_score
        relevance = torch.einsum("bd,bcd->bc", query, model.embed_candidates(candidates, torch.device("cpu")))
    t = joint["input_ids"].shape[-1]
    labels = torch.full((3, t), IGNORE_INDEX)
    labels[:, : batch["labels"].shape[1]] = batch["labels"]
    with torch.no_grad():
        reference = model.encoder(**joint, relevance_score=relevance, labels=labels, mlm_mask=labels != IGNORE_INDEX)
    assert float(out.loss.detach()) == pytest.approx(float(reference.loss), rel=1e-5)
    out.loss.backward()
    for tower in (model.query_embedder, model.block_embedder, model.encoder):
        grads = [p.grad for p in tower.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_candidates_put_the_null_block_first_and_never_the_source(corpus) -> None:
    model = pretrainer(corpus, num_candidates=5)
    store = model.store
    embeddings = np.load(corpus["index"] / "embeddings.npy")
    for start in range(0, len(store), 8):
        ids = list(range(start, min(start + 8, len(store))))
        # Queries equal to the source's own embedding: the source is the best hit and must be dropped.
        candidates, _ = search_blocks(model.index, torch.from_numpy(embeddings[ids]), 5, exclude=ids, null_block=True)
        assert candidates.shape == (len(ids), 5)
        assert (candidates[:, 0] == -1).all() and (candidates[:, 1:] >= 0).all()
        for row, source in zip(candidates.tolist(), ids, strict=True):
            assert source not in row and len(set(row)) == 5


def test_with_only_the_null_block_the_loss_is_plain_mlm(corpus) -> None:
    model = pretrainer(corpus, num_candidates=1)
    batch = masked_batch(model.store, [1, 2, 3, 4], seed=3)
    out = model(**batch)
    inputs = batch["input_ids"]
    lengths = batch["attention_mask"].sum(1)
    ids = torch.cat([inputs, torch.zeros(4, 1, dtype=torch.long)], dim=1)  # room for the extra [SEP]
    types = torch.zeros_like(ids)
    for r, n in enumerate(lengths.tolist()):
        ids[r, n] = model.sep_id  # `[CLS] sentence [SEP] [SEP]`: the null block has no text
        types[r, n] = 1
    attention = (torch.arange(ids.shape[1])[None] <= lengths[:, None]).long()
    logits = model.encoder(ids, attention_mask=attention, token_type_ids=types).logits
    labels = torch.cat([batch["labels"], torch.full((4, 1), IGNORE_INDEX)], dim=1)
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert float(out.loss) == pytest.approx(float(plain), rel=1e-5)
    assert float(out.retrieval_utility) == pytest.approx(0.0, abs=1e-6)


def test_refuses_a_mismatched_or_stale_index(corpus, tmp_path) -> None:
    model = pretrainer(corpus)
    with pytest.raises(ValueError, match="another corpus"):
        model.set_index(ExactIndex(torch.zeros(3, 32)))
    other = make_corpus(tmp_path / "other", num_facts=6, seed=1)
    files = RefreshFiles(tmp_path / "run")
    store = BlockStore.open(corpus["store"])
    files.save_snapshot(4, RealmEmbedder.from_pretrained(corpus["embedder"]))
    published = files.build(4, store, IndexBuildConfig(max_length=64))
    assert files.latest() == published
    files.open(published, store)
    with pytest.raises(ValueError, match="stale"):
        files.open(published, store, current_step=6)
    with pytest.raises(ValueError, match="different block store|blocks but the store"):
        files.open(published, BlockStore.open(other["store"]))
    # An index that its snapshot did not build is refused (the embedder fingerprint differs).
    files.save_snapshot(4, RealmEmbedder.from_pretrained(other["embedder"]))
    with pytest.raises(ValueError, match="different embedder"):
        files.open(published, store)


# -- the loop --------------------------------------------------------------------------------------


def run_config(corpus: dict[str, Path], out: Path, **changes: object) -> PretrainConfig:
    values = dict(
        embedder=str(corpus["embedder"]), encoder=str(corpus["encoder"]), store=str(corpus["store"]),
        output_dir=str(out), num_candidates=4, query_seq_len=32, block_seq_len=64, joint_seq_len=96, batch_size=4,
        lr=1e-3, weight_decay=0.01, warmup_steps=2, num_steps=6, refresh_every=3, index_chunk_size=16,
        index_batch_size=16, save_every=0, log_every=1, progress=False,
    )  # fmt: skip
    values.update(changes)
    return PretrainConfig(**values)


def train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_sync_refresh_swaps_indexes_and_logs_staleness(corpus, tmp_path) -> None:
    result = pretrain(run_config(corpus, tmp_path / "run", num_steps=7))
    rows = train_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 8))
    # The index of step 0 (built at the start), then refreshes at steps 3 and 6.
    assert [r["index_step"] for r in rows] == [0, 0, 3, 3, 3, 6, 6]
    assert [r["staleness"] for r in rows] == [1, 2, 0, 1, 2, 0, 1]
    for row in rows:
        assert math.isfinite(row["loss"]) and 0 <= row["mlm_accuracy"] <= 1 and row["masked_tokens"] > 0
        assert row["examples"] >= 4 and isinstance(row["skipped"], dict)
    files = RefreshFiles(tmp_path / "run")
    assert files.latest().step == 6
    # The refreshed index is the corpus embedded by the document tower of step 6.
    snapshot = RealmEmbedder.from_pretrained(tmp_path / "run" / "snapshots" / "step-00000006")
    store = BlockStore.open(corpus["store"])
    rebuilt = tmp_path / "rebuilt"
    snapshot.save_pretrained(tmp_path / "snap")
    build_index(store, tmp_path / "snap", rebuilt, IndexBuildConfig(chunk_size=16, batch_size=16, max_length=64),
                store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)  # fmt: skip
    assert np.array_equal(np.load(rebuilt / "embeddings.npy"), np.load(files.latest().index / "embeddings.npy"))
    # Older snapshots and indexes were pruned.
    assert sorted(p.name for p in (tmp_path / "run" / "index").iterdir() if p.is_dir()) == ["step-00000006"]
    # The result loads as the three model classes.
    final = result.final_dir
    RealmEmbedder.from_pretrained(final / "embedder")
    RealmKnowledgeAugEncoder.from_pretrained(final / "encoder")
    model = RealmForOpenQA.from_pretrained(final / "openqa")
    trained = RealmKnowledgeAugEncoder.from_pretrained(final / "encoder")
    torch.testing.assert_close(
        model.reader.realm.encoder.layer[0].attention.self.query.weight,
        trained.realm.encoder.layer[0].attention.self.query.weight,
    )


def test_masked_accuracy_is_the_step_s_counts_over_all_batches(corpus) -> None:
    """`realm.pretrain.evaluate.masked_accuracy`: the eval-mode step's correct / masked-token counts summed over
    batches (so independent of the batch size), the source block kept out unless told otherwise."""
    from realm.pretrain.evaluate import masked_accuracy
    from realm.pretrain.examples import MaskedExample

    model = pretrainer(corpus).train()
    store = model.store
    batch = masked_batch(store, list(range(7)), seed=3)
    examples = [MaskedExample(ids[mask.bool()].tolist(), lab[mask.bool()].tolist(), int(src))
                for ids, mask, lab, src in zip(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                               batch["source_block"], strict=True)]  # fmt: skip
    by_two = masked_accuracy(model, examples, batch_size=2)
    whole = masked_accuracy(model, examples, batch_size=7)
    assert model.training  # the mode is given back
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    assert whole.masked_tokens == by_two.masked_tokens == int(batch["labels"].ne(IGNORE_INDEX).sum())
    assert whole.accuracy == pytest.approx(float(out.correct / out.masked_tokens))
    assert whole.null_accuracy == pytest.approx(float(out.null_correct / out.masked_tokens))
    assert whole.retrieval_utility == pytest.approx(float(out.retrieval_utility), abs=1e-5)
    for name in ("accuracy", "null_accuracy", "retrieval_utility"):
        assert getattr(by_two, name) == pytest.approx(getattr(whole, name), abs=1e-5)
    # Without the exclusion (sentences from another corpus) the step sees source_block = -1.
    with torch.no_grad():
        free = model(**{**batch, "source_block": torch.full_like(batch["source_block"], -1)})
    kept = masked_accuracy(model, examples, batch_size=7, exclude_source=False)
    assert kept.accuracy == pytest.approx(float(free.correct / free.masked_tokens))


def test_block_recall_matches_ranks_computed_by_hand() -> None:
    from realm.pretrain.evaluate import block_recall

    torch.manual_seed(0)
    config = RealmConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                         retriever_proj_size=8, max_position_embeddings=32)  # fmt: skip
    embedder = RealmEmbedder(config).eval()
    blocks = torch.randn(12, 8)
    queries = [[2, 5 + i, 7 + (i * 3) % 20, 3][: 3 + i % 2] for i in range(7)]  # lengths 3 and 4: padded batches
    gold = [0, 3, 5, 7, 11, 2, 9]
    with torch.no_grad():  # each query alone, unpadded, and its gold block's rank among the 12 by inner product
        ranks = []
        for q, g in zip(queries, gold, strict=True):
            scores = blocks @ embedder(torch.tensor([q])).projected_score[0]  # [12]
            ranks.append(int((scores > scores[g]).sum()))
    expected = {f"recall@{k}": sum(r < k for r in ranks) / len(queries) for k in (1, 2, 5)}
    assert 0 < expected["recall@2"] < 1  # the check can tell hits from misses
    got = block_recall(embedder, ExactIndex(blocks), queries, gold, pad_id=0, ks=(1, 2, 5), batch_size=3)
    assert got == pytest.approx(expected)
    with pytest.raises(ValueError, match="one gold block each"):
        block_recall(embedder, ExactIndex(blocks), queries, gold[:-1], pad_id=0)


def test_frozen_prefixes_do_not_train_and_unknown_ones_are_refused(corpus, tmp_path) -> None:
    frozen = "query_embedder.realm.,encoder.realm.embeddings.,encoder.realm.encoder.layer.0."
    result = pretrain(run_config(corpus, tmp_path / "run", num_steps=2, refresh="never", freeze=frozen))
    before = {**{f"embedder.{k}": v for k, v in RealmEmbedder.from_pretrained(corpus["embedder"]).state_dict().items()},
              **{f"encoder.{k}": v for k, v in RealmKnowledgeAugEncoder.from_pretrained(corpus["encoder"]).state_dict().items()}}  # fmt: skip
    after = {**{f"embedder.{k}": v for k, v in RealmEmbedder.from_pretrained(result.final_dir / "embedder").state_dict().items()},
             **{f"encoder.{k}": v for k, v in RealmKnowledgeAugEncoder.from_pretrained(result.final_dir / "encoder").state_dict().items()}}  # fmt: skip
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # The shared tower's trunk (embedder.realm.) is frozen under its query_embedder. name: only its projection moves.
    assert moved and all(k.startswith(("embedder.cls.", "encoder.realm.encoder.layer.1.", "encoder.cls.")) for k in moved), moved
    assert any(k.startswith("embedder.cls.") for k in moved) and any(k.startswith("encoder.realm.encoder.layer.1.") for k in moved)
    with pytest.raises(ValueError, match=r"freeze prefixes \['encoder.nope.'\] match no parameter"):
        pretrain(run_config(corpus, tmp_path / "bad", num_steps=1, refresh="never", freeze="encoder.realm.,encoder.nope."))


def test_dev_recall_at_each_index_equals_brute_force(corpus, tmp_path) -> None:
    """With `dev_questions`, the first log row after each new index carries the query tower's gold-block
    recall@k against it; at step 0 it is the initial embedder's, checked against top-k of the full product."""
    store = BlockStore.open(corpus["store"])
    titles, texts = store.titles(range(len(store))), store.texts(range(len(store)))
    dev = tmp_path / "dev.jsonl"
    rows = [{"question": text, "title": title} for title, text in zip(titles[:10], texts[:10], strict=True)]
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"question": "x", "title": "no such block"}]))
    pretrain(run_config(corpus, tmp_path / "run", num_steps=4, refresh_every=2, dev_questions=str(dev), lr=1e-12))
    logged = train_rows(tmp_path / "run")
    assert [("dev_recall@5" in r) for r in logged] == [True, True, False, False]  # index 0 and the refresh at 2
    assert all(r["dev_questions"] == 10 for r in logged[:2])
    # Brute force: the embedder embeds each question as [CLS] q [SEP] and each block as the index does.
    embedder = RealmEmbedder.from_pretrained(corpus["embedder"]).eval()
    tokenizer = store.load_tokenizer()
    with torch.no_grad():
        blocks = torch.from_numpy(np.load(corpus["index"] / "embeddings.npy")).float()  # [N, D]
        hits = {1: 0, 5: 0, 20: 0}
        for i, r in enumerate(rows):
            ids = torch.tensor([tokenizer(r["question"], truncation=True, max_length=32)["input_ids"]])
            query = embedder(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)).projected_score
            order = (query @ blocks.T)[0].argsort(descending=True).tolist()
            for k in hits:
                hits[k] += i in order[:k]
    assert logged[0]["dev_recall@1"] == pytest.approx(hits[1] / 10)
    assert logged[0]["dev_recall@5"] == pytest.approx(hits[5] / 10)
    assert logged[0]["dev_recall@20"] == pytest.approx(hits[20] / 10)
    # lr ~ 0: the towers do not move, so the refreshed index gives the same recall.
    assert logged[1]["dev_recall@5"] == logged[0]["dev_recall@5"]


def test_ict_warm_start_trains_the_shared_embedder(corpus, tmp_path) -> None:
    paragraphs = make_corpus(tmp_path / "paragraphs", num_facts=12, sentences_per_block=3)
    config = run_config(paragraphs, tmp_path / "ict", objective="ict", encoder="", batch_size=8, num_steps=4, lr=1e-3)
    result = pretrain(config)
    rows = train_rows(tmp_path / "ict")
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows)
    trained = RealmEmbedder.from_pretrained(result.final_dir / "embedder")
    before = RealmEmbedder.from_pretrained(paragraphs["embedder"])
    assert not torch.equal(trained.cls.dense.weight, before.cls.dense.weight)
    assert not (tmp_path / "ict" / "index").exists()  # ICT needs no index


def test_config_rejects_bad_values_naming_the_key(corpus, tmp_path) -> None:
    with pytest.raises(ValueError, match="refresh must be one of"):
        run_config(corpus, tmp_path, refresh="sometimes")
    with pytest.raises(ValueError, match="encoder is required"):
        run_config(corpus, tmp_path, encoder="")
    with pytest.raises(ValueError, match=r"unknown pretrain config key 'num_candidate'; did you mean 'num_candidates'"):
        PretrainConfig.load(None, ["num_candidate=3"])


# -- processes -------------------------------------------------------------------------------------

LOSS_KEYS = ("loss", "retrieval_utility", "mlm_accuracy", "grad_norm", "lr")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(corpus, tmp_path) -> None:
    from tests.test_finetune import cli_overrides, finish, run_cli

    common = dict(num_steps=5, refresh_every=2, save_every=2)
    one = run_config(corpus, tmp_path / "one", batch_size=4, **common)
    two = run_config(corpus, tmp_path / "two", batch_size=1, grad_accumulation=2, **common)
    processes = [run_cli(["pretrain", *cli_overrides(one)]), run_cli(["pretrain", *cli_overrides(two)], nproc=2)]
    for process in processes:
        finish(process)
    expected, got = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert len(expected) == len(got) == 5
    for a, b in zip(expected, got, strict=True):
        assert a["index_step"] == b["index_step"] and a["masked_tokens"] == b["masked_tokens"]
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (key, a, b)
    # Parameters after 5 Adam steps: Adam divides by sqrt(v), so summation-order differences (1e-7
    # relative) in near-zero gradients of rare tokens' embeddings become ~3e-5 differences in the update.
    for name in ("embedder", "encoder"):
        a = RealmEmbedder if name == "embedder" else RealmKnowledgeAugEncoder
        for p, q in zip(a.from_pretrained(tmp_path / "one" / "final" / name).parameters(),
                        a.from_pretrained(tmp_path / "two" / "final" / name).parameters(), strict=True):  # fmt: skip
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_losses(corpus, tmp_path) -> None:
    from tests.test_finetune import cli_overrides, finish, run_cli

    straight = run_config(corpus, tmp_path / "straight", num_steps=40, save_every=1, refresh_every=5)
    killed = run_config(corpus, tmp_path / "killed", num_steps=40, save_every=1, refresh_every=5)
    reference = run_cli(["pretrain", *cli_overrides(straight)])
    victim = run_cli(["pretrain", *cli_overrides(killed)], start_new_session=True)
    state = tmp_path / "killed" / LAST_DIR / "trainer_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text() or "{}").get("step", 0) >= 7:
            break
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate()
    finish(reference)
    stopped_at = json.loads(state.read_text())["step"] if state.is_file() else 0
    assert 7 <= stopped_at < 40, "the run finished before it could be killed"
    finish(run_cli(["pretrain", "--resume", *cli_overrides(killed)]))
    expected, got = train_rows(tmp_path / "straight"), train_rows(tmp_path / "killed")
    assert [r["step"] for r in got] == list(range(1, 41))
    for a, b in zip(expected, got, strict=True):
        assert a["index_step"] == b["index_step"]
        for key in LOSS_KEYS:
            assert b[key] == a[key], (key, a, b)


@pytest.mark.slow
def test_async_refresh_swaps_in_the_worker_s_indexes(corpus, tmp_path) -> None:
    config = run_config(corpus, tmp_path / "async", refresh="async", refresh_every=10, num_steps=400, log_every=10,
                        refresh_threads=1)  # fmt: skip
    pretrain(config)
    rows = train_rows(tmp_path / "async")
    swaps = sorted({r["index_step"] for r in rows} - {0})
    assert swaps, "the asynchronous worker published no index while 400 steps ran"
    assert all(s % 10 == 0 for s in swaps) and all(r["staleness"] >= 0 for r in rows)
    log = (tmp_path / "async" / "refresh.log").read_text()
    assert "embedding the corpus with the snapshot of step" in log
    assert (tmp_path / "async" / "TRAINING_DONE").is_file()


@pytest.mark.slow
def test_retrieval_becomes_useful_on_a_corpus_whose_facts_are_in_other_blocks(tmp_path) -> None:
    """Every fact is told by two blocks of different documents; a masked sentence's own block is removed,
    so its masked entity is only in the other one. Retrieval utility (log-likelihood gain over the null
    block) starts at 0 and becomes clearly positive: the encoder learns to read, the retriever to find.

    What it shows: within one REALM run, the marginal over retrieved blocks predicts the masked entities
    better than the same model reading the null block alone (passes: 650 s on the shared 2-core machine,
    November 2026). What it does not show: that REALM beats a model trained without retrieval. A
    null-block-only model trained the same way memorises these 96 training sentences (0.68 accuracy, the
    README) faster than REALM learns to retrieve and read, and there are no held-out sentences here; the
    comparison against that baseline on held-out text is benchmarks/pretrain_wiki.py's."""
    corpus = make_corpus(tmp_path / "facts", num_facts=48)
    config = run_config(corpus, tmp_path / "run", num_steps=1200, batch_size=8, lr=5e-4, warmup_steps=10,
                        refresh_every=100, log_every=100, index_chunk_size=128, index_batch_size=64)  # fmt: skip
    pretrain(config)
    rows = train_rows(tmp_path / "run")
    utility = [r["retrieval_utility"] for r in rows]
    assert abs(utility[0]) < 0.02, utility
    assert np.mean(utility[-3:]) > 0.1, utility
    assert all(r["mlm_accuracy"] >= r["null_mlm_accuracy"] for r in rows[-3:]), rows[-3:]

"""Benchmark REALM pre-training (`realm.pretrain.pretrain`) on a small model on CPU: steps/s and where a step's
time goes, plus the speed-up of computing the MLM head only at the masked positions.

1. The loop: `pretrain(config)` with sync refresh on a synthetic corpus (seeded): ~2,000 blocks of 2-4
   sentences about invented capitalised entities, with years and numbers, so that salient-span masking finds
   spans. The model is BERT-shaped but small (4 layers, hidden 256, 4 heads, intermediate 1024, projection
   128, vocab padded to 8,192 with [unusedN] entries so that the MLM head costs what a real one does). From
   `metrics.jsonl` (one row per step) it reports steps/s after the warm-up steps and the share of step time
   in data (masking, collation), search, re-embedding (the document tower over the candidates), the
   encoder forward, the rest of the forward (query tower, joint inputs, loss), backward, optimizer and
   refresh (the mean refresh time / refresh_every, i.e. amortised).
2. The reference, in the same run: the same step computed the transformers-port way, i.e.
   `RealmKnowledgeAugEncoder(**joint_inputs, relevance_score=..., labels=..., mlm_mask=...)`, whose MLM head
   projects EVERY position of every (sentence, block) pair to the vocabulary (the port's only way), against
   our `RealmPretrainer` (the head only at the masked positions), both forward + backward on the same
   batches (the loop's first batches) and the same initial weights. The two losses are checked to agree
   (1e-5) before anything is timed; the rounds alternate the two so that load hits both alike.

    python benchmarks/bench_pretrain.py                 # 80 steps, ~6 min on 2 cores
    python benchmarks/bench_pretrain.py --quick         # tiny sizes, seconds (the smoke test)
    python benchmarks/bench_pretrain.py --steps 100 --rounds 7 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from realm import RealmConfig, RealmEmbedder, RealmKnowledgeAugEncoder, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.index import open_index
from realm.index.build import IndexBuildConfig, build_index
from realm.objectives import IGNORE_INDEX
from realm.pretrain import PretrainConfig, RealmPretrainer, pretrain
from realm.pretrain.examples import ExampleGenerator, collate_masked
from realm.pretrain.masking import MaskingConfig
from realm.qa import search_blocks

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SYLLABLES = "zor quex blar vim trel osk pran gul fex dro kiv nam sul wep yad mox".split()
FILLER_SYLLABLES = "ba te ri lo mu ne si ka do pe fu gi ha jo".split()


@dataclass(frozen=True)
class Sizes:
    blocks: int = 2000
    filler_words: int = 600
    sentence_words: tuple[int, int] = (14, 30)
    vocab_size: int = 8192
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    proj: int = 128
    steps: int = 80
    warmup: int = 3
    refresh_every: int = 20
    num_candidates: int = 8
    batch_size: int = 8
    query_seq_len: int = 96
    block_seq_len: int = 128
    joint_seq_len: int = 224
    rounds: int = 7


QUICK = Sizes(blocks=150, filler_words=100, sentence_words=(6, 12), vocab_size=2048, layers=1, hidden=32, heads=2,
              intermediate=64, proj=16, steps=8, warmup=2, refresh_every=4, num_candidates=4, batch_size=4,
              query_seq_len=32, block_seq_len=48, joint_seq_len=80, rounds=2)  # fmt: skip


def sentence(rng: random.Random, entities: list[str], filler: list[str], words: tuple[int, int]) -> str:
    """One sentence: an entity, filler, a year, another entity, filler, a number."""
    n = rng.randint(*words)
    parts = [rng.choice(entities)] + rng.choices(filler, k=n // 3) + ["in", str(rng.randint(1500, 2020))]
    parts += (
        rng.choices(filler, k=n // 3)
        + ["with", rng.choice(entities)]
        + rng.choices(filler, k=n - 2 * (n // 3))
    )
    parts += ["of", str(rng.randint(2, 999))]
    return " ".join(parts) + "."


def make_corpus(root: Path, sizes: Sizes, seed: int = 0) -> tuple[RealmTokenizerFast, BlockStore]:
    rng = random.Random(seed)
    used: set[str] = set()
    entities: list[str] = []
    while len(entities) < sizes.blocks:
        word = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if word not in used:
            used.add(word)
            # Half the entities have two-word names: salient spans of 1-2 wordpieces.
            entities.append(word if rng.random() < 0.5 else f"{word} {rng.choice(SYLLABLES).capitalize()}")
    filler = sorted(
        {
            "".join(rng.choice(FILLER_SYLLABLES) for _ in range(rng.randint(2, 3)))
            for _ in range(sizes.filler_words)
        }
    )
    texts = []
    for _ in range(sizes.blocks):
        texts.append(
            " ".join(sentence(rng, entities, filler, sizes.sentence_words) for _ in range(rng.randint(2, 4)))
        )
    words = {w.lower() for e in entities for w in e.split()} | set(filler) | {"in", "with", "of", "."}
    words |= {str(y) for y in range(1500, 2021)} | {str(n) for n in range(2, 1000)}
    vocab = SPECIALS + sorted(words)
    if len(vocab) > sizes.vocab_size:
        raise ValueError(f"the corpus has {len(vocab)} tokens, more than vocab_size={sizes.vocab_size}")
    vocab += [f"[unused{i}]" for i in range(sizes.vocab_size - len(vocab))]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = RealmTokenizerFast(vocab_file=str(root / "vocab.txt"))
    records = []
    for i, text in enumerate(texts):
        ids, starts = [], []
        for s in text.split(". "):
            starts.append(len(ids))
            ids += tokenizer(s if s.endswith(".") else s + ".", add_special_tokens=False).input_ids
        title = entities[i]
        records.append(Block(title, text, tokenizer(title, add_special_tokens=False).input_ids, ids, doc_id=i,
                             sentence_starts=starts))  # fmt: skip
    unk = sum(r.token_ids.count(tokenizer.unk_token_id) for r in records[:50])
    assert unk == 0, f"{unk} [UNK] in the first blocks: the vocabulary misses corpus words"
    return tokenizer, BlockStore.create(root / "store", records, tokenizer)


def make_model(root: Path, sizes: Sizes, vocab_size: int) -> RealmConfig:
    config = RealmConfig(
        vocab_size=vocab_size, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads, intermediate_size=sizes.intermediate, retriever_proj_size=sizes.proj,
        max_position_embeddings=max(256, sizes.joint_seq_len), pad_token_id=0, num_block_records=0,
    )  # fmt: skip
    torch.manual_seed(0)
    RealmEmbedder(config).save_pretrained(root / "embedder")
    RealmKnowledgeAugEncoder(config).save_pretrained(root / "encoder")
    return config


# -- the loop -----------------------------------------------------------------------------------------

PARTS = (
    ("data", "data (masking, collation)"),
    ("search", "search (index top-k)"),
    ("reembed", "re-embedding (document tower)"),
    ("encoder", "encoder forward"),
    ("forward_rest", "rest of forward (query tower, joint inputs, loss)"),
    ("backward", "backward"),
    ("optimizer", "optimizer (clip + AdamW)"),
    ("refresh", "refresh (amortised)"),
    ("other", "other (loop bookkeeping, logging)"),
)


def loop_breakdown(rows: list[dict], sizes: Sizes, num_steps: int) -> tuple[dict[str, float], float, int]:
    """Mean seconds per step and part over the steps after the warm-up, refresh amortised as the mean
    refresh time / refresh_every; also the raw steps/s over those steps and how many refreshes they held."""
    measured = [r for r in rows if r["step"] > sizes.warmup]
    refreshes = [
        r["time_refresh"] for r in measured if r["step"] % sizes.refresh_every == 0 and r["step"] < num_steps
    ]
    if not refreshes:
        raise SystemExit("no refresh after the warm-up steps: raise --steps")
    means: dict[str, float] = {}
    for key in ("data", "search", "reembed", "encoder", "backward", "optimizer"):
        means[key] = statistics.fmean(r.get(f"time_{key}", 0.0) for r in measured)
    means["forward_rest"] = statistics.fmean(
        r["time_forward"] - r["time_search"] - r["time_reembed"] - r["time_encoder"] for r in measured
    )
    parts = ("data", "forward", "backward", "optimizer", "refresh")
    means["other"] = statistics.fmean(
        1 / r["steps_per_s"] - sum(r.get(f"time_{p}", 0.0) for p in parts) for r in measured
    )
    means["refresh"] = statistics.fmean(refreshes) / sizes.refresh_every
    raw_steps_per_s = len(measured) / sum(1 / r["steps_per_s"] for r in measured)
    return means, raw_steps_per_s, len(refreshes)


# -- the reference ------------------------------------------------------------------------------------


def port_style_step(model: RealmPretrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Our step's math with the knowledge-augmented encoder reading (and projecting) every position."""
    device = batch["input_ids"].device
    ids, attention = batch["input_ids"], batch["attention_mask"]
    query = model.query_embedder(
        ids, attention_mask=attention, token_type_ids=torch.zeros_like(ids)
    ).projected_score
    candidates, _ = search_blocks(
        model.index, query, model.num_candidates, exclude=batch["source_block"].tolist(), null_block=True
    )
    blocks = model.embed_candidates(candidates, device)
    relevance = torch.einsum("bd,bcd->bc", query.float(), blocks.float())
    sentences = [row[m.bool()].tolist() for row, m in zip(ids, attention, strict=True)]
    joint = model.joint_inputs(sentences, candidates, device)
    labels = torch.full((ids.shape[0], joint["input_ids"].shape[-1]), IGNORE_INDEX, dtype=torch.long)
    labels[:, : batch["labels"].shape[1]] = batch["labels"]
    out = model.encoder(
        **joint, relevance_score=relevance, labels=labels, mlm_mask=(labels != IGNORE_INDEX).long()
    )
    return out.loss


def ours_step(model: RealmPretrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def reference(root: Path, sizes: Sizes, tokenizer: RealmTokenizerFast) -> dict[str, object]:
    store = BlockStore.open(root / "store")
    embedder = RealmEmbedder.from_pretrained(root / "embedder")
    encoder = RealmKnowledgeAugEncoder.from_pretrained(root / "encoder")
    model = RealmPretrainer(embedder, embedder, encoder, store, num_candidates=sizes.num_candidates,
                            block_seq_len=sizes.block_seq_len, joint_seq_len=sizes.joint_seq_len)  # fmt: skip
    model.set_index(open_index(root / "index"))
    masking = MaskingConfig(strategy="salient", query_seq_len=sizes.query_seq_len, max_masks=10)
    generator = ExampleGenerator(store, tokenizer, masking, seed=0)
    pad_id = store.special_ids[2]
    b = sizes.batch_size
    batches = [collate_masked([generator.example(i) for i in range(r * b, (r + 1) * b)], pad_id)
               for r in range(sizes.rounds)]  # fmt: skip

    # Agreement (eval mode: no dropout), on every batch.
    model.eval()
    worst = 0.0
    first = (0.0, 0.0)
    for batch in batches:
        with torch.no_grad():
            ours, port = float(ours_step(model, batch)), float(port_style_step(model, batch))
        if batch is batches[0]:
            first = (ours, port)
        worst = max(worst, abs(ours - port) / max(1.0, abs(port)))
    if worst > 1e-5:
        raise SystemExit(
            f"the losses disagree: max relative difference {worst:.2e} > 1e-5 (first batch {first})"
        )

    # Timing (train mode, as in the loop): forward + backward, the two taking turns; one warm-up round.
    model.train()
    times: dict[str, list[float]] = {"ours": [], "port-style": []}
    steps = {"ours": ours_step, "port-style": port_style_step}
    for r in range(sizes.rounds + 1):
        batch = batches[max(r - 1, 0)]
        order = ["ours", "port-style"] if r % 2 else ["port-style", "ours"]
        for name in order:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            steps[name](model, batch).backward()
            elapsed = time.perf_counter() - start
            if r > 0:
                times[name].append(elapsed)
    masked = [int((x["labels"] != IGNORE_INDEX).sum()) for x in batches]
    return {"times": times, "first": first, "worst": worst, "masked": masked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (a smoke test; numbers mean nothing)"
    )
    parser.add_argument(
        "--steps", type=int, help=f"pre-training steps (default {Sizes.steps}, quick {QUICK.steps})"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds of the reference comparison (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    changes = {k: v for k, v in (("steps", args.steps), ("rounds", args.rounds)) if v is not None}
    sizes = Sizes(**{**sizes.__dict__, **changes})
    torch.set_num_threads(args.threads)

    command = "python benchmarks/bench_pretrain.py" + (
        "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    )
    print("# realm pretrain benchmark: the REALM step and loop (sync refresh), small model, CPU")
    print()
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"{platform.machine()}, {os.cpu_count()} cores (shared with other processes), torch threads "
          f"{torch.get_num_threads()}; python {platform.python_version()}, torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        tokenizer, store = make_corpus(root, sizes)
        lengths = [len(store.token_ids([i])[0]) for i in range(len(store))]
        make_model(root, sizes, len(tokenizer))
        build_index(store, root / "embedder", root / "index",
                    IndexBuildConfig(max_length=sizes.block_seq_len, batch_size=64),
                    store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)  # fmt: skip
        print(f"corpus: {len(store):,} synthetic blocks of 2-4 sentences, {min(lengths)}-{max(lengths)} wordpieces "
              f"(mean {statistics.fmean(lengths):.0f}); vocab {len(tokenizer):,} (corpus words + [unusedN] padding); "
              f"set-up {time.perf_counter() - started:.1f} s")  # fmt: skip
        print(f"model: {sizes.layers} layers, hidden {sizes.hidden}, {sizes.heads} heads, intermediate "
              f"{sizes.intermediate}, projection {sizes.proj}, dropout 0.1; shared query/document tower")  # fmt: skip
        print(f"step: batch {sizes.batch_size} sentences, {sizes.num_candidates} candidates (null block first), "
              f"query_seq_len {sizes.query_seq_len}, block_seq_len {sizes.block_seq_len}, joint_seq_len "
              f"{sizes.joint_seq_len}, salient-span masking, exact index; sync refresh every {sizes.refresh_every} "
              f"steps")  # fmt: skip
        print()

        config = PretrainConfig(
            embedder=str(root / "embedder"), encoder=str(root / "encoder"), store=str(root / "store"),
            index=str(root / "index"), output_dir=str(root / "run"), num_candidates=sizes.num_candidates,
            query_seq_len=sizes.query_seq_len, block_seq_len=sizes.block_seq_len, joint_seq_len=sizes.joint_seq_len,
            batch_size=sizes.batch_size, num_steps=sizes.steps, warmup_steps=10, refresh="sync",
            refresh_every=sizes.refresh_every, index_batch_size=64, save_every=0, log_every=1, progress=False,
        )  # fmt: skip
        started = time.perf_counter()
        pretrain(config)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["kind"] == "train"]
        means, raw, refreshes = loop_breakdown(rows, sizes, sizes.steps)
        total = sum(means.values())
        measured = sizes.steps - sizes.warmup
        print(f"## the loop: pretrain(), {sizes.steps} steps ({wall:.0f} s wall including the final save), "
              f"measured over steps {sizes.warmup + 1}-{sizes.steps} ({measured} steps, {refreshes} refreshes)")  # fmt: skip
        print()
        print(f"steps/s: {1 / total:.2f} (mean step {total:.3f} s, refresh amortised over {sizes.refresh_every} "
              f"steps); measured over the window: {raw:.2f}")  # fmt: skip
        print()
        print(f"{'part':52}  {'s/step':>7}  {'share':>6}")
        print(f"{'-' * 52}  {'-' * 7}  {'-' * 6}")
        for key, label in PARTS:
            print(f"{label:52}  {means[key]:7.3f}  {100 * means[key] / total:5.1f}%")
        print(f"{'total':52}  {total:7.3f}  100.0%")
        print(f"(search, re-embedding and the encoder forward are parts of the forward; one refresh = "
              f"{means['refresh'] * sizes.refresh_every:.2f} s: snapshot + embed {len(store):,} blocks + open)")  # fmt: skip
        print()

        result = reference(root, sizes, tokenizer)
    times = result["times"]
    ours, port = statistics.median(times["ours"]), statistics.median(times["port-style"])
    masked = result["masked"]
    print("## the reference: the same step the transformers-port way (MLM head over every joint position)")
    print()
    print(f"same initial weights, the loop's first {sizes.rounds} batches ({min(masked)}-{max(masked)} masked tokens "
          f"per batch of {sizes.batch_size} x {sizes.num_candidates} pairs of up to {sizes.joint_seq_len} tokens); "
          f"forward + backward, no optimizer step")  # fmt: skip
    first_ours, first_port = result["first"]
    print(f"agreement (eval mode): first-batch loss ours {first_ours:.6f}, port-style {first_port:.6f}; "
          f"max relative difference over {sizes.rounds} batches {result['worst']:.1e} (<= 1e-5)")  # fmt: skip
    print()
    print(f"{'step':12}  {'median s':>8}  {'min s':>7}  {'max s':>7}")
    print(f"{'-' * 12}  {'-' * 8}  {'-' * 7}  {'-' * 7}")
    for name in ("ours", "port-style"):
        print(
            f"{name:12}  {statistics.median(times[name]):8.3f}  {min(times[name]):7.3f}  {max(times[name]):7.3f}"
        )
    print()
    paired = statistics.median(a / b for a, b in zip(times["ours"], times["port-style"], strict=True))
    print(f"per-round ratio ours / port-style (median of the {sizes.rounds} rounds' ratios): {paired:.3f}")
    print(f"ratio ours / port-style step time: {ours / port:.3f} over {sizes.rounds} rounds "
          f"(speed-up of computing the MLM head only at masked positions: {port / ours:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark one ORQA/REALM fine-tuning step: ours (`realm.finetune`) against a port-style step, on CPU.

Both steps do the same math on the same question, model weights and index (the losses are checked to
agree before anything is timed): embed the question, search the top K = 5000 blocks, retrieval logits,
label all K blocks (answer present?), read the top R = 5, MML losses, backward, AdamW step. They differ
in how the K blocks become labels and reader inputs:

* port-style: `RealmForOpenQA` with a `RealmRetriever` over in-memory block texts (a list of str, as the
  transformers port's `block_records`): the question is decoded to text, K (question, block) pairs are
  tokenized, padded and tensorised, `block_has_answer` scans every row in Python, and the reader reads
  the first R rows;
* ours: `OpenQAFinetuner` over a `BlockStore`: labels for all K blocks from their stored token ids in one
  numpy search, reader inputs built only for the R blocks read; nothing is decoded or re-tokenized.

The corpus is synthetic (seeded): N blocks of 200-280 invented one-wordpiece words, so the tokenizer's ids
are known without tokenizing; the index holds random vectors (the search result does not change the
work). Timings are medians over rounds in which the two steps take turns, so that load from other
processes hits both alike.

    python benchmarks/bench_finetune.py                     # 20,000 blocks, K = 5000 (~3 min on 2 cores)
    python benchmarks/bench_finetune.py --quick             # small sizes, seconds (the smoke test)
    python benchmarks/bench_finetune.py | tee benchmarks/results/bench_finetune.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realm import RealmConfig, RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.finetune import OpenQAFinetuner, answers_in_blocks
from realm.finetune.answers import NO_TOKEN
from realm.index import ExactIndex
from realm.inputs import collate_questions
from realm.modeling.openqa import load_towers, save_openqa

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Sizes:
    blocks: int = 20_000
    words: int = 5000
    block_words: tuple[int, int] = (200, 280)
    searcher_beam_size: int = 5000
    reader_beam_size: int = 5
    reader_seq_len: int = 320
    hidden_size: int = 128
    layers: int = 2
    rounds: int = 5


QUICK = Sizes(blocks=2000, words=500, block_words=(40, 60), searcher_beam_size=500, reader_seq_len=80, rounds=2)


def make_corpus(root: Path, sizes: Sizes, seed: int = 0) -> tuple[RealmTokenizerFast, BlockStore, list[str]]:
    """N blocks of invented words "w0" ... (each one wordpiece), as a store and as in-memory texts."""
    words = [f"w{i}" for i in range(sizes.words)]
    (root / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    tokenizer = RealmTokenizerFast(vocab_file=str(root / "vocab.txt"))
    rng = np.random.default_rng(seed)
    offset = len(SPECIALS)
    ids = [rng.integers(0, sizes.words, size=int(rng.integers(*sizes.block_words))) for _ in range(sizes.blocks)]
    texts = [" ".join(words[i] for i in row.tolist()) for row in ids]
    blocks = [Block("", text, [], (row + offset).tolist(), doc_id=i) for i, (text, row) in enumerate(zip(texts, ids, strict=True))]
    for i in (0, sizes.blocks - 1):  # the stored ids are the tokenizer's ids of the texts
        assert tokenizer(texts[i], add_special_tokens=False).input_ids == list(blocks[i].token_ids)
    store = BlockStore.create(root / "store", blocks, tokenizer)
    return tokenizer, store, texts


def make_model(root: Path, sizes: Sizes, vocab_size: int) -> RealmConfig:
    config = RealmConfig(
        vocab_size=vocab_size, hidden_size=sizes.hidden_size, num_hidden_layers=sizes.layers,
        num_attention_heads=4, intermediate_size=4 * sizes.hidden_size, retriever_proj_size=128,
        span_hidden_size=sizes.hidden_size, max_span_width=10, reader_beam_size=sizes.reader_beam_size,
        reader_seq_len=sizes.reader_seq_len, searcher_beam_size=sizes.searcher_beam_size, num_block_records=0,
        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    from realm import RealmEmbedder, RealmReader

    save_openqa(root / "init", RealmEmbedder(config), RealmReader(config), config)
    return config


def question_for(store: BlockStore, tokenizer: RealmTokenizerFast, block: int) -> tuple[list[int], list[list[int]]]:
    """A question made of words of a block, and a word of it as the answer (frequent enough that some of
    the K blocks hold it: both losses have positives)."""
    ids = store.token_ids([block])[0]
    question = [tokenizer.cls_token_id, *ids[10:22], tokenizer.sep_token_id]
    return question, [ids[30:31]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared machine more threads spin-wait against other processes)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    torch.set_num_threads(args.threads)

    print("# realm finetune step benchmark: ours vs port-style (re-tokenize K pairs per step)\n")
    print(f"command: python benchmarks/bench_finetune.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        tokenizer, store, texts = make_corpus(root, sizes)
        config = make_model(root, sizes, len(tokenizer))
        lengths = [len(t.split()) for t in texts]
        print(f"corpus: {len(store):,} synthetic blocks of {min(lengths)}-{max(lengths)} wordpieces "
              f"(built in {time.perf_counter() - started:.1f} s); index: {len(store):,} x 128 random float32")  # fmt: skip
        print(f"model: hidden {config.hidden_size}, {config.num_hidden_layers} layers, span width {config.max_span_width}; "
              f"K = {sizes.searcher_beam_size} retrieved, R = {sizes.reader_beam_size} read, reader_seq_len "
              f"{sizes.reader_seq_len}; batch 1 question (as ORQA and the port); forward + backward + AdamW step\n")  # fmt: skip
        generator = torch.Generator().manual_seed(1)
        index = ExactIndex(torch.randn(len(store), 128, generator=generator))

        embedder, reader = load_towers(root / "init", config, torch.device("cpu"))
        ours = OpenQAFinetuner(embedder, reader, store, index, tokenizer, sizes.searcher_beam_size,
                               sizes.reader_beam_size, sizes.reader_seq_len).train()  # fmt: skip
        port = RealmForOpenQA.from_pretrained(root / "init", retriever=RealmRetriever(texts, tokenizer), index=index).train()
        optimizers = {
            "ours": torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5),
            "port-style": torch.optim.AdamW(port.parameters(), lr=1e-5),
        }
        rng = np.random.default_rng(2)
        questions = [question_for(store, tokenizer, int(b)) for b in rng.integers(0, len(store), size=sizes.rounds + 1)]

        def step(name: str, question: list[int], answers: list[list[int]]) -> float:
            optimizers[name].zero_grad(set_to_none=True)
            if name == "ours":
                ids, mask = collate_questions([question], tokenizer.pad_token_id)
                loss = ours(ids, mask, [answers]).loss
            else:
                ids = torch.tensor([question])
                loss = port(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                            answer_ids=answers).reader_output.loss  # fmt: skip
            loss.backward()
            optimizers[name].step()
            return loss.item()

        # Same weights, same question: the same loss (checked on the first step, before any update).
        losses = {name: step(name, *questions[0]) for name in optimizers}
        assert abs(losses["ours"] - losses["port-style"]) < 1e-4, losses
        print(f"agreement: first-step loss ours {losses['ours']:.6f}, port-style {losses['port-style']:.6f}\n")

        times: dict[str, list[float]] = {name: [] for name in optimizers}
        for question in questions[1:]:
            for name in optimizers:
                started = time.perf_counter()
                step(name, *question)
                times[name].append(time.perf_counter() - started)

        # Where the difference comes from: turning the K retrieved ids into labels (and reader inputs).
        parts: dict[str, list[float]] = {"port-style": [], "ours": []}
        for question, answers in questions[1:]:
            with torch.no_grad():
                ids, mask = collate_questions([question], tokenizer.pad_token_id)
                block_ids = index.search(ours.embedder(ids, attention_mask=mask).projected_score, sizes.searcher_beam_size).ids[0]
            started = time.perf_counter()
            port.retriever(block_ids, [question], answers, max_length=sizes.reader_seq_len)
            parts["port-style"].append(time.perf_counter() - started)
            started = time.perf_counter()
            tokens, lengths = store.token_ids_array(block_ids.numpy(), pad_id=NO_TOKEN)
            answers_in_blocks(tokenizer, question, tokens, lengths, answers, sizes.reader_seq_len)
            ours.retriever(block_ids[: sizes.reader_beam_size], [question], answers, max_length=sizes.reader_seq_len)
            parts["ours"].append(time.perf_counter() - started)

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'step':<11}  {'median s':>8}  {'steps/s':>7}  {'min s':>6}  {'max s':>6}")
    print(f"{'-' * 11}  {'-' * 8}  {'-' * 7}  {'-' * 6}  {'-' * 6}")
    for name, t in times.items():
        print(f"{name:<11}  {medians[name]:8.3f}  {1 / medians[name]:7.2f}  {min(t):6.3f}  {max(t):6.3f}")
    print(f"\nspeed-up (port-style time / ours): {medians['port-style'] / medians['ours']:.1f}x over {sizes.rounds} rounds")
    k, r = sizes.searcher_beam_size, sizes.reader_beam_size
    port_part, our_part = (statistics.median(parts[n]) for n in ("port-style", "ours"))
    print(f"\nlabels and reader inputs alone (median): port-style {port_part:.3f} s (decode the question, tokenize "
          f"{k} (question, block) pairs, block_has_answer over {k} rows); ours {our_part:.3f} s (gather {k} blocks' "
          f"ids, vectorised search, reader inputs for {r} blocks) = {port_part / our_part:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

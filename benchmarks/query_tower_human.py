"""Does training the query tower on human-style questions improve retrieval on other human-style questions?

The demo's document vectors stay as they are (its `index/`, written by its retriever); the query tower, a copy
of the demo's `retriever/embedder`, is trained on the packaged `questions/train.jsonl` (1,944 questions about
articles outside dev and test) with a softmax over every block of the corpus (the gold article's block the
target: no sampled negatives, every block a negative). After each epoch it prints gold-article recall@1/5/20
on the dev and test questions (dense only, no BM25); the epoch best on dev is named at the end.

What it showed on the demo (README, "What moved the figures"): within a few questions of the start (dev
recall@1 +0.019, @5 -0.005, @20 +0.010 at the best epoch), not adopted.

    python benchmarks/query_tower_human.py --cache ~/.cache/realm/demo                 # whole tower, lr 2e-5
    python benchmarks/query_tower_human.py --cache ~/.cache/realm/demo --head-only --lr 1e-3
    python benchmarks/query_tower_human.py --cache ~/.cache/realm/demo --freeze-below 3 --lr 1e-5 --epochs 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from realm.corpus import BlockStore
from realm.demo.data import TRAIN_QUESTIONS, human_questions, packaged_questions
from realm.demo.retriever import recall_at
from realm.index import open_index
from realm.modeling.embedder import RealmEmbedder

KS = (1, 5, 20)
QUESTION_LENGTH = 32  # the demo's question_max_length


def embed(embedder: RealmEmbedder, tokenizer, questions: list[str]) -> torch.Tensor:
    """[Q, D] query vectors, as `Pipeline` embeds questions (in the embedder's current train/eval mode)."""
    parts = []
    for start in range(0, len(questions), 64):
        encoded = tokenizer(questions[start : start + 64], padding=True, truncation=True, max_length=QUESTION_LENGTH,
                            return_tensors="pt")  # fmt: skip
        parts.append(embedder(**encoded).projected_score.float())
    return torch.cat(parts)


def recall(embedder: RealmEmbedder, tokenizer, blocks: torch.Tensor, questions: list[str], gold: torch.Tensor) -> list[float]:
    embedder.eval()
    with torch.no_grad():
        scores = embed(embedder, tokenizer, questions) @ blocks.T  # [Q, N]
    return list(recall_at(scores, gold, KS).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="a full `realm demo` cache (read only)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-only", action="store_true", help="train only the retrieval head (pooler + projection)")
    parser.add_argument("--freeze-below", type=int, default=0, help="also freeze the encoder layers below this one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    store = BlockStore.open(args.cache / "blocks" / "store")
    tokenizer = store.load_tokenizer()
    embedder = RealmEmbedder.from_pretrained(args.cache / "retriever" / "embedder")
    index = open_index(args.cache / "index" / "index")
    blocks = index.reconstruct(torch.arange(len(index))).float()  # [N, D], fixed
    block_of = {title: i for i, title in enumerate(store.titles(range(len(store))))}

    def split(path) -> tuple[list[str], torch.Tensor]:
        rows = human_questions(set(block_of), path)
        return [r["question"] for r in rows], torch.tensor([block_of[r["title"]] for r in rows])

    train_q, train_gold = split(packaged_questions(TRAIN_QUESTIONS))
    dev_q, dev_gold = split(packaged_questions("dev.jsonl"))
    test_q, test_gold = split(packaged_questions("test.jsonl"))
    print(f"{len(train_q)} training, {len(dev_q)} dev, {len(test_q)} test questions; {len(blocks):,} blocks")

    frozen = ("realm.embeddings.", *(f"realm.encoder.layer.{i}." for i in range(args.freeze_below)))
    for name, parameter in embedder.named_parameters():
        head = name.startswith(("realm.pooler.", "cls."))
        parameter.requires_grad_(head if args.head_only else not name.startswith(frozen))
    trained = [p for p in embedder.parameters() if p.requires_grad]
    with torch.no_grad():  # a learned softmax scale, starting at 1 / the spread of the starting scores
        spread = (embed(embedder.eval(), tokenizer, train_q[:256]) @ blocks.T).std().item()
    log_scale = torch.nn.Parameter(torch.tensor(-float(torch.log(torch.tensor(spread)))))
    optimizer = torch.optim.AdamW([{"params": trained, "lr": args.lr}, {"params": [log_scale], "lr": 1e-2}],
                                  weight_decay=0.01)  # fmt: skip
    steps = args.epochs * -(-len(train_q) // args.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))

    def report(epoch: int, loss: float | None) -> float:
        dev, test = recall(embedder, tokenizer, blocks, dev_q, dev_gold), recall(embedder, tokenizer, blocks, test_q, test_gold)
        print(json.dumps({"epoch": epoch, "loss": loss, "dev": dev, "test": test}), flush=True)
        return sum(dev)

    best = (report(0, None), 0)
    for epoch in range(1, args.epochs + 1):
        embedder.train()
        order, losses = torch.randperm(len(train_q)), []
        for start in range(0, len(train_q), args.batch_size):
            chosen = order[start : start + args.batch_size]
            logits = embed(embedder, tokenizer, [train_q[i] for i in chosen]) @ blocks.T * log_scale.exp()  # [b, N]
            loss = torch.nn.functional.cross_entropy(logits, train_gold[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        best = max(best, (report(epoch, round(sum(losses) / len(losses), 3)), epoch), key=lambda b: b[0])
    print(f"best on dev (sum of recall@1/5/20): epoch {best[1]} (0 = the demo's own query tower)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

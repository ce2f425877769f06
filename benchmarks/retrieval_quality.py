"""Retrieval quality on questions with a gold article: gold-article recall@k of BM25, dense and hybrid.

For each questions file (JSONL rows {"question", "answer": [...], "title": gold article}), over one block
store, it prints a Markdown table with a row per retriever:

- BM25 (`realm.index.SparseIndex`), with and without stemming (built in memory from the store, unless
  `--sparse DIR` gives a saved one for the stemmed row);
- dense: the `--index` of the `--embedder` (questions embedded as `Pipeline` does, [CLS] projection);
- hybrid RRF: `realm.index.HybridIndex` (the dense and BM25 top-`depth` fused by reciprocal rank,
  1 / (k0 + rank)) for each `--depths` and `--k0`;
- hybrid weighted: `HybridIndex(fusion="weighted")` (over the union of the dense and BM25 top-`depth`, each
  score min-max normalised, ranked by dense + w * BM25) for each `--depths` and `--weights`.

A hit at k is a block of the gold article (store title == "title") among the first k (`realm.eval.title_hits`).
ms/question is the wall time of the retriever's search calls (question embedding excluded), batch of 64.

The table in the README (the demo's corpus and its initial embedder, the dev questions):

    python benchmarks/retrieval_quality.py --store ~/.cache/realm/demo/blocks/store \\
        --embedder ~/.cache/realm/demo/init/model/embedder --index INIT_INDEX \\
        --questions dev.jsonl test.jsonl --depths 20 50 100 --weights 0.2 0.3 0.5 1 --output results.md

where INIT_INDEX was built with the demo's block length:
`realm index build --store ~/.cache/realm/demo/blocks/store --embedder ~/.cache/realm/demo/init/model/embedder
--out INIT_INDEX --max-length 64`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from realm.corpus import BlockStore
from realm.eval import recall_at_k, title_hits
from realm.index import HybridIndex, SparseConfig, SparseIndex, open_index
from realm.modeling.embedder import RealmEmbedder

BATCH = 64


def read_questions(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row.get("title"), str):
                raise SystemExit(f"{path}:{number}: every row needs a gold article title (\"title\")")
            rows.append(row)
    return rows


@torch.inference_mode()
def embed_questions(embedder: RealmEmbedder, tokenizer, questions: list[str], max_length: int) -> torch.Tensor:
    parts = []
    for start in range(0, len(questions), BATCH):
        encoded = tokenizer(questions[start : start + BATCH], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")  # fmt: skip
        parts.append(embedder(**encoded).projected_score.float())  # [b, D]
    return torch.cat(parts)


def timed(search: Callable[[slice], torch.Tensor], count: int) -> tuple[torch.Tensor, float]:
    """Run `search` batch by batch; return the ids [Q, K] and the milliseconds per question."""
    started = time.perf_counter()
    ids = torch.cat([search(slice(s, s + BATCH)) for s in range(0, count, BATCH)])
    return ids, 1000 * (time.perf_counter() - started) / count


def recall_row(name: str, ids: torch.Tensor, gold: list[str], store: BlockStore, ks: list[int], ms: float) -> str:
    hits = []
    for row, title in zip(ids.tolist(), gold, strict=True):
        found = [i for i in row if i >= 0]
        hits.append(title_hits(store.titles(found), title) + [False] * (len(row) - len(found)))
    recall = recall_at_k(hits, ks)
    return f"| {name} | " + " | ".join(f"{recall[k]:.3f}" for k in ks) + f" | {ms:.1f} |"


def file_table(path: Path, store: BlockStore, sparse: dict[str, SparseIndex], dense, embedder, tokenizer,
               args: argparse.Namespace, label: str | None) -> list[str]:  # fmt: skip
    """The Markdown table of one questions file."""
    rows = read_questions(path)
    texts, gold = [r["question"] for r in rows], [r["title"] for r in rows]
    ks, k = sorted(args.ks), max(args.ks)
    lines = [f"\n{path.name}: {len(rows)} questions\n",
             "| retriever | " + " | ".join(f"R@{k_}" for k_ in ks) + " | ms/question |",
             "|---" * (len(ks) + 2) + "|"]  # fmt: skip

    def add(name: str, search: Callable[[slice], torch.Tensor]) -> None:
        ids, ms = timed(search, len(rows))
        lines.append(recall_row(name, ids, gold, store, ks, ms))

    for name, index in sparse.items():
        add(name, lambda s, index=index: index.search_text(texts[s], k).ids)
    if dense is None:
        return lines
    queries = embed_questions(embedder, tokenizer, texts, args.question_max_length)
    add(f"dense ({label})", lambda s: dense.search(queries[s], k).ids)
    for name, index in sparse.items():
        for depth in args.depths:
            for k0 in args.k0:
                hybrid = HybridIndex(dense, index, depth=depth, fusion="rrf", k0=k0)
                add(f"hybrid RRF ({name}), depth {depth}, k0 {k0:g}",
                    lambda s, h=hybrid: h.search(queries[s], k, texts=texts[s]).ids)  # fmt: skip
            for weight in args.weights:
                hybrid = HybridIndex(dense, index, depth=depth, fusion="weighted", weight=weight)
                add(f"hybrid weighted ({name}), depth {depth}, w {weight:g}",
                    lambda s, h=hybrid: h.search(queries[s], k, texts=texts[s]).ids)  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--questions", required=True, nargs="+", type=Path, help="JSONL files with a gold \"title\"")
    parser.add_argument("--embedder", type=Path, help="RealmEmbedder of the dense index (question tower)")
    parser.add_argument("--index", type=Path, help="dense index built from --store with that embedder")
    parser.add_argument("--label", help="name of the dense rows (default: the embedder directory)")
    parser.add_argument("--sparse", type=Path, help="a saved sparse index of --store (default: build in memory)")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--k0", type=float, nargs="+", default=[60.0])
    parser.add_argument("--weights", type=float, nargs="*", default=[], help="weighted score fusion rows")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--question-max-length", type=int, default=32, help="as the demo's Pipeline")
    parser.add_argument("--output", type=Path, help="also write the tables (Markdown) here")
    args = parser.parse_args(argv)
    if (args.embedder is None) != (args.index is None):
        parser.error("--embedder and --index go together")

    store = BlockStore.open(args.store)
    sparse = {
        "BM25, stemmed": SparseIndex.open(args.sparse, store) if args.sparse
        else SparseIndex.build(store, SparseConfig(stemmer="english"), progress=False),
        "BM25, no stemming": SparseIndex.build(store, SparseConfig(stemmer=None), progress=False),
    }  # fmt: skip
    dense = embedder = label = None
    if args.index is not None:
        dense = open_index(args.index)
        embedder = RealmEmbedder.from_pretrained(args.embedder).eval()
        label = args.label or args.embedder.name
    tokenizer = store.load_tokenizer()

    out = [f"Gold-article recall@k over {len(store):,} blocks of {args.store}"]
    for path in args.questions:
        lines = file_table(path, store, sparse, dense, embedder, tokenizer, args, label)
        out.extend(lines)
        print("\n".join(lines), flush=True)
    if args.output:
        args.output.write_text("\n".join(out) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())


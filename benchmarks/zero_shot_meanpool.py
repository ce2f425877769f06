"""The zero-shot baseline of the demo's quality table: all-MiniLM-L6-v2 used as it was trained (mean pooling
of the last hidden states, cosine), over the demo's blocks, gold-article recall@1/5/20 on question files.

Computed here without REALM's head (plain cosine of the mean-pooled vectors): the bar the demo's retriever is
measured against. The demo's embedder reads the same mean through an identity head (`realm init --pooling mean`),
which scores with the centred cosine instead; over the 64-wordpiece blocks the two gave dev recall@1/5/20 0.676 /
0.905 / 0.943 (centred) and 0.671 / 0.905 / 0.943 (this script).

    python benchmarks/zero_shot_meanpool.py --cache ~/.cache/realm/demo \\
        --questions src/realm/demo/questions/dev.jsonl src/realm/demo/questions/test.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from realm.corpus import BlockStore
from realm.inputs import block_inputs
from realm.modeling.bert import masked_mean
from realm.modeling.embedder import RealmEmbedder
from realm.tokenization import RealmTokenizerFast


def mean_pooled(embedder: RealmEmbedder, sequences: list[list[int]], pad_id: int, batch: int = 128) -> torch.Tensor:
    """L2-normalised mean of the trunk's last hidden states over the real tokens (token types all 0)."""
    out = []
    for i in range(0, len(sequences), batch):
        chunk = sequences[i : i + batch]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in chunk])
        mask = (ids != pad_id).long()
        with torch.inference_mode():
            hidden = embedder.realm(ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        out.append(torch.nn.functional.normalize(masked_mean(hidden, mask), dim=-1))  # [B, H]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a realm demo cache directory (blocks/, init/)")
    parser.add_argument("--questions", nargs="+", required=True, help='JSONL rows with "question" and "title"')
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--question-max-length", type=int, default=32)
    args = parser.parse_args()
    cache = Path(args.cache).expanduser()
    store = BlockStore.open(cache / "blocks" / "store")
    embedder = RealmEmbedder.from_pretrained(cache / "init" / "model" / "embedder").eval()
    tokenizer = RealmTokenizerFast.from_pretrained(cache / "init" / "model" / "embedder")
    cls_id, sep_id, pad_id = store.special_ids
    ids = list(range(len(store)))
    blocks = [block_inputs(t, b, cls_id, sep_id, args.block_tokens)[0]
              for t, b in zip(store.title_ids(ids), store.token_ids(ids), strict=True)]  # fmt: skip
    block_vectors = mean_pooled(embedder, blocks, pad_id)  # [N, H]
    titles = store.titles(ids)
    print("| questions | R@1 | R@5 | R@20 |\n|---|---|---|---|")
    for path in args.questions:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        encoded = tokenizer([r["question"] for r in rows], truncation=True, max_length=args.question_max_length)
        queries = mean_pooled(embedder, [list(q) for q in encoded["input_ids"]], pad_id)  # [B, H]
        top = (queries @ block_vectors.T).topk(20, dim=1).indices.tolist()  # [B, 20]
        recall = [
            sum(any(titles[j] == r["title"] for j in top[i][:k]) for i, r in enumerate(rows)) / len(rows)
            for k in (1, 5, 20)
        ]
        print(f"| {Path(path).name} ({len(rows)}) | " + " | ".join(f"{r:.3f}" for r in recall) + " |")


if __name__ == "__main__":
    main()

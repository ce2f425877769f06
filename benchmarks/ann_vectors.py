"""Real vectors for the ANN benchmark: the demo's initial embedder over real text.

Texts: every lead of the demo corpus (~/.cache/realm/demo/wheels/summaries_en-us.json, 10,033 Wikipedia
leads) cut into its sentences and into 16-word windows (stride 8): 119,490 passages (the README's figures
use the first 106,496, `--limit 106496`: 13 parts, to finish in time on a busy machine), embedded as blocks
`[CLS] title [SEP] passage [SEP]`. Queries: the demo's 7,876 questions (train + held-out), embedded as
`[CLS] question [SEP]`, none of them among the passages. Vectors are the embedder's LayerNorm outputs
(not unit vectors), as REALM's block embeddings are.

    python benchmarks/ann_vectors.py --out /work/scratch/ann --limit 106496   # resumable; progress lines

Writes blocks.npy [N, 128] and queries.npy [Q, 128] float32 (atomically, per 8,192-row part first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEMO = Path(os.path.expanduser("~/.cache/realm/demo"))
PART_ROWS = 8192


def passages(summaries: Path) -> list[tuple[str, str]]:
    """(title, passage) pairs: each lead's sentences, then its 16-word windows with stride 8."""
    data = json.loads(summaries.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []
    for entry in data.values():
        title, text = entry["title"], entry["extract"]
        out += [(title, s) for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        words = text.split()
        out += [(title, " ".join(words[i : i + 16])) for i in range(0, max(len(words) - 16, 0) + 1, 8)
                if len(words) >= 16]
    return out


def questions(folder: Path) -> list[str]:
    rows = []
    for name in ("train.jsonl", "heldout.jsonl"):
        with open(folder / name, encoding="utf-8") as f:
            rows += [json.loads(line)["question"] for line in f if line.strip()]
    return rows


@torch.inference_mode()
def embed(texts: list[tuple[str, str | None]], embedder_dir: Path, out: Path, batch: int, max_length: int,
          bf16: bool, log) -> np.ndarray:
    """Embed in parts of PART_ROWS rows, each saved atomically: a killed run resumes at the next part."""
    from realm.atomic import atomic_save_npy
    from realm.modeling.embedder import RealmEmbedder
    from realm.tokenization import RealmTokenizerFast

    tok = RealmTokenizerFast.from_pretrained(str(embedder_dir))
    model = RealmEmbedder.from_pretrained(embedder_dir).eval()
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    started = time.monotonic()
    for p, lo in enumerate(range(0, len(texts), PART_ROWS)):
        path = out / f"part-{p:04d}.npy"
        parts.append(path)
        if path.exists():
            continue
        chunk = texts[lo : lo + PART_ROWS]
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i][0]) + len(chunk[i][1] or ""))
        emb = np.empty((len(chunk), model.config.retriever_proj_size), np.float32)
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            firsts = [chunk[i][0] for i in idx]
            seconds = [chunk[i][1] for i in idx]
            enc = tok(firsts, seconds if seconds[0] is not None else None, padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                vec = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            token_type_ids=enc["token_type_ids"]).projected_score
            emb[idx] = vec.float().numpy()
        atomic_save_npy(path, emb)
        done = min(lo + PART_ROWS, len(texts))
        rate = done / max(time.monotonic() - started, 1e-9)
        log(f"{out.name}: {done:,}/{len(texts):,} rows, {rate:.0f}/s")
    return np.concatenate([np.load(p) for p in parts])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/work/scratch/ann"))
    ap.add_argument("--embedder", type=Path, default=DEMO / "init" / "model" / "embedder")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="embed only the first LIMIT passages (0: all)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    from realm.atomic import atomic_save_npy

    bf16 = not args.no_bf16
    for name, texts in (
        ("queries", [(q, None) for q in questions(DEMO / "questions")]),
        ("blocks", passages(DEMO / "wheels" / "summaries_en-us.json")[: args.limit or None]),
    ):
        target = args.out / f"{name}.npy"
        if target.exists():
            log(f"{target} exists")
            continue
        log(f"{name}: {len(texts):,} texts, max_length {args.max_length}, batch {args.batch}, bf16 {bf16}")
        matrix = embed(texts, args.embedder, args.out / f".{name}-parts", args.batch, args.max_length, bf16, log)
        atomic_save_npy(target, matrix)
        (args.out / f"{name}.json").write_text(json.dumps(
            {"count": len(texts), "limit": args.limit, "max_length": args.max_length, "bf16": bf16, "embedder": str(args.embedder)}))
        log(f"wrote {target} {matrix.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

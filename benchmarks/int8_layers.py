"""Dev-set quality and speed of int8 dynamic quantisation of parts of the reader trunk, against float32.

On a bundle (dense retrieval; the query tower stays float32, so the blocks retrieved do not change), for
each variant: EM and gold recall@5 on the 210 dev questions, the share of answers equal to the first
variant's, questions/s and CPU seconds (batches of 32), one JSON line per variant. Variants quantise the
attention projections (q, k, v, attention output), the feed-forward layers, or every linear layer of the
first layers (weights per tensor); `fast` is what `--fast` does (`realm.modeling.inference.quantize_trunk`:
attention and feed-forward input layers, weights per output channel).

    python benchmarks/int8_layers.py BUNDLE_DIR [VARIANT ...]     # default: every variant
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import cpu_seconds, load_questions  # noqa: E402

from realm.bundle import read_bundle  # noqa: E402
from realm.corpus import BlockStore  # noqa: E402
from realm.eval.metrics import exact_match  # noqa: E402
from realm.modeling.inference import quantize_trunk  # noqa: E402
from realm.pipeline import Pipeline  # noqa: E402

ATTENTION = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
FEED_FORWARD = ["intermediate.dense", "output.dense"]


def layers(indices: range, parts: list[str]) -> set[str]:
    return {f"realm.encoder.layer.{i}.{part}" for i in indices for part in parts}


VARIANTS: dict[str, set[str] | str | None] = {
    "fp32": None,
    "fast": "quantize_trunk",
    "int8_all": layers(range(6), ATTENTION + FEED_FORWARD),
    "int8_ffn": layers(range(6), FEED_FORWARD),
    "int8_att": layers(range(6), ATTENTION),
    "int8_first3": layers(range(3), ATTENTION + FEED_FORWARD),
}


def main(argv: list[str]) -> int:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    bundle = read_bundle(argv[0])
    rows, n_dev = load_questions(0)
    rows = rows[:n_dev]
    questions = [r["question"] for r in rows]
    store = BlockStore.open(bundle.store)
    block_of = {t: i for i, t in enumerate(store.titles(list(range(len(store)))))}
    reference = None
    for name in argv[1:] or list(VARIANTS):
        pipeline = Pipeline.from_pretrained(bundle.model, bundle.store, bundle.index, sparse=False, k=bundle.k,
                                            max_question_length=bundle.max_question_length)  # fmt: skip
        modules = VARIANTS[name]
        if modules == "quantize_trunk":
            quantize_trunk(pipeline.reader.realm.encoder)
        elif modules:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

                quantize_dynamic(pipeline.reader, {m: default_dynamic_qconfig for m in modules}, dtype=torch.qint8, inplace=True)
        pipeline.ask(questions[:32])  # warm-up
        started, cpu = time.perf_counter(), cpu_seconds()
        answers = []
        for start in range(0, len(questions), 32):
            answers += pipeline.ask(questions[start : start + 32])
        wall, used = time.perf_counter() - started, cpu_seconds() - cpu
        em = 100 * np.mean([exact_match(a.text, r["answer"]) for a, r in zip(answers, rows, strict=True)])
        recall = [block_of.get(r["title"]) in [e.block_id for e in a.evidence] for a, r in zip(answers, rows, strict=True)]
        texts = [a.text for a in answers]
        reference = reference or texts
        same = np.mean([x == y for x, y in zip(texts, reference, strict=True)])
        print(json.dumps({"variant": name, "em": round(float(em), 2), "recall_at_5": round(100 * float(np.mean(recall)), 2),
                          "same_answer_as_first": round(float(same), 3), "q_per_s": round(len(questions) / wall, 2),
                          "cpu_s": round(used, 1), "load": os.getloadavg()[0]}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The transformers port's side of `bench_e2e.py`: run in an interpreter that has transformers 4.57.6.

`bench_e2e.py` starts this script as a subprocess (so that realm-lm never imports transformers) with a work
directory holding `request.json` (what to run), the OpenQA checkpoint and the block embedder (realm-lm's
safetensors, whose key names are the port's), the index's embeddings and the inputs. It writes the port's
checkpoints the way the port reads them (`pytorch_model.bin`: the port refuses safetensors for classes with
undeclared shared tensors), loads them with the port's `from_pretrained`, then runs the two workloads the
port's way and writes `port_result.json` (+ `port_embeddings.npy`):

1. embed the corpus: `RealmEmbedder` over batches of blocks in corpus order, each padded by the port's
   tokenizer (`tokenizer.pad`, to the longest of the batch);
2. answer questions: `RealmForOpenQA` one question at a time (the port's only batch size), the index as its
   `block_emb`, its `RealmRetriever` over the blocks' texts.

Only transformers, torch, numpy and safetensors are imported here.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def cpu_seconds() -> float:
    """CPU time of this process (all its threads): under a shared machine's load, steadier than wall time."""
    times = os.times()
    return times.user + times.system


def port_checkpoint(src: Path, dst: Path, prefix: str, overrides: dict, block_emb: np.ndarray | None) -> Path:
    """realm-lm safetensors (the port's key names) -> the port's `config.json` + `pytorch_model.bin`."""
    dst.mkdir(parents=True, exist_ok=True)
    state = {k[len(prefix) :]: v for k, v in load_file(src / "model.safetensors").items() if k.startswith(prefix)}
    if block_emb is not None:
        state["block_emb"] = torch.from_numpy(block_emb)
    config = json.loads((src / "config.json").read_text())
    config.update(overrides)
    (dst / "config.json").write_text(json.dumps(config))
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def load(cls, directory: Path, **kwargs):
    model, info = cls.from_pretrained(directory, output_loading_info=True, **kwargs)
    missing = [k for k in info["missing_keys"] if not k.startswith("cls.predictions")]
    if missing or info["mismatched_keys"]:
        raise RuntimeError(f"{cls.__name__}: missing {missing}, mismatched {info['mismatched_keys']}")
    return model.eval()


def embed_corpus(request: dict, work: Path, transformers) -> dict:
    tokenizer = transformers.RealmTokenizerFast.from_pretrained(request["tokenizer"])
    directory = port_checkpoint(Path(request["embedder"]), work / "port_embedder", request["embedder_prefix"], {}, None)
    embedder = load(transformers.RealmEmbedder, directory)
    sequences = json.loads((work / "blocks.json").read_text())
    batch = request["embed_batch_size"]
    out = np.empty((len(sequences), embedder.config.retriever_proj_size), dtype=np.float32)
    padded_tokens = 0
    with torch.inference_mode():
        embedder(**tokenizer.pad({"input_ids": [sequences[0][0]]}, return_tensors="pt"))  # warm-up
        started, cpu = time.perf_counter(), cpu_seconds()
        for start in range(0, len(sequences), batch):
            rows = sequences[start : start + batch]
            inputs = tokenizer.pad(
                {"input_ids": [r[0] for r in rows], "token_type_ids": [r[1] for r in rows]},
                padding=True, return_tensors="pt",
            )  # fmt: skip
            padded_tokens += inputs["input_ids"].numel()
            out[start : start + len(rows)] = embedder(**inputs).projected_score.numpy()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    np.save(work / "port_embeddings.npy", out)
    return {"seconds": seconds, "cpu_seconds": cpu, "blocks": len(sequences), "padded_tokens": padded_tokens}


def answer_questions(request: dict, work: Path, transformers) -> dict:
    tokenizer = transformers.RealmTokenizerFast.from_pretrained(request["tokenizer"])
    block_emb = np.load(request["block_emb"])
    texts = json.loads((work / "block_texts.json").read_text())
    records = np.array([t.encode("utf-8") for t in texts], dtype=object)
    directory = port_checkpoint(
        Path(request["model"]), work / "port_openqa", "", {"num_block_records": len(records), **request["overrides"]},
        block_emb,
    )  # fmt: skip
    retriever = transformers.RealmRetriever(records, tokenizer)
    model = load(transformers.RealmForOpenQA, directory, retriever=retriever)
    questions = request["questions"]
    k = model.config.reader_beam_size
    rows, latencies, cpu = [], [], 0.0
    with torch.inference_mode():
        for i, question in enumerate([questions[0], *questions]):  # the first: warm-up, not counted
            started, cpu_started = time.perf_counter(), cpu_seconds()
            inputs = tokenizer([question], truncation=True, max_length=request["max_question_length"], return_tensors="pt")
            out = model(**inputs, return_dict=True)
            latency, used = time.perf_counter() - started, cpu_seconds() - cpu_started
            if i == 0:
                continue
            latencies.append(latency)
            cpu += used
            # The blocks it read (the forward does not return them): its own embedder and topk, untimed.
            query = model.embedder(**inputs).projected_score  # [1, D]
            scores, top = torch.topk(torch.einsum("BD,QD->QB", model.block_emb, query), k=k, dim=-1)
            reader = out.reader_output
            rows.append({
                "top_ids": top[0].tolist(), "top_scores": scores[0].tolist(),
                "block_idx": int(reader.block_idx), "start_pos": int(reader.start_pos), "end_pos": int(reader.end_pos),
                "answer": tokenizer.decode(out.predicted_answer_ids.tolist()),
            })  # fmt: skip
    return {
        "seconds": sum(latencies), "cpu_seconds": cpu, "questions": len(rows), "p50_ms": 1000 * statistics.median(latencies), "rows": rows
    }


def main(work: Path) -> int:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    request = json.loads((work / "request.json").read_text())
    torch.set_num_threads(request["threads"])
    result = {"transformers": transformers.__version__, "torch": torch.__version__}
    if request.get("embed"):
        result["embed"] = embed_corpus(request, work, transformers)
        print(f"port: embedded {result['embed']['blocks']} blocks in {result['embed']['seconds']:.1f} s", file=sys.stderr)
    if request.get("ask"):
        result["ask"] = answer_questions(request, work, transformers)
        print(f"port: answered {result['ask']['questions']} questions in {result['ask']['seconds']:.1f} s", file=sys.stderr)
    (work / "port_result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))

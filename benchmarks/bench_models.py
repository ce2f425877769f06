"""Time realm-lm's model forwards against the transformers port's, class by class, in one process.

For every model class the port's model is built first with seeded random weights and saved with the
port's `save_pretrained`; ours is loaded from that directory with `from_pretrained`, so both hold the
same weights. Before timing, the outputs of both are compared (max abs diff < 1e-4 in fp32 and equal
integer outputs) so that the two timings measure the same computation.

Timings are medians of `--repeats` forwards after `--warmup` forwards, run under `torch.inference_mode()`
with port / ours / ours-bf16 interleaved round by round (so a load change on the machine hits all three
alike); a timed call during which other processes used the CPU is retaken (see `Timer`). Without
transformers only our timings are printed.

    python benchmarks/bench_models.py                  # BERT-base config, all classes (~5-10 min on 2 cores)
    python benchmarks/bench_models.py --quick          # tiny sizes, a few seconds (smoke test)
    python benchmarks/bench_models.py --classes RealmEmbedder RealmReader --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import realm

try:
    import transformers
except ImportError:
    transformers = None

REPO = Path(__file__).resolve().parents[1]
BERT_VOCAB = REPO / "tests" / "fixtures" / "reference" / "tokenizer" / "vocab.txt"
CLASSES = ("RealmEmbedder", "RealmScorer", "RealmKnowledgeAugEncoder", "RealmReader", "RealmForOpenQA")
FP32_ATOL = 1e-4
FOREIGN_CPU_LIMIT = 0.05  # share of the machine's CPU other processes may use during a timed call
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class Sizes:
    """Model config overrides and workload sizes (the default RealmConfig is BERT-base)."""

    config: dict[str, Any]
    embed_batch: int = 16
    embed_len: int = 128
    block_batch: int = 64  # the optional embedder workload at the block length (--block-batch)
    block_len: int = 288
    scorer_queries: int = 2
    scorer_len: int = 64
    encoder_batch: int = 2
    encoder_len: int = 128
    reader_len: int = 320
    question_words: int = 8
    block_words: int = 288
    num_block_records: int = 1000

    @property
    def num_candidates(self) -> int:
        return int(self.config.get("num_candidates", 8))

    @property
    def reader_beam_size(self) -> int:
        return int(self.config.get("reader_beam_size", 5))


FULL = Sizes(config={})
QUICK = Sizes(
    config=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        retriever_proj_size=16,
        span_hidden_size=24,
        max_span_width=4,
        num_candidates=3,
        reader_beam_size=3,
    ),
    embed_batch=4,
    embed_len=16,
    block_batch=4,
    block_len=32,
    scorer_len=16,
    encoder_len=16,
    reader_len=48,
    question_words=4,
    block_words=40,
    num_block_records=50,
)


@dataclass
class Bench:
    """One workload: a forward of the port's model and of ours on the same inputs and weights."""

    name: str
    workload: str
    ours: Callable[[], Any]
    port: Callable[[], Any] | None
    fields: Callable[[Any], dict[str, torch.Tensor]]  # the output tensors to compare


@dataclass
class Row:
    name: str
    workload: str
    ours_ms: float = 0.0
    bf16_ms: float = 0.0
    port_ms: float | None = None
    max_diff: float | None = None
    bf16_diff: float | None = None


# -- weights and inputs ------------------------------------------------------------------------------


def randomize_(model: nn.Module, seed: int, std: float) -> None:
    """Seeded random weights: N(0, std) matrices and biases, LayerNorm weights around 1, N(0, 1) block_emb.

    Random (non-zero) biases and LayerNorm parameters make sure the comparison exercises all of them.
    `named_parameters()` lists a tied tensor once, so tied weights stay tied.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if ("LayerNorm" in name or "layer_normalization" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(std * noise)
        for name, buf in model.named_buffers():
            if name == "block_emb":
                buf.copy_(torch.randn(buf.shape, generator=gen))


def sequences(gen: torch.Generator, rows: int, length: int, vocab: int, pair: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded random token rows: row 0 is full, the others hold between length/2 and length tokens.

    With `pair`, the first quarter of each row is segment A (token type 0) and the rest segment B.
    """
    ids = torch.randint(5, vocab, (rows, length), generator=gen)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=gen)
    lengths[0] = length
    positions = torch.arange(length)[None]
    mask = (positions < lengths[:, None]).long()
    types = ((positions >= length // 4) & mask.bool()).long() if pair else torch.zeros_like(ids)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}  # [PAD] = 0


def compare(name: str, ours: dict[str, torch.Tensor], port: dict[str, torch.Tensor], strict: bool) -> float:
    """Max abs diff over the floating outputs; with `strict`, integer and bool outputs must be equal too.

    Without `strict` (bf16 against fp32), integer outputs such as a predicted span are not compared.
    """
    if set(ours) != set(port):
        raise AssertionError(f"{name}: ours has outputs {sorted(ours)}, the port {sorted(port)}")
    worst = 0.0
    for key, ref in port.items():
        got = ours[key]
        if not strict and not ref.dtype.is_floating_point:
            continue
        if tuple(got.shape) != tuple(ref.shape):
            raise AssertionError(f"{name}.{key}: shape {tuple(got.shape)} != port {tuple(ref.shape)}")
        if ref.dtype.is_floating_point:
            if ref.numel():
                worst = max(worst, (got.double() - ref.double()).abs().max().item())
        elif strict and not torch.equal(got, ref):
            raise AssertionError(f"{name}.{key}: {got.tolist()} != port {ref.tolist()}")
    return worst


# -- workloads ---------------------------------------------------------------------------------------


class Builder:
    """Builds (port, ours) model pairs with equal weights: the port's first, ours from its saved files."""

    def __init__(self, sizes: Sizes, with_port: bool, workdir: Path) -> None:
        self.sizes = sizes
        self.with_port = with_port
        self.workdir = workdir

    def pair(
        self, name: str, seed: int, port_kwargs: dict[str, Any] | None = None, ours_kwargs: dict[str, Any] | None = None
    ) -> tuple[nn.Module | None, nn.Module]:
        ours_cls = getattr(realm, name)
        config = realm.RealmConfig(**self.sizes.config)
        torch.manual_seed(seed)
        if not self.with_port:
            ours = ours_cls(config, **(ours_kwargs or {}))
            randomize_(ours, seed, config.initializer_range)
            return None, ours.eval()
        port = getattr(transformers, name)(transformers.RealmConfig(**self.sizes.config), **(port_kwargs or {}))
        randomize_(port, seed, config.initializer_range)
        directory = self.workdir / name
        # pytorch_model.bin: the port refuses safetensors for the classes with undeclared shared tensors.
        port.save_pretrained(directory, safe_serialization=False)
        ours = ours_cls.from_pretrained(directory, **(ours_kwargs or {}))
        return port.eval(), ours.eval()


def bench_embedder(b: Builder, batch: int, length: int) -> Bench:
    port, ours = b.pair("RealmEmbedder", seed=1)
    inputs = sequences(torch.Generator().manual_seed(10), batch, length, ours.config.vocab_size)
    return Bench(
        "RealmEmbedder",
        f"{batch} x {length} tokens",
        lambda: ours(**inputs),
        (lambda: port(**inputs)) if port is not None else None,
        lambda out: {"projected_score": out.projected_score},
    )


def bench_scorer(b: Builder) -> Bench:
    s = b.sizes
    port, ours = b.pair("RealmScorer", seed=2)
    gen = torch.Generator().manual_seed(20)
    vocab = ours.config.vocab_size
    inputs = sequences(gen, s.scorer_queries, s.scorer_len, vocab)
    candidates = sequences(gen, s.scorer_queries * s.num_candidates, s.scorer_len, vocab)
    for key, value in candidates.items():
        inputs[f"candidate_{key}"] = value.view(s.scorer_queries, s.num_candidates, s.scorer_len)
    return Bench(
        "RealmScorer",
        f"{s.scorer_queries} queries x {s.num_candidates} candidates x {s.scorer_len} tokens",
        lambda: ours(**inputs),
        (lambda: port(**inputs)) if port is not None else None,
        lambda out: {k: getattr(out, k) for k in ("relevance_score", "query_score", "candidate_score")},
    )


def bench_encoder(b: Builder) -> Bench:
    s = b.sizes
    port, ours = b.pair("RealmKnowledgeAugEncoder", seed=3)
    gen = torch.Generator().manual_seed(30)
    c, t = s.num_candidates, s.encoder_len
    joint = sequences(gen, s.encoder_batch * c, t, ours.config.vocab_size, pair=True)
    inputs = {k: v.view(s.encoder_batch, c, t) for k, v in joint.items()}
    inputs["relevance_score"] = torch.randn(s.encoder_batch, c, generator=gen)
    targets = torch.randint(5, ours.config.vocab_size, (s.encoder_batch, t), generator=gen)
    masked = torch.rand(s.encoder_batch, t, generator=gen) < 0.15
    masked[:, 1] = True  # at least one target per row
    inputs["labels"] = torch.where(masked, targets, torch.full_like(targets, -100))
    return Bench(
        "RealmKnowledgeAugEncoder",
        f"{s.encoder_batch} x {c} candidates x {t} tokens, MLM loss",
        lambda: ours(**inputs),
        (lambda: port(**inputs)) if port is not None else None,
        lambda out: {"loss": out.loss, "logits": out.logits},
    )


def bench_reader(b: Builder) -> Bench:
    s = b.sizes
    port, ours = b.pair("RealmReader", seed=4)
    gen = torch.Generator().manual_seed(40)
    r, t = s.reader_beam_size, s.reader_len
    inputs = sequences(gen, r, t, ours.config.vocab_size, pair=True)
    block_mask = inputs["token_type_ids"].bool()
    block_mask[torch.arange(r), inputs["attention_mask"].sum(1) - 1] = False  # the closing [SEP]
    inputs["block_mask"] = block_mask
    inputs["relevance_score"] = torch.randn(r, generator=gen)
    starts = torch.full((r, 2), -1)
    starts[0, 0], starts[2, 0], starts[2, 1] = t // 2, t // 3, t // 2 - 4
    ends = starts.clone()
    ends[2, 0] += 2  # a 3-token answer
    inputs.update(start_positions=starts, end_positions=ends, has_answers=(starts >= 0).any(1))
    fields = ("loss", "retriever_loss", "reader_loss", "block_idx", "candidate", "start_pos", "end_pos", "reader_correct")
    return Bench(
        "RealmReader",
        f"{r} blocks x {t} tokens, span losses",
        lambda: ours(**inputs),
        (lambda: port(**inputs)) if port is not None else None,
        lambda out: {k: getattr(out, k) for k in fields},
    )


def word_vocab(workdir: Path) -> tuple[Path, list[str]]:
    """The uncased BERT vocab if its fixture is present, else a word-level vocab of 30522 entries.

    Returns the vocab file and its whole-word (lower-case alphabetic, not special) entries.
    """
    path = BERT_VOCAB
    if not path.is_file():
        path = workdir / "vocab.txt"
        entries = list(SPECIAL_TOKENS) + [f"word{i}" for i in range(30522 - len(SPECIAL_TOKENS))]
        path.write_text("\n".join(entries) + "\n", encoding="utf-8")
    tokens = path.read_text(encoding="utf-8").splitlines()
    words = [w for w in tokens if w.isascii() and w.isalnum() and w.islower() and len(w) > 2]
    return path, words


def bench_openqa(b: Builder) -> Bench:
    s = b.sizes
    vocab_file, words = word_vocab(b.workdir)
    rng = np.random.default_rng(50)
    answer = str(rng.choice(words))
    question = " ".join(rng.choice(words, s.question_words)) + " ?"
    blocks = []
    for _ in range(s.num_block_records):
        text = list(rng.choice(words, s.block_words))
        if rng.random() < 0.5:  # half the blocks hold the answer, early enough to survive truncation
            text[int(rng.integers(len(text) // 2))] = answer
        blocks.append(" ".join(text).encode("utf-8"))
    records = np.array(blocks, dtype=object)

    ours_tok = realm.RealmTokenizerFast(vocab_file=str(vocab_file))
    config = dict(
        b.sizes.config, vocab_size=len(ours_tok), num_block_records=s.num_block_records, reader_seq_len=s.reader_len
    )
    qa_builder = Builder(replace(s, config=config), b.with_port, b.workdir)
    port_tok = None
    port_kwargs: dict[str, Any] = {}
    if qa_builder.with_port:
        port_tok = transformers.RealmTokenizerFast(vocab_file=str(vocab_file))
        port_kwargs["retriever"] = transformers.RealmRetriever(records, port_tok)
    ours_kwargs = {"retriever": realm.RealmRetriever(records, ours_tok)}
    port, ours = qa_builder.pair("RealmForOpenQA", 5, port_kwargs, ours_kwargs)

    question_inputs = dict(ours_tok([question], return_tensors="pt"))
    answer_ids = ours_tok([answer], add_special_tokens=False).input_ids
    if port_tok is not None:
        assert torch.equal(port_tok([question], return_tensors="pt")["input_ids"], question_inputs["input_ids"])
        assert port_tok([answer], add_special_tokens=False).input_ids == answer_ids

    def fields(out: Any) -> dict[str, torch.Tensor]:
        reader = out.reader_output
        keys = ("loss", "retriever_loss", "reader_loss", "block_idx", "candidate", "start_pos", "end_pos")
        return {**{k: getattr(reader, k) for k in keys}, "predicted_answer_ids": out.predicted_answer_ids}

    return Bench(
        "RealmForOpenQA",
        f"1 question of {question_inputs['input_ids'].shape[1]} tokens, {s.num_block_records} blocks, "
        f"reads {s.reader_beam_size} x {s.reader_len}",
        lambda: ours(**question_inputs, answer_ids=answer_ids),
        (lambda: port(**question_inputs, answer_ids=answer_ids)) if port is not None else None,
        fields,
    )


# -- timing ------------------------------------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Timer:
    """Wall time of one call, retaken (at most `max_retakes` times) if other processes used the CPU meanwhile.

    On a shared machine another process taking a core mid-call would slow whichever model happens to run;
    a call counts as disturbed when the CPU time used by other processes exceeds `FOREIGN_CPU_LIMIT` of the
    machine's capacity over the call (0.05 s at least, the resolution of /proc/stat).
    """

    max_retakes: int = 1
    retaken: int = 0
    disturbed: int = 0

    def __call__(self, fn: Callable[[], Any]) -> float:
        for attempt in range(self.max_retakes + 1):
            gc.collect()
            busy, own = busy_cpu_seconds(), own_cpu_seconds()
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
            busy_after = busy_cpu_seconds()
            if busy is None or busy_after is None:
                return wall * 1000.0
            foreign = (busy_after - busy) - (own_cpu_seconds() - own)
            if foreign <= max(FOREIGN_CPU_LIMIT * wall * (os.cpu_count() or 1), 0.05):
                return wall * 1000.0
            if attempt < self.max_retakes:
                self.retaken += 1
        self.disturbed += 1
        return wall * 1000.0


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, timer: Timer) -> dict[str, float]:
    """Median wall time in ms of each function; the functions take turns in every round (in rotating order)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    keys = list(fns)
    times: dict[str, list[float]] = {key: [] for key in keys}
    for round_ in range(repeats):
        for key in keys[round_ % len(keys) :] + keys[: round_ % len(keys)]:
            times[key].append(timer(fns[key]))
    return {key: statistics.median(values) for key, values in times.items()}


def run_bench(make: Callable[[], Bench], warmup: int, repeats: int, timer: Timer) -> Row:
    """Build one workload, check that ours and the port agree, then time port, ours and ours in bf16."""
    bench = make()

    def ours_bf16() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bench.ours()

    fns: dict[str, Callable[[], Any]] = {"ours": bench.ours, "bf16": ours_bf16}
    row = Row(bench.name, bench.workload)
    if bench.port is not None:
        port_fields = bench.fields(bench.port())
        row.max_diff = compare(bench.name, bench.fields(bench.ours()), port_fields, strict=True)
        if not row.max_diff < FP32_ATOL:
            raise AssertionError(f"{bench.name}: fp32 outputs differ from the port's by {row.max_diff:.3g} >= {FP32_ATOL:g}")
        bf16_fields = {k: v.float() if v.dtype.is_floating_point else v for k, v in bench.fields(ours_bf16()).items()}
        row.bf16_diff = compare(bench.name, bf16_fields, port_fields, strict=False)
        fns["port"] = bench.port
    print(f"  {bench.name} ({bench.workload}): outputs checked, timing ...", file=sys.stderr, flush=True)
    times = time_interleaved(fns, warmup, repeats, timer)
    row.ours_ms, row.bf16_ms, row.port_ms = times["ours"], times["bf16"], times.get("port")
    return row


# -- report ------------------------------------------------------------------------------------------


def table(rows: list[Row], with_port: bool) -> str:
    """A plain-text table, one line per workload."""
    if with_port:
        header = ["class", "workload", "port fp32 ms", "ours fp32 ms", "port/ours",
                  "ours bf16 ms", "port/bf16", "max|diff| fp32", "max|diff| bf16"]
        body = [
            [r.name, r.workload, f"{r.port_ms:.1f}", f"{r.ours_ms:.1f}", f"{r.port_ms / r.ours_ms:.2f}x",
             f"{r.bf16_ms:.1f}", f"{r.port_ms / r.bf16_ms:.2f}x", f"{r.max_diff:.1e}", f"{r.bf16_diff:.1e}"]
            for r in rows
            if r.port_ms is not None and r.max_diff is not None and r.bf16_diff is not None
        ]
    else:
        header = ["class", "workload", "ours fp32 ms", "ours bf16 ms", "fp32/bf16"]
        body = [[r.name, r.workload, f"{r.ours_ms:.1f}", f"{r.bf16_ms:.1f}", f"{r.ours_ms / r.bf16_ms:.2f}x"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in body)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and workloads (a smoke test, seconds)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per model (default 5; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model before timing (default 1)")
    parser.add_argument("--classes", nargs="+", choices=CLASSES, default=list(CLASSES), metavar="CLASS",
                        help=f"classes to time (default: all of {', '.join(CLASSES)})")
    parser.add_argument("--block-batch", action="store_true",
                        help="also time RealmEmbedder on 64 x 288 tokens (a block-embedding batch; several minutes)")
    parser.add_argument("--no-port", action="store_true", help="time ours only, even if transformers is importable")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    with_port = transformers is not None and not args.no_port
    if with_port:
        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)

    print(f"realm-lm {realm.__version__} | torch {torch.__version__} | python {platform.python_version()} | "
          f"{torch.get_num_threads()} threads | CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if with_port:
        print(f"port: transformers {transformers.__version__}")
    elif transformers is None:
        print("transformers is not importable: timing realm-lm only (no port comparison)")
    else:
        print("--no-port: timing realm-lm only")
    print(f"config: {'tiny (--quick)' if args.quick else 'BERT-base (the default RealmConfig)'}, fp32 weights | "
          f"warm-up {args.warmup}, median of {repeats} | load average before the run {os.getloadavg()[0]:.2f}")

    start = time.perf_counter()
    rows = []
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench_realm_") as tmp, torch.inference_mode():
        builder = Builder(sizes, with_port, Path(tmp))
        workloads: dict[str, list[Callable[[], Bench]]] = {
            "RealmEmbedder": [partial(bench_embedder, builder, sizes.embed_batch, sizes.embed_len)],
            "RealmScorer": [partial(bench_scorer, builder)],
            "RealmKnowledgeAugEncoder": [partial(bench_encoder, builder)],
            "RealmReader": [partial(bench_reader, builder)],
            "RealmForOpenQA": [partial(bench_openqa, builder)],
        }
        if args.block_batch:
            workloads["RealmEmbedder"].append(partial(bench_embedder, builder, sizes.block_batch, sizes.block_len))
        for name in CLASSES:
            if name in args.classes:
                for make in workloads[name]:
                    rows.append(run_bench(make, args.warmup, repeats, timer))
                    gc.collect()  # free this workload's models before building the next
    elapsed = time.perf_counter() - start

    print()
    print(table(rows, with_port))
    print()
    if with_port:
        print("port/ours > 1: ours is faster. bf16: ours under torch.autocast('cpu', dtype=torch.bfloat16), against "
              f"the port in fp32. fp32 outputs agree within {FP32_ATOL:g} (checked before timing).")
    print(f"{timer.retaken} timed call(s) retaken because other processes used more than {FOREIGN_CPU_LIMIT:.0%} of "
          f"the CPU meanwhile; {timer.disturbed} kept although disturbed (after {timer.max_retakes} retakes).")
    print(f"total {elapsed:.0f} s; load average after the run {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A tiny, offline, end-to-end REALM example: toy corpus -> block embeddings -> retrieve -> read -> answer.

The model is randomly initialised, so answers are arbitrary: this shows the pipeline and the API on any
machine in a second, nothing about quality.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from realm.config import RealmConfig
from realm.modeling.openqa import RealmForOpenQA
from realm.retrieval import RealmRetriever
from realm.tokenization import RealmTokenizerFast

TOY_CORPUS = (
    "alan turing was a pioneer of theoretical computer science and artificial intelligence .",
    "paris is the capital and most populous city of france .",
    "the nile is a major river in northeastern africa , flowing into the mediterranean sea .",
    "ada lovelace wrote the first algorithm intended to be carried out by a machine .",
    "mount everest is the highest mountain above sea level , in the himalayas .",
    "the python programming language was created by guido van rossum .",
    "marie curie was the first woman to win a nobel prize .",
    "tokyo is the capital of japan and its largest city .",
)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class Evidence:
    block_id: int
    text: str
    retrieval_probability: float


@dataclass
class TinyDemoResult:
    question: str
    answer: str
    evidence: list[Evidence]


def _toy_tokenizer(corpus: tuple[str, ...], directory: Path) -> RealmTokenizerFast:
    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n", encoding="utf-8")
    return RealmTokenizerFast(vocab_file=str(vocab))


def run_tiny_demo(question: str, seed: int = 0, device: str | torch.device = "cpu") -> TinyDemoResult:
    """Answer `question` over the toy corpus with a random tiny REALM model."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _toy_tokenizer(TOY_CORPUS, Path(tmp))
    config = RealmConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        retriever_proj_size=32,
        span_hidden_size=32,
        max_span_width=4,
        reader_beam_size=3,
        reader_seq_len=48,
        num_block_records=len(TOY_CORPUS),
        max_position_embeddings=64,
    )
    model = RealmForOpenQA(config, retriever=RealmRetriever(list(TOY_CORPUS), tokenizer)).to(device).eval()
    with torch.no_grad():
        # Index the corpus: one embedding per block, from the model's own embedder.
        blocks = tokenizer(list(TOY_CORPUS), padding=True, return_tensors="pt").to(device)
        model.block_emb = model.embedder(**blocks).projected_score  # [N_blocks, D]
        inputs = tokenizer([question], return_tensors="pt").to(device)
        out = model(**inputs)
        query = model.embedder(**inputs).projected_score  # [1, D]
        probs = (model.block_emb @ query[0]).softmax(dim=0)  # [N_blocks]
    evidence = [
        Evidence(int(i), TOY_CORPUS[int(i)], float(probs[int(i)])) for i in out.retrieved_block_ids.tolist()
    ]
    return TinyDemoResult(question, tokenizer.decode(out.predicted_answer_ids.tolist()), evidence)

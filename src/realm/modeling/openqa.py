"""`RealmForOpenQA`: question -> embed -> retrieve top-K blocks -> read -> answer span (Sec. 3.5 of the spec).

Shapes: B questions, Q question tokens, N corpus blocks, D retriever_proj_size, K retrieved blocks
(searcher_beam_size when training, reader_beam_size in eval), R blocks read, T reader tokens, H hidden.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from realm.config import RealmConfig
from realm.index.base import Index, check_index_size
from realm.index.exact import ExactIndex
from realm.modeling.checkpoint import resolve_weights
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.outputs import RealmForOpenQAOutput, RealmReaderOutput
from realm.modeling.pretrained import RealmPreTrainedModel
from realm.modeling.reader import RealmReader
from realm.qa import read, retrieve
from realm.retrieval import RealmRetriever


class RealmForOpenQA(RealmPreTrainedModel):
    """End-to-end open-domain QA: the embedder searches `block_emb`, the retriever builds reader inputs,
    the reader extracts the answer.

    Search goes through `index` (any `realm.index.Index`: exact, FAISS, sharded) when one is given. Without
    one, the port's `block_emb` [num_block_records, D] buffer is searched exactly; it stays a persistent
    buffer, as in the port (the released checkpoints hold it), allocated uninitialised and filled by
    `from_pretrained`. Unlike the port, a batch of questions is accepted (see `forward`).
    """

    # A checkpoint without block embeddings still loads: they can be computed for any corpus.
    optional_key_prefixes = ("block_emb", "embedder.cls.predictions.", "reader.cls.predictions.")

    def __init__(
        self, config: RealmConfig, retriever: RealmRetriever | None = None, index: Index | None = None
    ) -> None:
        super().__init__(config)
        self.embedder = RealmEmbedder(config)
        self.reader = RealmReader(config)
        self.register_buffer("block_emb", torch.empty(config.num_block_records, config.retriever_proj_size))
        self.retriever = retriever
        self.index = index

    @property
    def searcher(self) -> Index:
        """The index searched: `index` if set, else an exact index over the `block_emb` buffer."""
        return self.index if self.index is not None else ExactIndex(self.block_emb)

    @property
    def searcher_beam_size(self) -> int:
        return self.config.searcher_beam_size if self.training else self.config.reader_beam_size

    def block_embedding_to(self, device: torch.device | str) -> None:
        """Move only `block_emb` (e.g. keep the 6.8 GB matrix on CPU after `model.to("cuda")`)."""
        self.block_emb = self.block_emb.to(device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        answer_ids: Any = None,
        return_dict: bool | None = None,
    ) -> RealmForOpenQAOutput | tuple:
        """
        Args:
            input_ids, attention_mask, token_type_ids: [B, Q] questions.
            answer_ids: the gold answers, each a list of token ids without special tokens. For one question,
                a list of answers (the port's format, e.g. `tokenizer(answers, add_special_tokens=False).input_ids`);
                for B questions, a list of B such lists. Tensors work too; -1 entries are padding.
        Returns:
            `RealmForOpenQAOutput`. For B = 1 exactly the port's fields; for B > 1 every reader field gains a
            leading batch axis, `loss` is the mean over questions and `predicted_answer_ids` is a list. All
            questions' reader inputs are padded to the longest, so `candidate` and `reader_correct`'s span axis
            refer to that common length.
        """
        if self.retriever is None:
            raise ValueError(
                "RealmForOpenQA needs a retriever to read blocks: "
                "RealmForOpenQA.from_pretrained(path, retriever=RealmRetriever.from_pretrained(path))"
            )
        batch = input_ids.shape[0]
        answers = _answers_per_question(answer_ids, batch)
        searcher = self.searcher
        check_index_size(len(searcher), len(self.retriever))

        # Retrieve: MIPS over every block, then differentiable retrieval logits of the top K.
        retrieved = retrieve(
            self.embedder, searcher, input_ids, attention_mask, token_type_ids, k=self.searcher_beam_size,
            embed_blocks=searcher.reconstruct,
        )  # fmt: skip
        block_ids = retrieved.block_ids  # [B, K]

        # Read the top R blocks of every question in one trunk call; reader inputs (and the answers' positions)
        # for all K blocks, as the port, so that the retriever loss's positives are its own.
        reading = read(
            self.reader, self.retriever, block_ids, input_ids[:, None], retrieved.retrieval_logits,
            max_length=self.config.reader_seq_len, answer_ids=answers, num_read=self.config.reader_beam_size,
        )  # fmt: skip
        outputs, concat = reading.outputs, reading.inputs

        # Decode: the predicted span's WordPiece ids inside its block (inclusive end).
        predicted = [
            concat["input_ids"][b, out.block_idx][int(out.start_pos) : int(out.end_pos) + 1]
            for b, out in enumerate(outputs)
        ]
        if batch == 1:
            result = RealmForOpenQAOutput(outputs[0], predicted[0], block_ids[0].to(input_ids.device))
        else:
            result = RealmForOpenQAOutput(_stack_reader_outputs(outputs), predicted, block_ids.to(input_ids.device))
        return result.to_tuple() if return_dict is False else result


def save_openqa(directory: Path, embedder: RealmEmbedder, reader: RealmReader, config: RealmConfig) -> None:
    """Write a `RealmForOpenQA` checkpoint of the two towers, without block embeddings."""
    with torch.device("meta"):  # a shell: no memory, no initialisation, no RNG draws
        shell = RealmForOpenQA(config.copy(num_block_records=0))
    shell.embedder, shell.reader = embedder, reader
    shell.block_emb = torch.zeros(0, config.retriever_proj_size)
    shell.save_pretrained(directory)


def load_towers(
    checkpoint: str | os.PathLike[str], config: RealmConfig, device: torch.device
) -> tuple[RealmEmbedder, RealmReader]:
    """The embedder and reader of a `RealmForOpenQA` checkpoint (a `block_emb` in it is not read)."""
    weights = resolve_weights(checkpoint)
    embedder, reader = RealmEmbedder(config), RealmReader(config)
    embedder.load_checkpoint(weights, prefix="embedder.")
    reader.load_checkpoint(weights, prefix="reader.")
    return embedder.to(device), reader.to(device)

def _answers_per_question(answer_ids: Any, batch: int) -> list[Any] | None:
    """Split `answer_ids` into one entry per question (the port's one-question format is accepted for B = 1)."""
    if answer_ids is None:
        return None
    if isinstance(answer_ids, torch.Tensor):
        answer_ids = answer_ids.tolist()
    depth, probe = 0, answer_ids
    while isinstance(probe, list | tuple) and probe:
        depth, probe = depth + 1, probe[0]
    if depth <= 2:  # [answers][tokens]: one question's answers
        if batch != 1:
            raise ValueError(f"answer_ids holds one question's answers but the batch has {batch} questions")
        return [answer_ids]
    if len(answer_ids) != batch:
        raise ValueError(f"answer_ids has answers for {len(answer_ids)} questions but the batch has {batch}")
    return list(answer_ids)


def _stack_reader_outputs(outputs: list[RealmReaderOutput]) -> RealmReaderOutput:
    first = outputs[0]
    stacked = {}
    for name in first.keys():
        values = [getattr(o, name) for o in outputs]
        stacked[name] = torch.stack(values)
    if first.loss is not None:
        stacked["loss"] = stacked["loss"].mean()
    return RealmReaderOutput(**stacked)

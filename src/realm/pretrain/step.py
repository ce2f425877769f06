"""The REALM pre-training step (the paper's Sec. 2-3; Google's `language/realm/model.py`).

For a batch of masked sentences x (salient spans replaced by [MASK]):

    Embed.      q = Embed_query(x)                                              [B, D]
    Retrieve.   the top `num_candidates` blocks of the CURRENT index by q . e, without gradient; the
                sentence's own source block removed (else the masked tokens could be copied from it);
                the null block (empty title and text) put first; K = num_candidates candidates in all.
    Re-embed.   the K candidates with the document tower WITH gradient: the index only selects blocks,
                the scores are fresh, so the document tower learns even though the index is stale. (A
                frozen document tower is not re-run: its vectors are the index's, see `embed_candidates`.)
                retrieval_logits = q . Embed_doc(z)                               [B, K]
    Read.       the knowledge-augmented encoder over `[CLS] x [SEP] z.text [SEP]` (the original drops the
                block's title here) -> MLM logits at the masked positions          [B, K, M, V]
    Marginalise. per masked token (the released code's loss, the default) or per sentence (the paper's
                Eq. 2), see `realm.objectives`. The gradient reaches the query tower, the document tower
                and the encoder.

Also measured, without gradient: retrieval utility (the paper's Appendix D: the marginal log-likelihood
of the masked tokens minus their log-likelihood given the null block alone, per masked token) and
masked-token accuracy of the marginal prediction and of the null block's.

Only the masked positions go through the MLM head: the V-wide projection of every position of every
(sentence, block) pair would dominate the step and change no number.

Shapes: B sentences, Q sentence tokens, K candidates (null first), T joint tokens, M masks per sentence
(at most), H hidden, V vocab, D projection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from realm.corpus import BlockStore
from realm.distributed import freeze_unused
from realm.index import Index
from realm.index.base import check_index_size
from realm.inputs import block_inputs, pad_sequences
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.objectives import (
    IGNORE_INDEX,
    candidate_token_log_probs,
    marginal_mlm_loss,
    marginal_mlm_loss_per_sequence,
    marginal_token_log_likelihood,
    retrieval_utility,
)
from realm.qa import retrieve

LOSSES = ("per_token", "per_sequence")

# Parameters no pre-training forward uses (the encoder's [CLS] pooler, the MLM heads the released embedder
# checkpoints carry): frozen, so that DistributedDataParallel sees every trainable parameter receive a
# gradient. They are saved unchanged.
UNUSED_PARAMETER_PREFIXES = ("encoder.realm.pooler.", "query_embedder.cls.predictions.", "block_embedder.cls.predictions.")


@dataclass
class PretrainOutput:
    """One batch's loss and the quantities REALM logs.

    Attributes:
        loss: [] the training loss (mean over the batch's masked tokens).
        masked_tokens: [] how many masked tokens the batch has.
        marginal_log_likelihood: [] summed over masked tokens, log p(y_t | x) marginalised per token.
        null_log_likelihood: [] summed over masked tokens, log p(y_t | null block, x).
        correct: [] masked tokens the marginal prediction gets right; null_correct: ... the null block's.
        candidate_ids: [B, K] the candidates' block ids, -1 for the null block.
    """

    loss: torch.Tensor
    masked_tokens: torch.Tensor
    marginal_log_likelihood: torch.Tensor
    null_log_likelihood: torch.Tensor
    correct: torch.Tensor
    null_correct: torch.Tensor
    candidate_ids: torch.Tensor

    @property
    def retrieval_utility(self) -> torch.Tensor:
        """Mean log-likelihood gain per masked token over the null block alone (> 0: retrieval helps)."""
        return retrieval_utility(self.marginal_log_likelihood, self.null_log_likelihood, self.masked_tokens)


class RealmPretrainer(nn.Module):
    """Query tower, document tower and knowledge-augmented encoder, with the index and store they read.

    Wrap it in `DistributedDataParallel` as a whole: its forward is one training step's forward pass. The
    index is not a module: `set_index` swaps it between steps (the refresh).

    Args:
        query_embedder, block_embedder: the two towers; pass the same module to share them (as the
            released ICT and REALM checkpoints do).
        encoder: the knowledge-augmented encoder.
        store: the blocks the index was built from.
        num_candidates: C, including the null block (the original's 8); 1 reads the null block only
            (plain MLM: the no-retrieval baseline).
        block_seq_len: tokens of a candidate's `[CLS] title [SEP] text [SEP]` for the document tower (288).
        joint_seq_len: tokens of `[CLS] sentence [SEP] text [SEP]` for the encoder (96 + 288).
        loss: "per_token" (the released code's) or "per_sequence" (the paper's Eq. 2).
    """

    def __init__(
        self,
        query_embedder: RealmEmbedder,
        block_embedder: RealmEmbedder,
        encoder: RealmKnowledgeAugEncoder,
        store: BlockStore,
        *,
        num_candidates: int = 8,
        block_seq_len: int = 288,
        joint_seq_len: int = 384,
        loss: str = "per_token",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates counts the null block and must be >= 1, got {num_candidates}")
        if len(store) < num_candidates:
            raise ValueError(
                f"the store has {len(store)} blocks, fewer than num_candidates={num_candidates} (one may be "
                "the source block, removed): lower num_candidates or use a larger corpus"
            )
        self.query_embedder = query_embedder
        self.block_embedder = block_embedder
        self.encoder = encoder
        self.store = store
        self.num_candidates = num_candidates
        self.block_seq_len = block_seq_len
        self.joint_seq_len = joint_seq_len
        self.loss_kind = loss
        self.cls_id, self.sep_id, self.pad_id = store.special_ids
        self.index: Index | None = None
        self.timings: dict[str, float] = {}
        freeze_unused(self, UNUSED_PARAMETER_PREFIXES)
        if num_candidates == 1:
            # The null block alone: plain MLM, the baseline that shows what retrieval adds. The towers'
            # scores then cancel in the softmax and receive no gradient.
            for tower in (query_embedder, block_embedder):
                tower.requires_grad_(False)

    @contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        # Forward-pass seconds per part, for the logs and benchmarks/bench_pretrain.py (the caller resets).
        start = time.perf_counter()
        yield
        self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - start

    @property
    def shares_embedders(self) -> bool:
        return self.query_embedder is self.block_embedder

    def set_index(self, index: Index) -> None:
        """Search `index` from the next forward on (it must hold one vector per block of the store)."""
        check_index_size(len(index), len(self.store))
        self.index = index

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        source_block: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> PretrainOutput:
        """
        Args:
            input_ids, attention_mask: [B, Q] masked sentences `[CLS] ... [SEP]`, right-padded.
            labels: [B, Q] the original ids at masked positions, -100 elsewhere.
            source_block: [B] the block each sentence was taken from (never a candidate).
            token_type_ids: [B, Q] ignored beyond its shape (sentences are segment 0).
        """
        if self.index is None:
            raise RuntimeError("no index: call set_index(...) before the first step")
        device = input_ids.device

        # Embed, retrieve (the null block first, the source block never), re-embed: the index only selects.
        retrieved = retrieve(
            self.query_embedder, self.index, input_ids, attention_mask, k=self.num_candidates,
            exclude=source_block.tolist(), null_block=True,
            embed_blocks=lambda ids: self.embed_candidates(ids, device), timer=self._timed,
        )  # fmt: skip
        candidate_ids, retrieval_logits = retrieved.block_ids, retrieved.retrieval_logits  # [B, K], -1 = null

        # Read.
        sentences = [row[mask.bool()].tolist() for row, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
        joint = self.joint_inputs(sentences, candidate_ids, device)
        positions, masked_labels, mlm_mask = masked_positions(labels)  # each [B, M]
        with self._timed("encoder"):
            logits = self.masked_logits(joint, positions.to(device))  # [B, K, M, V]
        masked_labels, mlm_mask = masked_labels.to(device), mlm_mask.to(device)

        # Marginalise.
        if self.loss_kind == "per_token":
            loss = marginal_mlm_loss(logits, masked_labels, retrieval_logits, mlm_mask)
        else:
            loss = marginal_mlm_loss_per_sequence(logits, masked_labels, retrieval_logits, mlm_mask)
        with torch.no_grad():
            stats = _statistics(logits.detach(), masked_labels, retrieval_logits.detach(), mlm_mask)
        return PretrainOutput(loss=loss, candidate_ids=candidate_ids, **stats)

    # -- the parts ---------------------------------------------------------------------------------

    def embed_candidates(self, candidate_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """[B, K, D] document-tower embeddings of the candidates, as the index builder feeds blocks.

        A frozen document tower (no parameter trains) is not run on the retrieved blocks: their vectors are
        the index's own (`Index.reconstruct`), which that same tower wrote; re-embedding them would cost
        a tower forward per candidate and change nothing but the dropout noise (and the index's storage
        rounding). The null block, which no index holds, is always embedded.
        """
        b, c = candidate_ids.shape
        real = candidate_ids[:, 1:].reshape(-1).tolist()
        reuse = self.index is not None and not any(p.requires_grad for p in self.block_embedder.parameters())
        # The null block is embedded once, as `[CLS] [SEP] [SEP]`, and shared by the batch.
        sequences = [block_inputs([], [], self.cls_id, self.sep_id, self.block_seq_len)]
        if not reuse:
            titles, texts = self.store.title_ids(real), self.store.token_ids(real)
            sequences += [block_inputs(t, x, self.cls_id, self.sep_id, self.block_seq_len) for t, x in zip(titles, texts, strict=True)]
        ids, types, mask = pad_sequences([s for s, _ in sequences], [t for _, t in sequences], self.pad_id, device)
        emb = self.block_embedder(ids, attention_mask=mask, token_type_ids=types).projected_score  # [1 (+ B(K-1)), D]
        null = emb[:1]
        if reuse:
            assert self.index is not None
            stored = self.index.reconstruct(torch.tensor(real, dtype=torch.long)) if real else emb[:0]
            rest = stored.to(device=device, dtype=emb.dtype).view(b, c - 1, emb.shape[-1])  # [B, K - 1, D]
        else:
            rest = emb[1:].view(b, c - 1, emb.shape[-1])
        return torch.cat([null.expand(b, 1, -1), rest], dim=1)

    def joint_inputs(
        self, sentences: Sequence[Sequence[int]], candidate_ids: torch.Tensor, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """`[CLS] sentence [SEP] text [SEP]` for every (sentence, candidate): each [B, K, T] (types 0 | 1)."""
        b, c = candidate_ids.shape
        texts = self.store.token_ids([i for i in candidate_ids.reshape(-1).tolist() if i >= 0])
        ids, types, cursor = [], [], 0
        for row in range(b):
            sentence = list(sentences[row])
            room = max(self.joint_seq_len - len(sentence) - 1, 0)
            for col in range(c):
                text: list[int] = []
                if candidate_ids[row, col] >= 0:
                    text, cursor = list(texts[cursor])[:room], cursor + 1
                ids.append(sentence + text + [self.sep_id])
                types.append([0] * len(sentence) + [1] * (len(text) + 1))
        ids_t, types_t, mask_t = pad_sequences(ids, types, self.pad_id, device)
        shape = (b, c, ids_t.shape[-1])
        return {"input_ids": ids_t.view(shape), "token_type_ids": types_t.view(shape), "attention_mask": mask_t.view(shape)}

    def masked_logits(self, joint: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """[B, K, M, V] MLM logits of the encoder at the masked positions of each (sentence, block) pair."""
        b, c, t = joint["input_ids"].shape
        hidden = self.encoder.realm(
            joint["input_ids"].view(b * c, t),
            attention_mask=joint["attention_mask"].view(b * c, t),
            token_type_ids=joint["token_type_ids"].view(b * c, t),
        ).last_hidden_state.view(b, c, t, -1)  # [B, K, T, H]
        m = positions.shape[1]
        index = positions[:, None, :, None].expand(b, c, m, hidden.shape[-1])
        return self.encoder.cls(hidden.gather(2, index))  # [B, K, M, V]


def masked_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The labelled positions of each row, left-aligned and padded: positions, labels, mask, each [B, M].

    Sentences come first in the joint inputs, so a sentence position is also its joint position.
    """
    labelled = labels != IGNORE_INDEX  # [B, Q]
    m = max(int(labelled.sum(dim=1).max()), 1) if labels.numel() else 1
    b = labels.shape[0]
    positions = torch.zeros((b, m), dtype=torch.long)
    targets = torch.full((b, m), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, m), dtype=torch.long)
    for row in range(b):
        where = labelled[row].nonzero().flatten().cpu()
        positions[row, : len(where)] = where
        targets[row, : len(where)] = labels[row, where].cpu()
        mask[row, : len(where)] = 1
    return positions, targets, mask


def _statistics(
    logits: torch.Tensor, labels: torch.Tensor, retrieval_logits: torch.Tensor, mlm_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Sums over the masked tokens: marginal and null log-likelihoods, correct predictions of each."""
    mask = mlm_mask.float()
    token_logp = candidate_token_log_probs(logits, labels)  # [B, K, M]
    marginal = marginal_token_log_likelihood(token_logp, retrieval_logits)  # [B, M]
    null = token_logp[:, 0]  # [B, M] log p(y_t | null, x): the null block is candidate 0
    block_logp = retrieval_logits.float().log_softmax(dim=-1)  # [B, K]
    # The marginal prediction: argmax_y sum_c p(z_c | x) p(y | z_c, x).
    predictive = (block_logp[:, :, None, None] + logits.float().log_softmax(dim=-1)).logsumexp(dim=1)  # [B, M, V]
    correct = (predictive.argmax(dim=-1) == labels).float() * mask
    null_correct = (logits[:, 0].argmax(dim=-1) == labels).float() * mask
    return {
        "masked_tokens": mask.sum(),
        "marginal_log_likelihood": (marginal * mask).sum(),
        "null_log_likelihood": (null * mask).sum(),
        "correct": correct.sum(),
        "null_correct": null_correct.sum(),
    }

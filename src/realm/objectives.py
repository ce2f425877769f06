"""The paper's quantities as pure functions: the marginal likelihoods of pre-training and fine-tuning, the
retrieval utility, and ICT's in-batch softmax loss.

Every retrieval-augmented loss here takes `retrieval_logits` [B, K]: the relevance f(x, z) = q . e_z
of each candidate, whose softmax over the candidates is p(z | x). In pre-training candidate 0 is the null
block (`realm.qa.search_blocks` puts it first), so p(y | null, x) is the encoder reading no evidence.

Shapes: the README's glossary (B batch, K candidate blocks (retrieved, or given), T tokens, M masked positions,
V vocab, R read, S span candidates, A gold spans per block, D projection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def marginal_mlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    retrieval_logits: torch.Tensor,
    mlm_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """REALM's masked-LM loss, marginalised over the retrieved blocks per masked token.

    This is the variant of Google's released code and of the transformers port (not the per-sequence
    marginal of the paper's Eq. 2):

        log p(y_t | x) = logsumexp_c [ log p(z_c | x) + log p(y_t | z_c, x) ]
        loss = - sum_{b,t} m[b,t] log p(y_bt | x_b) / sum_{b,t} m[b,t]

    Positions labelled -100 contribute 0 to the numerator; with `mlm_mask=None` every position counts in
    the denominator (so the loss is the sum over masked tokens divided by B*T), exactly as the port.

    Args:
        logits: [B, K, T, V] masked-LM logits of each (query, block) pair.
        labels: [B, T] target ids, -100 where no prediction is asked for.
        retrieval_logits: [B, K]; softmax over K gives p(z | x).
        mlm_mask: [B, T], 1 where a position counts; None for all ones.
    """
    token_logp = candidate_token_log_probs(logits, labels)  # [B, K, T]
    marginal = marginal_token_log_likelihood(token_logp, retrieval_logits)  # [B, T]
    mask = torch.ones_like(marginal) if mlm_mask is None else mlm_mask.to(marginal.dtype)
    return -torch.nansum((marginal * mask).sum() / mask.sum())


def marginal_token_log_likelihood(token_logp: torch.Tensor, retrieval_logits: torch.Tensor) -> torch.Tensor:
    """log p(y_t | x) = logsumexp_c [ log p(z_c | x) + log p(y_t | z_c, x) ] of each position: [B, T]
    (positions labelled -100 give log sum_c p(z_c | x) = 0 up to rounding: mask them).

    Args:
        token_logp: [B, K, T] log p(y_t | z_c, x) (`candidate_token_log_probs`).
        retrieval_logits: [B, K]; softmax over K gives p(z | x).
    """
    block_logp = retrieval_logits.float().log_softmax(dim=-1)[:, :, None]  # [B, K, 1]
    return (block_logp + token_logp).logsumexp(dim=1)  # [B, T]


def retrieval_utility(
    marginal_log_likelihood: torch.Tensor | float, null_log_likelihood: torch.Tensor | float, masked_tokens: torch.Tensor | float
) -> torch.Tensor | float:
    """The paper's retrieval utility (Appendix D), per masked token:

        RU = ( sum_t log p(y_t | x) - sum_t log p(y_t | null, x) ) / max(#masked tokens, 1)

    > 0 when retrieving helps predict the masked tokens over reading the null block alone. The sums may be
    over a batch or over a logging window (the ratio of the sums, not a mean of per-batch ratios).
    """
    if isinstance(masked_tokens, torch.Tensor):
        return (marginal_log_likelihood - null_log_likelihood) / masked_tokens.clamp(min=1)
    return (marginal_log_likelihood - null_log_likelihood) / max(masked_tokens, 1.0)


def candidate_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y_t | z_c, x) of each label under each candidate block: [B, K, T], 0 where labelled -100.

    Args:
        logits: [B, K, T, V] masked-LM logits of each (query, block) pair.
        labels: [B, T] target ids, -100 where no prediction is asked for.
    """
    b, c, t, v = logits.shape
    targets = labels[:, None, :].expand(b, c, t)  # [B, K, T]
    return -F.cross_entropy(
        logits.reshape(-1, v).float(), targets.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
    ).view(b, c, t)


def marginal_mlm_loss_per_sequence(
    logits: torch.Tensor, labels: torch.Tensor, retrieval_logits: torch.Tensor, mlm_mask: torch.Tensor
) -> torch.Tensor:
    """The paper's Eq. 2: one marginal over the blocks for all masked tokens of a sequence together,

        log p(y | x) = logsumexp_c [ log p(z_c | x) + sum_t m[t] log p(y_t | z_c, x) ]
        loss = - sum_b log p(y_b | x_b) / sum_{b,t} m[b,t]

    (normalised by the number of masked tokens, so it is on the per-token variant's scale). It asks one
    block to explain every masked token of the sentence; the per-token variant lets each token pick its
    own block.

    Args: as `marginal_mlm_loss`, with `mlm_mask` [B, T] required.
    """
    mask = mlm_mask.float()
    token_logp = candidate_token_log_probs(logits, labels) * mask[:, None, :]  # [B, K, T]
    block_logp = retrieval_logits.float().log_softmax(dim=-1)  # [B, K]
    sequence = (block_logp + token_logp.sum(dim=-1)).logsumexp(dim=-1)  # [B]
    return -sequence.sum() / mask.sum()


def marginal_log_likelihood_loss(logits: torch.Tensor, is_correct: torch.Tensor) -> torch.Tensor:
    """-log sum_{correct} softmax(logits): the negative marginal log-likelihood of the correct set.

    The port masks with `finfo(dtype).min` rather than -inf, so an empty correct set gives a huge finite
    value that the caller multiplies by zero; we keep that arithmetic.

    Args:
        logits: [..., X] scores.
        is_correct: [..., X] bool.
    Returns:
        [...] losses.
    """
    wrong = (1.0 - is_correct.to(logits.dtype)) * torch.finfo(logits.dtype).min
    return logits.logsumexp(dim=-1) - (logits + wrong).logsumexp(dim=-1)


def correct_spans(
    starts: torch.Tensor, ends: torch.Tensor, gold_starts: torch.Tensor, gold_ends: torch.Tensor
) -> torch.Tensor:
    """Which span candidates equal a gold span.

    Args:
        starts, ends: [S] span candidates (inclusive ends).
        gold_starts, gold_ends: [R, A] gold spans, -1 padded.
    Returns:
        [R, S] bool.
    """
    hit_start = starts[None, None, :] == gold_starts[:, :, None]  # [R, A, S]
    hit_end = ends[None, None, :] == gold_ends[:, :, None]  # [R, A, S]
    return (hit_start & hit_end).any(dim=1)


def reader_losses(
    retrieval_logits: torch.Tensor,
    reader_logits: torch.Tensor,
    has_answers: torch.Tensor,
    reader_correct: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORQA/REALM fine-tuning losses for one question.

    retriever loss: marginal likelihood over the K retrieved blocks of those containing an answer;
    reader loss: marginal likelihood over all (block, span) pairs of the joint score
    (retrieval logit + span logit) of the correct spans. Each is zero when it has no positive.

    Args:
        retrieval_logits: [K].
        reader_logits: [R, S] joint span scores.
        has_answers: [K] bool, block contains an answer.
        reader_correct: [R, S] bool, span equals a gold span.
    Returns:
        retriever_loss, reader_loss: scalars.
    """
    retriever_loss = marginal_log_likelihood_loss(retrieval_logits, has_answers)
    reader_loss = marginal_log_likelihood_loss(reader_logits.reshape(-1), reader_correct.reshape(-1))
    # The port multiplies by any(positive); `where` gives the same 0 and also when every logit is masked,
    # where the product would be inf * 0 = nan.
    zero = torch.zeros((), dtype=retriever_loss.dtype, device=retriever_loss.device)
    retriever_loss = torch.where(has_answers.any(), retriever_loss, zero)
    reader_loss = torch.where(reader_correct.any(), reader_loss, zero)
    return retriever_loss, reader_loss


def top_joint_spans(reader_logits: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M most probable (block, span) pairs under the reader's joint distribution, for one question:

        p(z, s | x) = exp(g(z, s)) / sum over all R x S pairs (z', s') of exp(g(z', s')),
        g(z, s) = span logit of s in z + retrieval logit of z

    the distribution whose marginal over the correct pairs is the reader loss of `reader_losses` (ORQA's
    MML, REALM's fine-tuning objective). The softmax runs over ALL pairs; only the M best are returned
    (the others' mass is what `top` leaves out). Pairs masked with finfo.min (spans leaving the block)
    get probability 0 and are not returned.

    Args:
        reader_logits: [R, S] joint span scores.
        top: M, pairs kept (clamped to R x S).
    Returns:
        probabilities [M'] float32 (descending, M' <= M: the pairs with probability > 0), block index [M']
        and span index [M'] (int64) of each pair.
    """
    logits = reader_logits.float()
    flat = logits.reshape(-1)  # [R*S]
    probabilities = flat.softmax(dim=0)  # [R*S]
    probabilities, order = probabilities.topk(min(top, flat.numel()))  # [M]
    keep = (flat[order] > torch.finfo(reader_logits.dtype).min) & (probabilities > 0)
    probabilities, order = probabilities[keep], order[keep]
    width = reader_logits.shape[1]
    return probabilities, order // width, order % width


def in_batch_softmax_loss(
    query: torch.Tensor, blocks: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ICT's loss (ORQA, Lee et al. 2019, Eq. 3): a softmax over every block of the batch, cross-entropy
    against each query's own block,

        loss = - 1/B sum_b log( exp(q_b . e_{t_b}) / sum_n exp(q_b . e_n) )

    Args:
        query: [B, D] query embeddings.
        blocks: [G, D] candidate block embeddings (G >= B: the local batch, or all processes' blocks).
        targets: [B] the index in ``blocks`` of each query's positive.

    Returns:
        ``(loss, accuracy)``: the mean cross-entropy over the B queries, and the fraction whose best-scoring
        block is the positive (no gradient).
    """
    retrieval_logits = query.float() @ blocks.float().T  # [B, G]
    loss = F.cross_entropy(retrieval_logits, targets)
    accuracy = (retrieval_logits.detach().argmax(dim=-1) == targets).float().mean()
    return loss, accuracy

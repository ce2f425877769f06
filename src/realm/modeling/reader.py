"""`RealmReader`: extracts the answer span from the retrieved blocks and computes the fine-tuning losses.

Shapes: K retrieved blocks, R blocks read (the first R of the K), T tokens, H hidden, S span candidates,
A gold spans per block.
"""

from __future__ import annotations

import torch

from realm.config import RealmConfig
from realm.modeling.bert import RealmBertModel
from realm.modeling.heads import RealmOnlyMLMHead, RealmReaderProjection
from realm.modeling.inference import bucketed_span_logits
from realm.modeling.outputs import RealmReaderOutput
from realm.modeling.pretrained import RealmPreTrainedModel
from realm.objectives import correct_spans, reader_losses


class RealmReader(RealmPreTrainedModel):
    """BERT over `[CLS] question [SEP] block [SEP]`, a span scorer, and the ORQA/REALM marginal losses.

    Unlike the port, it reads any number of blocks R (the rows of `input_ids`), not exactly
    `config.reader_beam_size`; with R = reader_beam_size the numbers are the port's.
    """

    optional_key_prefixes = ("cls.predictions.",)  # an MLM head the checkpoints carry but no forward uses

    def __init__(self, config: RealmConfig) -> None:
        super().__init__(config)
        self.realm = RealmBertModel(config)
        self.cls = RealmOnlyMLMHead(config)
        self.qa_outputs = RealmReaderProjection(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        relevance_score: torch.Tensor | None = None,
        block_mask: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        has_answers: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> RealmReaderOutput | tuple:
        """
        Args:
            input_ids, attention_mask, token_type_ids: [R, T] question+block sequences, best block first.
            relevance_score: [K] retrieval logits (K >= R); the first R are added to the span scores, all K
                enter the retriever loss.
            block_mask: [>= R, T], true where a token belongs to the evidence block.
            start_positions, end_positions: [K, A] gold spans, -1 padded; has_answers: [K] bool.
                The losses are computed when all three are given.
        Returns:
            `RealmReaderOutput` (a tuple if `return_dict=False`).
        """
        if relevance_score is None:
            raise ValueError("You have to specify `relevance_score` to calculate logits and loss.")
        if block_mask is None:
            raise ValueError("You have to specify `block_mask` to separate question block and evidence block.")
        if token_type_ids is None:
            raise ValueError(
                "RealmReader needs token_type_ids (0 for [CLS] question [SEP], 1 for the block): the tokenizer "
                "returns them for a (question, block) pair"
            )
        if token_type_ids.size(1) < self.config.max_span_width:
            raise ValueError("The input sequence length must be greater than or equal to config.max_span_width.")
        trunk = self.realm(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
        )
        out = self.read(trunk.last_hidden_state, relevance_score, block_mask, start_positions, end_positions, has_answers)
        out.hidden_states, out.attentions = trunk.hidden_states, trunk.attentions
        return out.to_tuple() if return_dict is False else out

    def span_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        block_mask: torch.Tensor,
        bucket_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trunk and the span scorer over reader rows: [N, T] inputs -> span logits [N, S], starts, ends [S].

        Spans leaving the block get finfo.min. With `bucket_rows`, the rows run in length buckets
        (`bucketed_span_logits`: no compute on padding, neither in the trunk nor among the span candidates);
        else in one call. The joint score adds the block's retrieval logit (`span_scores`).
        """

        def rows(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
            return self.read_rows(ids, mask, types, block)[0]  # [m, S_l]

        return bucketed_span_logits(
            rows, input_ids, attention_mask, token_type_ids, block_mask, bucket_rows, self.config.max_span_width
        )

    def read_rows(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, block_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trunk and the span scorer over [R, T] rows in one call: span logits [R, S], starts, ends [S]."""
        hidden = self.realm(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        return self.qa_outputs(hidden, block_mask)

    def span_scores(
        self, hidden: torch.Tensor, retrieval_logits: torch.Tensor, block_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint scores of every (block, span): span logit + the block's retrieval logit.

        Args:
            hidden: [R, T, H]; retrieval_logits: [>= R] (`forward`'s `relevance_score`); block_mask: [>= R, T].
        Returns:
            reader logits [R, S] (spans leaving the block get finfo.min), span starts [S], ends [S].
        """
        r = hidden.shape[0]
        span_logits, starts, ends = self.qa_outputs(hidden, block_mask[:r])  # [R, S], [S], [S]
        return span_logits + retrieval_logits[:r, None], starts, ends

    def read(
        self,
        hidden: torch.Tensor,
        retrieval_logits: torch.Tensor,
        block_mask: torch.Tensor,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        has_answers: torch.Tensor | None = None,
    ) -> RealmReaderOutput:
        """Score spans of one question's R blocks given the trunk output, predict, and compute the losses.

        Args:
            hidden: [R, T, H] trunk output for the question's blocks.
            Others: as in `forward`.
        """
        r, t, _ = hidden.shape
        if retrieval_logits.shape[0] < r or block_mask.shape[0] < r:
            raise ValueError(
                f"{r} blocks are read but relevance_score has {retrieval_logits.shape[0]} entries and block_mask "
                f"{block_mask.shape[0]} rows; both need at least one per block read"
            )
        # Read.
        reader_logits, starts, ends = self.span_scores(hidden, retrieval_logits, block_mask)  # [R, S], [S], [S]
        return predict_spans(reader_logits, starts, ends, t, retrieval_logits, start_positions, end_positions, has_answers)

def predict_spans(
    reader_logits: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    seq_len: int,
    retrieval_logits: torch.Tensor,
    start_positions: torch.Tensor | None = None,
    end_positions: torch.Tensor | None = None,
    has_answers: torch.Tensor | None = None,
) -> RealmReaderOutput:
    """The prediction and losses from joint span scores (`RealmReader.span_scores`' output).

    Args:
        reader_logits: [R, S]; starts, ends: [S]; seq_len: T. Others: as in `forward`.
    """
    r, t = reader_logits.shape[0], seq_len
    block_idx = reader_logits.max(dim=1).values.argmax()  # []
    candidate = reader_logits.max(dim=0).values.argmax()  # []
    out = RealmReaderOutput(
        block_idx=block_idx,
        candidate=candidate,
        start_pos=starts[candidate][None],  # [1]
        end_pos=ends[candidate][None],  # [1]
    )
    if start_positions is None or end_positions is None or has_answers is None:
        return out
    # Marginalise.
    # Positions outside [-1, T] are clamped to values no span candidate has, as in the port.
    device = reader_logits.device
    gold_starts = torch.as_tensor(start_positions, device=device).clamp(-1, t)[:r]  # [R, A]
    gold_ends = torch.as_tensor(end_positions, device=device).clamp(-1, t)[:r]  # [R, A]
    has_answers = torch.as_tensor(has_answers, device=device).bool()  # [K]
    reader_correct = correct_spans(starts, ends, gold_starts, gold_ends)  # [R, S]
    retriever_loss, reader_loss = reader_losses(retrieval_logits, reader_logits, has_answers, reader_correct)
    out.loss = (retriever_loss + reader_loss).mean()
    out.retriever_loss, out.reader_loss = retriever_loss, reader_loss
    out.retriever_correct, out.reader_correct = has_answers, reader_correct
    return out

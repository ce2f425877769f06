"""`RealmScorer`: retrieval logits of given candidate blocks, `relevance_score[b, k] = q_b . d_bk` (the retrieval logit; the port's field name) (Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from realm.config import RealmConfig
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.outputs import RealmScorerOutput
from realm.modeling.pretrained import RealmPreTrainedModel


def flatten_candidates(x: torch.Tensor | None) -> torch.Tensor | None:
    """[B, K, T] -> [B*K, T]; tensors with at most two axes pass through (the port's `_flatten_inputs`)."""
    if x is None or x.dim() <= 2:
        return x
    return x.reshape(-1, x.shape[-1])


class RealmScorer(RealmPreTrainedModel):
    """Score C candidate blocks per query with a document tower and a query tower.

    By default both towers are the same `RealmEmbedder` (so the state dict lists every tensor under
    `embedder.*` and `query_embedder.*`, as the port).
    """

    def __init__(self, config: RealmConfig, query_embedder: RealmEmbedder | None = None) -> None:
        super().__init__(config)
        self.embedder = RealmEmbedder(config)
        self.query_embedder: nn.Module = query_embedder if query_embedder is not None else self.embedder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        candidate_input_ids: torch.Tensor | None = None,
        candidate_attention_mask: torch.Tensor | None = None,
        candidate_token_type_ids: torch.Tensor | None = None,
        candidate_inputs_embeds: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> RealmScorerOutput | tuple:
        """
        Args:
            input_ids, attention_mask, token_type_ids: [B, T] queries.
            candidate_input_ids, candidate_attention_mask, candidate_token_type_ids: [B, K, T'] blocks.
            candidate_inputs_embeds: [B*K, T', H] instead of `candidate_input_ids`.
        Returns:
            `RealmScorerOutput`: relevance_score [B, K], query_score [B, D], candidate_score [B, K, D].
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or input_embeds.")
        if candidate_input_ids is None and candidate_inputs_embeds is None:
            raise ValueError("You have to specify either candidate_input_ids or candidate_inputs_embeds.")
        num_candidates = (
            candidate_input_ids.shape[1]
            if candidate_input_ids is not None and candidate_input_ids.dim() == 3
            else self.config.num_candidates
        )
        query_score = self.query_embedder(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        ).projected_score  # [B, D]
        candidate_score = self.embedder(
            flatten_candidates(candidate_input_ids),
            attention_mask=flatten_candidates(candidate_attention_mask),
            token_type_ids=flatten_candidates(candidate_token_type_ids),
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=candidate_inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        ).projected_score  # [B*K, D]
        candidate_score = candidate_score.view(-1, num_candidates, candidate_score.shape[-1])  # [B, K, D]
        relevance_score = torch.einsum("bd,bcd->bc", query_score, candidate_score)  # [B, K]
        out = RealmScorerOutput(relevance_score, query_score, candidate_score)
        return out.to_tuple() if return_dict is False else out

"""`RealmKnowledgeAugEncoder`: reads `[CLS] masked query [SEP] block [SEP]` and predicts the masked tokens.

With retrieval logits for the K blocks, its loss is REALM's marginal MLM loss (`realm.objectives`).
"""

from __future__ import annotations

import torch

from realm.config import RealmConfig
from realm.modeling.bert import RealmBertModel
from realm.modeling.heads import RealmOnlyMLMHead
from realm.modeling.outputs import MaskedLMOutput
from realm.modeling.pretrained import RealmPreTrainedModel
from realm.modeling.scorer import flatten_candidates
from realm.objectives import marginal_mlm_loss


class RealmKnowledgeAugEncoder(RealmPreTrainedModel):
    """BERT + MLM head; the decoder is tied to the word embeddings when `config.tie_word_embeddings`."""

    def __init__(self, config: RealmConfig) -> None:
        super().__init__(config)
        self.realm = RealmBertModel(config)
        self.cls = RealmOnlyMLMHead(config)
        self.init_weights()
        if config.tie_word_embeddings:
            self.cls.predictions.decoder.weight = self.realm.embeddings.word_embeddings.weight

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.realm.embeddings.word_embeddings

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.cls.predictions.decoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        relevance_score: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mlm_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | tuple:
        """
        Args:
            input_ids, attention_mask, token_type_ids: [B, K, T] (or already [B*K, T]) joint sequences.
            relevance_score: [B, K] retrieval logits; required with `labels`.
            labels: [B, T] masked-token targets, -100 elsewhere (shared by the K candidates).
            mlm_mask: [B, T], 1 where a position counts in the loss's denominator.
        Returns:
            `MaskedLMOutput` with `logits` [B*K, T, V] and `loss` when labels are given.
        """
        if labels is not None and relevance_score is None:
            raise ValueError("You have to specify `relevance_score` when `labels` is specified in order to compute loss.")
        trunk = self.realm(
            flatten_candidates(input_ids),
            attention_mask=flatten_candidates(attention_mask),
            token_type_ids=flatten_candidates(token_type_ids),
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
        )
        logits = self.cls(trunk.last_hidden_state)  # [B*K, T, V]
        loss = None
        if labels is not None:
            b, t = labels.shape
            c = relevance_score.shape[-1]
            if logits.shape[0] != b * c:
                raise ValueError(
                    f"relevance_score has {c} candidates per example and labels {b} examples, but the "
                    f"inputs hold {logits.shape[0]} sequences (expected {b * c})"
                )
            loss = marginal_mlm_loss(logits.view(b, c, t, -1), labels, relevance_score, mlm_mask)
        out = MaskedLMOutput(loss, logits, trunk.hidden_states, trunk.attentions)
        return out.to_tuple() if return_dict is False else out

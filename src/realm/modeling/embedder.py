"""`RealmEmbedder`: the retrieval tower. Text -> BERT -> [CLS] pooler -> 128-d projection (Sec. 3.1)."""

from __future__ import annotations

import torch

from realm.config import RealmConfig
from realm.modeling.bert import RealmBertModel
from realm.modeling.heads import RealmScorerProjection
from realm.modeling.outputs import RealmEmbedderOutput
from realm.modeling.pretrained import RealmPreTrainedModel


class RealmEmbedder(RealmPreTrainedModel):
    """Embed queries or blocks: `projected_score = LayerNorm(W . pooler(BERT(x)) + b)`, [B, D].

    Queries and blocks share this tower in the released checkpoints; relevance is a raw inner product.
    """

    optional_key_prefixes = ("cls.predictions.",)  # an MLM head the checkpoints carry but no forward uses

    def __init__(self, config: RealmConfig) -> None:
        super().__init__(config)
        self.realm = RealmBertModel(config)
        self.cls = RealmScorerProjection(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> RealmEmbedderOutput | tuple:
        """
        Args:
            input_ids, attention_mask, token_type_ids: [B, T].
        Returns:
            `RealmEmbedderOutput` with `projected_score` [B, D] (a tuple if `return_dict=False`).
        """
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
        out = RealmEmbedderOutput(
            projected_score=self.cls(trunk.pooler_output),  # [B, D]
            hidden_states=trunk.hidden_states,
            attentions=trunk.attentions,
        )
        return out.to_tuple() if return_dict is False else out

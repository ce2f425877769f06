"""REALM model classes on one BERT trunk, with the transformers port's names, numbers and checkpoints."""

from realm.modeling.bert import RealmBertModel
from realm.modeling.checkpoint import CheckpointError
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.modeling.openqa import RealmForOpenQA
from realm.modeling.outputs import (
    MaskedLMOutput,
    RealmEmbedderOutput,
    RealmForOpenQAOutput,
    RealmReaderOutput,
    RealmScorerOutput,
)
from realm.modeling.pretrained import RealmPreTrainedModel
from realm.modeling.reader import RealmReader
from realm.modeling.scorer import RealmScorer

__all__ = [
    "CheckpointError",
    "MaskedLMOutput",
    "RealmBertModel",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQA",
    "RealmForOpenQAOutput",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmScorer",
    "RealmScorerOutput",
]

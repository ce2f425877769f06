"""realm-lm: REALM (Guu et al. 2020) in modern PyTorch.

The public API mirrors the transformers port: `RealmConfig`, `RealmTokenizer(Fast)`, `RealmRetriever`,
`RealmEmbedder`, `RealmScorer`, `RealmKnowledgeAugEncoder`, `RealmReader`, `RealmForOpenQA`.
"""

from realm.config import RealmConfig
from realm.modeling import (
    CheckpointError,
    MaskedLMOutput,
    RealmEmbedder,
    RealmEmbedderOutput,
    RealmForOpenQA,
    RealmForOpenQAOutput,
    RealmKnowledgeAugEncoder,
    RealmPreTrainedModel,
    RealmReader,
    RealmReaderOutput,
    RealmScorer,
    RealmScorerOutput,
)
from realm.retrieval import RealmRetriever
from realm.tokenization import BatchEncoding, RealmTokenizer, RealmTokenizerFast

__version__ = "0.1.0"

__all__ = [
    "BatchEncoding",
    "CheckpointError",
    "MaskedLMOutput",
    "RealmConfig",
    "RealmEmbedder",
    "RealmEmbedderOutput",
    "RealmForOpenQA",
    "RealmForOpenQAOutput",
    "RealmKnowledgeAugEncoder",
    "RealmPreTrainedModel",
    "RealmReader",
    "RealmReaderOutput",
    "RealmRetriever",
    "RealmScorer",
    "RealmScorerOutput",
    "RealmTokenizer",
    "RealmTokenizerFast",
]

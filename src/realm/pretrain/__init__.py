"""REALM pre-training: salient span masking, the retrieve-then-read step, index refresh, ICT warm start."""

from realm.pretrain.config import PretrainConfig
from realm.pretrain.examples import ExampleGenerator, MaskedExample, collate_masked
from realm.pretrain.ict import (
    ICTConfig,
    ICTExample,
    ICTExampleGenerator,
    ICTModel,
    ICTOutput,
    collate_ict,
    in_batch_softmax_loss,
)
from realm.pretrain.loop import PretrainResult, pretrain
from realm.pretrain.masking import MaskingConfig, SentenceMasker, SpacySpanFinder, find_salient_spans
from realm.pretrain.step import PretrainOutput, RealmPretrainer

__all__ = [
    "ExampleGenerator",
    "ICTConfig",
    "ICTExample",
    "ICTExampleGenerator",
    "ICTModel",
    "ICTOutput",
    "MaskedExample",
    "MaskingConfig",
    "PretrainConfig",
    "PretrainOutput",
    "PretrainResult",
    "RealmPretrainer",
    "SentenceMasker",
    "SpacySpanFinder",
    "collate_ict",
    "collate_masked",
    "find_salient_spans",
    "in_batch_softmax_loss",
    "pretrain",
]

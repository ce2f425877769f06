"""Training: ORQA/REALM Open-QA fine-tuning (`realm finetune`).

    from realm.train import FinetuneConfig, finetune

    config = FinetuneConfig.load("configs/finetune_nq.toml", ["num_steps=100"])
    result = finetune(config)                 # or finetune(config, resume=True) after a kill
    result.best_dir                           # a RealmForOpenQA checkpoint: Pipeline.from_pretrained(...)

* `realm.train.config`: `FinetuneConfig` (TOML + key=value overrides).
* `realm.train.finetune`: the step's math (`OpenQAFinetuner`: retrieve, label, read, marginalise).
* `realm.train.answers`: the retriever's positives from stored token ids (vectorised `block_has_answer`).
* `realm.train.loop`: `finetune`, the loop for 1..N processes (DDP), evaluation, logging.
* `realm.train.state`: checkpoints, RNG states and the data order (exact resume).
"""

from realm.train.answers import answers_in_blocks
from realm.train.config import FinetuneConfig
from realm.train.finetune import (
    EncodedQuestions,
    FinetuneOutput,
    OpenQAFinetuner,
    collate_questions,
    encode_questions,
)
from realm.train.loop import FinetuneResult, finetune

__all__ = [
    "EncodedQuestions",
    "FinetuneConfig",
    "FinetuneOutput",
    "FinetuneResult",
    "OpenQAFinetuner",
    "answers_in_blocks",
    "collate_questions",
    "encode_questions",
    "finetune",
]

"""ORQA/REALM Open-QA fine-tuning (`realm finetune`).

    from realm.finetune import FinetuneConfig, finetune

    config = FinetuneConfig.load("configs/finetune_nq.toml", ["num_steps=100"])
    result = finetune(config)                 # or finetune(config, resume=True) after a kill
    result.best_dir                           # a RealmForOpenQA checkpoint: Pipeline.from_pretrained(...)

* `realm.finetune.config`: `FinetuneConfig` (TOML + key=value overrides).
* `realm.finetune.step`: the step's math (`OpenQAFinetuner`: retrieve, label, read, marginalise).
* `realm.finetune.answers`: the retriever's positives from stored token ids (vectorised `block_has_answer`).
* `realm.finetune.loop`: `finetune`, the loop for 1..N processes (DDP), evaluation, logging.
"""

from realm.finetune.answers import answers_in_blocks
from realm.finetune.config import FinetuneConfig
from realm.finetune.loop import FinetuneResult, finetune
from realm.finetune.step import EncodedQuestions, FinetuneOutput, OpenQAFinetuner, encode_questions

__all__ = [
    "EncodedQuestions",
    "FinetuneConfig",
    "FinetuneOutput",
    "FinetuneResult",
    "OpenQAFinetuner",
    "answers_in_blocks",
    "encode_questions",
    "finetune",
]

"""What both training loops (`realm.finetune`, `realm.pretrain`) share.

* `realm.train.config`: `FlatTomlConfig` (flat TOML + key=value overrides) and `StepSchedule`.
* `realm.train.optim`: AdamW without decay on biases/LayerNorms, linear warm-up then decay.
* `realm.train.metrics`: `MetricsLog` (`metrics.jsonl`, TensorBoard), consistent across resumes.
* `realm.train.state`: checkpoints, RNG states and the data order (exact resume).

Fine-tuning moved to `realm.finetune` (`from realm.finetune import FinetuneConfig, finetune`).
"""

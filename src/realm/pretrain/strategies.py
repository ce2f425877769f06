"""What differs between the pre-training objectives, as one small strategy object each; the loop
(`realm.pretrain.loop`) is the same for all of them.

    RealmObjective   masked sentence -> retrieve C candidates (the null block first) -> marginal MLM
                     (`RealmPretrainer`), with the index refresh (`realm.pretrain.refresh`). MLM-only, the
                     no-retrieval baseline, is this objective with num_candidates = 1: the null block alone.
    IctObjective     the Inverse Cloze Task warm start of the retriever (`ICTModel`); no index.

A strategy builds the model, the example generator and the collate function; says what a batch's loss is a
mean over (the weight of a micro-batch); turns step outputs into the sums a log row is made of; and saves
its towers. The REALM strategy also owns the index: the first one, the refresh after each step, the swap.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from realm.config import RealmConfig
from realm.corpus import BlockStore
from realm.index.build import IndexBuildConfig
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.objectives import IGNORE_INDEX, retrieval_utility
from realm.pretrain.refresh import PublishedIndex, start_worker
from realm.pretrain.step import RealmPretrainer

if TYPE_CHECKING:
    from realm.pretrain.loop import _Trainer

logger = logging.getLogger(__name__)

EMBEDDER, BLOCK_EMBEDDER, ENCODER, OPENQA = "embedder", "block_embedder", "encoder", "openqa"
NUM_TOTALS = 6  # the sums a log window keeps (what they mean is each objective's)


class Objective:
    """The hooks the loop calls; the defaults are those of an objective without an index."""

    name = ""

    def build(self, trainer: _Trainer, checkpoint: Path | None) -> tuple[torch.nn.Module, Any, Any]:
        """(model, example generator, collate function) from the config or the checkpoint."""
        raise NotImplementedError

    def predictions(self, batch: dict[str, torch.Tensor]) -> int:
        """What a batch's loss is a mean over (a micro-batch's weight in the step's gradient)."""
        return int(next(iter(batch.values())).shape[0])

    def totals(self, out: Any, count: float) -> list[float]:
        """A step output's contribution to the log window's `NUM_TOTALS` sums."""
        raise NotImplementedError

    def row(self, totals: list[float]) -> dict[str, Any]:
        """A log row's objective-specific fields from the window's sums (over all processes)."""
        raise NotImplementedError

    def start(self, trainer: _Trainer, resumed: bool) -> None:
        """Called once the model and optimizer are ready, before DistributedDataParallel wraps the model."""

    def after_step(self, trainer: _Trainer, window: Any) -> None:
        """Called after every optimizer step."""

    def log_fields(self, trainer: _Trainer, counters: dict[str, int]) -> dict[str, Any]:
        """Extra fields of a log row (`counters`: the example generators' counts over the window)."""
        return {}

    def save_towers(self, model: Any, directory: Path) -> None:
        raise NotImplementedError

    def save_final(self, trainer: _Trainer, directory: Path) -> None:
        """Anything `final/` holds beyond the towers and the embedder's tokenizer."""

    def close(self, trainer: _Trainer) -> None:
        """Called when the run ends (finished or stopped)."""


class IctObjective(Objective):
    name = "ict"

    def build(self, trainer: _Trainer, checkpoint: Path | None) -> tuple[torch.nn.Module, Any, Any]:
        from realm.pretrain.ict import ICTConfig, ICTExampleGenerator, ICTModel, collate_ict

        config = trainer.config
        embedder = _embedder(checkpoint / EMBEDDER if checkpoint else Path(config.embedder), trainer.tokenizer)
        ict = ICTConfig(query_seq_len=config.query_seq_len, block_seq_len=config.block_seq_len,
                        remove_rate=config.ict_remove_rate)  # fmt: skip
        generator = ICTExampleGenerator(trainer.store, trainer.tokenizer, ict, seed=config.seed)
        return ICTModel(embedder), generator, collate_ict

    def totals(self, out: Any, count: float) -> list[float]:
        return [float(out.loss.detach() * count), count, float(out.accuracy * count), 0.0, 0.0, 0.0]

    def row(self, totals: list[float]) -> dict[str, Any]:
        n = max(totals[1], 1.0)
        return {"loss": totals[0] / n, "accuracy": totals[2] / n}

    def save_towers(self, model: Any, directory: Path) -> None:
        model.embedder.save_pretrained(directory / EMBEDDER)


class RealmObjective(Objective):
    name = "realm"

    # -- the model and the data ---------------------------------------------------------------------

    def build(self, trainer: _Trainer, checkpoint: Path | None) -> tuple[torch.nn.Module, Any, Any]:
        from realm.pretrain.examples import ExampleGenerator, collate_masked
        from realm.pretrain.masking import MaskingConfig

        config, store, tokenizer = trainer.config, trainer.store, trainer.tokenizer
        embedder = _embedder(checkpoint / EMBEDDER if checkpoint else Path(config.embedder), tokenizer)
        block_embedder = embedder
        if not config.share_embedders:
            block_path = checkpoint / BLOCK_EMBEDDER if checkpoint else Path(config.embedder)
            block_embedder = RealmEmbedder.from_pretrained(block_path)
        encoder_path = checkpoint / ENCODER if checkpoint else Path(config.encoder)
        encoder = RealmKnowledgeAugEncoder.from_pretrained(encoder_path)
        _check_vocab(encoder.config, len(tokenizer), encoder_path)
        longest = max(config.joint_seq_len, config.block_seq_len)
        if longest > encoder.config.max_position_embeddings:
            raise ValueError(
                f"joint_seq_len / block_seq_len ({longest}) exceed the model's max_position_embeddings "
                f"({encoder.config.max_position_embeddings}); lower them"
            )
        model = RealmPretrainer(
            embedder, block_embedder, encoder, store, num_candidates=config.num_candidates,
            block_seq_len=config.block_seq_len, joint_seq_len=config.joint_seq_len, loss=config.loss,
        )  # fmt: skip
        _freeze(model, config.freeze)
        masking = MaskingConfig(
            strategy=config.masking, spacy_model=config.spacy_model or None, query_seq_len=config.query_seq_len,
            max_masks=config.max_masks, mask_rate=config.mask_rate,
        )  # fmt: skip
        sentences = store
        if config.sentences and Path(config.sentences).resolve() != Path(config.store).resolve():
            sentences = BlockStore.open(config.sentences)
            if sentences.tokenizer_fingerprint != store.tokenizer_fingerprint:
                raise ValueError(f"{config.sentences} was tokenized with another tokenizer than {config.store}")
        generator = ExampleGenerator(sentences, tokenizer, masking, seed=config.seed)
        if sentences is store:
            return model, generator, collate_masked

        def collate_without_sources(examples: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
            # The sentences are not blocks of the knowledge corpus: no candidate is their source.
            batch = collate_masked(examples, pad_id)
            batch["source_block"] = torch.full_like(batch["source_block"], -1)
            return batch

        return model, generator, collate_without_sources

    def predictions(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def totals(self, out: Any, count: float) -> list[float]:
        values = [out.loss.detach() * count, count, out.marginal_log_likelihood, out.null_log_likelihood,
                  out.correct, out.null_correct]  # fmt: skip
        return [float(v) for v in values]

    def row(self, totals: list[float]) -> dict[str, Any]:
        n = max(totals[1], 1.0)
        return {
            "loss": totals[0] / n,
            "retrieval_utility": retrieval_utility(totals[2], totals[3], totals[1]),
            "mlm_accuracy": totals[4] / n,
            "null_mlm_accuracy": totals[5] / n,
            "masked_tokens": totals[1],
        }

    def log_fields(self, trainer: _Trainer, counters: dict[str, int]) -> dict[str, Any]:
        counters = dict(counters)
        fields = {
            "index_step": trainer.index_step,
            "staleness": trainer.step - trainer.index_step,
            "examples": counters.pop("examples", 0),
            "skipped": dict(sorted(counters.items())),
        }
        fields.update(getattr(self, "pending_recall", {}))
        self.pending_recall: dict[str, float] = {}
        return fields

    def save_towers(self, model: Any, directory: Path) -> None:
        model.query_embedder.save_pretrained(directory / EMBEDDER)
        if not model.shares_embedders:
            model.block_embedder.save_pretrained(directory / BLOCK_EMBEDDER)
        model.encoder.save_pretrained(directory / ENCODER)

    def save_final(self, trainer: _Trainer, directory: Path) -> None:
        from realm.modeling.bert_import import openqa_from_pretrained

        trainer.tokenizer.save_pretrained(directory / ENCODER)
        openqa_from_pretrained(directory / EMBEDDER, directory / ENCODER, directory / OPENQA)

    # -- the index -----------------------------------------------------------------------------------

    def start(self, trainer: _Trainer, resumed: bool) -> None:
        self._open_first_index(trainer, resumed)
        config = trainer.config
        if config.refresh == "async" and trainer.context.is_main:
            trainer.worker = start_worker(trainer.output_dir, config.store, _index_build_config(config),
                                          config.device, config.refresh_threads or None)  # fmt: skip

    def _open_first_index(self, trainer: _Trainer, resumed: bool) -> None:
        """The index to start with: the checkpoint's, or the given one, or one built now from the
        document tower's initial weights (snapshot 0)."""
        config, files = trainer.config, trainer.files
        if resumed:
            published = files.published(trainer.index_step)
        elif config.index:
            published = PublishedIndex(0, Path(config.index), Path(config.embedder))
        else:
            if trainer.context.is_main:
                files.save_snapshot(0, trainer.model.block_embedder)
            trainer.context.barrier()
            published = files.build(0, trainer.store, _index_build_config(config), device=config.device,
                                    context=trainer.context, progress=config.progress)  # fmt: skip
        trainer.model.set_index(files.open(published, trainer.store))
        trainer.index_step = published.step
        self._dev_recall(trainer)

    def _dev_recall(self, trainer: _Trainer) -> None:
        """Gold-block recall of the dev questions with the current query tower and index, for the next log row."""
        config = trainer.config
        if not config.dev_questions or not trainer.context.is_main:
            return
        if not hasattr(self, "dev"):
            import json

            titles = trainer.store.titles(range(len(trainer.store)))
            self.gold = {t: i for i, t in enumerate(titles)}
            path = Path(config.dev_questions)
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.dev = [r for r in rows if r.get("title") in self.gold]
            logger.info("%s: %d of %d questions have their gold article in the store", path, len(self.dev), len(rows))
            if not self.dev:
                raise ValueError(f"{path}: no question's \"title\" is the title of a block of {config.store}")
        from realm.pretrain.evaluate import gold_recall

        assert trainer.model.index is not None
        recall = gold_recall(trainer.model.query_embedder, trainer.tokenizer, trainer.model.index, self.dev, self.gold)
        self.pending_recall = {f"dev_{k}": v for k, v in recall.items()} | {"dev_questions": len(self.dev)}

    def after_step(self, trainer: _Trainer, window: Any) -> None:
        """Sync: rebuild now, every refresh_every steps. Async: snapshot every refresh_every steps, and swap
        in whatever the worker published since the last step."""
        config, context, files = trainer.config, trainer.context, trainer.files
        if config.refresh == "never" or trainer.step >= config.num_steps:
            return
        started = time.perf_counter()
        due = trainer.step % config.refresh_every == 0
        if config.refresh == "sync":
            if due:
                if context.is_main:
                    files.save_snapshot(trainer.step, trainer.model.block_embedder)
                context.barrier()
                published = files.build(trainer.step, trainer.store, _index_build_config(config),
                                        device=config.device, context=context, progress=False)  # fmt: skip
                self._swap(trainer, published)
        else:
            if due and context.is_main:
                files.save_snapshot(trainer.step, trainer.model.block_embedder)
            decision: list[Any] = [files.latest() if context.is_main else None]
            if context.is_distributed:
                dist.broadcast_object_list(decision, src=0)
            published = decision[0]
            if published is not None and published.step > trainer.index_step:
                self._swap(trainer, published)
        window.add_time("refresh", time.perf_counter() - started)

    def _swap(self, trainer: _Trainer, published: PublishedIndex) -> None:
        trainer.model.set_index(trainer.files.open(published, trainer.store, current_step=trainer.index_step))
        logger.info("step %d: swapped in the index of step %d", trainer.step, published.step)
        trainer.index_step = published.step
        self._dev_recall(trainer)
        if trainer.context.is_main:
            saved = trainer.saved_index_step
            trainer.files.prune([trainer.index_step] if saved is None else [trainer.index_step, saved])

    def close(self, trainer: _Trainer) -> None:
        if trainer.context.is_main and trainer.step >= trainer.config.num_steps:
            trainer.files.mark_done()


OBJECTIVES: dict[str, type[Objective]] = {"realm": RealmObjective, "ict": IctObjective}


def objective_for(name: str) -> Objective:
    """The strategy of `PretrainConfig.objective`."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]()


def _freeze(model: torch.nn.Module, prefixes: str) -> None:
    """`PretrainConfig.freeze`: no gradient for the parameters whose names start with one of `prefixes`."""
    wanted = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    used = set()
    # remove_duplicate=False: shared towers answer to both names (query_embedder. and block_embedder.).
    for name, parameter in model.named_parameters(remove_duplicate=False):
        hits = [p for p in wanted if name.startswith(p)]
        if hits:
            parameter.requires_grad_(False)
            used.update(hits)
    unused = [p for p in wanted if p not in used]
    if unused:
        raise ValueError(f"pretrain config: freeze prefixes {unused} match no parameter of the model (names start "
                         "with query_embedder., block_embedder., encoder.)")
    if wanted:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("froze %s: %s trainable parameters left", ", ".join(wanted), f"{trainable:,}")


def _index_build_config(config: Any) -> IndexBuildConfig:
    return IndexBuildConfig(chunk_size=config.index_chunk_size, batch_size=config.index_batch_size,
                            max_length=config.block_seq_len, storage_dtype=config.index_dtype)  # fmt: skip


def _embedder(path: Path, tokenizer: Any) -> RealmEmbedder:
    embedder = RealmEmbedder.from_pretrained(path)
    _check_vocab(embedder.config, len(tokenizer), path)
    return embedder


def _check_vocab(model_config: RealmConfig, vocab_size: int, path: Path) -> None:
    if vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the store's tokenizer has {vocab_size} tokens but {path} only {model_config.vocab_size}: the store "
            "was built with another tokenizer than the model's"
        )

"""`realm finetune`, `realm pretrain`, `realm pretrain-refresh`, `realm init --from-bert`, `realm plot`."""

from __future__ import annotations

import argparse


def _finetune(args: argparse.Namespace) -> int:
    from realm.distributed import DistributedContext
    from realm.finetune import FinetuneConfig, finetune

    config = FinetuneConfig.load(args.config, args.overrides)
    result = finetune(config, resume=args.resume)
    if DistributedContext.current().is_main:
        print(f"{result.output_dir}: {result.step:,} steps; last checkpoint in {result.last_dir}")
        if result.best is not None:
            recall = result.best.get("recall@5")
            shown = f", recall@5 {100 * recall:.2f}" if recall is not None else ""
            print(
                f"best: EM {100 * result.best['exact_match']:.2f}{shown} at step {result.best['step']:,} "
                f"in {result.best_dir}"
            )
        print(f"metrics: {result.metrics_path}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from realm.distributed import DistributedContext
    from realm.pretrain import PretrainConfig, pretrain

    overrides = [*args.overrides, *([f"objective={args.objective}"] if args.objective else [])]
    config = PretrainConfig.load(args.config, overrides)
    result = pretrain(config, resume=args.resume)
    if DistributedContext.current().is_main:
        print(f"{result.output_dir}: {result.step:,} steps ({config.objective}); result in {result.final_dir}")
        row = result.last_metrics or {}
        shown = [f"{k} {row[k]:.4f}" for k in ("loss", "retrieval_utility", "mlm_accuracy", "accuracy") if k in row]
        if shown:
            print("last: " + ", ".join(shown))
        print(f"metrics: {result.metrics_path}")
    return 0


def _pretrain_refresh(args: argparse.Namespace) -> int:
    from realm.distributed import init_distributed
    from realm.index.build import IndexBuildConfig
    from realm.pretrain.refresh import refresh_worker

    init_distributed(args.device)
    config = IndexBuildConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, max_length=args.max_length,
                              storage_dtype=args.dtype)  # fmt: skip
    count = refresh_worker(args.run_dir, args.store, config, device=args.device, poll_seconds=args.poll_seconds)
    print(f"{args.run_dir}: published {count} refreshed indexes")
    return 0


def _init(args: argparse.Namespace) -> int:
    from realm.modeling.bert_import import init_from_bert

    report = init_from_bert(args.from_bert, args.out, proj_size=args.proj_size, pooling=args.pooling, seed=args.seed,
                            overwrite=args.overwrite)  # fmt: skip
    print(report.summary())
    print(f"{args.out}/openqa loads with: realm finetune model={args.out}/openqa ...")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from realm.eval.plots import plot_run

    written = plot_run(args.run_dir, args.out)
    if not written:
        print(f"{args.run_dir}: no row has a quantity to plot")
        return 1
    for path in written:
        print(path)
    return 0

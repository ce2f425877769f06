"""`realm blocks build|import` and `realm index build|add`: documents -> block store -> embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path


def _load_tokenizer(path: str):
    from realm.tokenization import RealmTokenizerFast

    # The fast tokenizer gives the slow one's tokens on any single text, much faster; it reads
    # tokenizer.json when present and otherwise builds itself from vocab.txt.
    return RealmTokenizerFast.from_pretrained(path)


def _blocks_build(args: argparse.Namespace) -> int:
    from realm.corpus import BuildConfig, build_store

    config = BuildConfig(max_block_tokens=args.max_block_tokens, on_error=args.on_error, filter_pages=not args.keep_all_pages)
    stats = build_store(
        args.input,
        args.out,
        _load_tokenizer(args.tokenizer),
        config,
        progress=not args.no_progress,
        append=args.append,
        overwrite=args.overwrite,
        num_workers=args.workers,
    )
    print(f"{args.out}:\n{stats.summary()}")
    return 0


def _blocks_import(args: argparse.Namespace) -> int:
    from realm.corpus import import_block_records

    store = import_block_records(
        args.records,
        _load_tokenizer(args.tokenizer),
        args.out,
        allow_pickle=args.allow_pickle,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"{args.out}: imported {len(store):,} blocks")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from realm.corpus import BlockStore
    from realm.distributed import init_distributed
    from realm.index.build import IndexBuildConfig, build_index

    context = init_distributed(args.device)
    store = BlockStore.open(args.store)
    config = IndexBuildConfig(
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        max_length=args.max_length,
        storage_dtype=args.storage_dtype,
        compute_dtype=args.compute_dtype,
    )
    result = build_index(
        store,
        args.embedder,
        args.out,
        config,
        store_fingerprint=store.fingerprint,
        special_ids=store.special_ids,
        device=args.device,
        context=context,
        progress=not args.no_progress,
        provenance={"store": str(Path(args.store).resolve()), "embedder": str(Path(args.embedder).resolve())},
    )
    if context.is_main:
        print(
            f"{result.out_dir}: {result.count:,} block embeddings ({result.chunks_embedded} chunk(s) embedded here, "
            f"{result.chunks_skipped} already done) in {result.seconds:.1f} s"
        )
    return 0


def _index_build_sparse(args: argparse.Namespace) -> int:
    from realm.index.sparse import SparseConfig, build_sparse_index

    config = SparseConfig(k1=args.k1, b=args.b, stemmer=None if args.no_stem else "english")
    index = build_sparse_index(args.store, args.out, config, progress=not args.no_progress)
    print(f"{args.out}: BM25 over {len(index):,} blocks ({'no stemming' if args.no_stem else 'stemmed'})")
    return 0


def _index_add(args: argparse.Namespace) -> int:
    from realm.index.add import add_documents

    result = add_documents(
        args.input, args.store, args.index, args.embedder, device=args.device, progress=not args.no_progress,
        num_workers=args.workers,
    )  # fmt: skip
    verb = "resumed: " if result.resumed else ""
    print(f"{verb}{args.index}: {result.blocks_before:,} -> {result.blocks_after:,} blocks (only the new ones embedded)")
    return 0

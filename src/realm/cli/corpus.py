"""`realm blocks build|import` and `realm index build|add`: documents -> block store -> embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path


def _load_tokenizer(path: str):
    from realm.files import looks_like_hub_id
    from realm.tokenization import RealmTokenizerFast

    directory = Path(path)
    if directory.is_file():
        raise FileNotFoundError(f"--tokenizer {path} is a file; pass the directory that holds vocab.txt")
    if not directory.exists() and not (looks_like_hub_id(path) and "/" in path):
        raise FileNotFoundError(
            f"--tokenizer {path}: no such directory; pass a directory holding vocab.txt (e.g. a checkpoint's) "
            "or a hub id such as google/realm-orqa-nq-openqa"
        )
    if directory.is_dir() and not any((directory / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise FileNotFoundError(f"--tokenizer {path} holds neither vocab.txt nor tokenizer.json; pass a tokenizer directory")

    # The fast tokenizer gives the slow one's tokens on any single text, much faster; it reads
    # tokenizer.json when present and otherwise builds itself from vocab.txt.
    return RealmTokenizerFast.from_pretrained(path)


def out_dir(path: str, flag: str = "out") -> str:
    """An output directory argument: refused when it names a file (a clear sentence, not an OSError later)."""
    if Path(path).is_file():
        raise FileExistsError(f"{flag} {path} is a file; give a directory to write into (a new or an existing one)")
    for parent in Path(path).absolute().parents:
        if parent.is_file():
            raise FileExistsError(f"{flag} {path}: {parent} is a file, not a directory; give another path")
    return path


def _blocks_build(args: argparse.Namespace) -> int:
    from realm.corpus import BuildConfig, build_store

    out_dir(args.out, "the output directory")

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

    out_dir(args.out, "the output directory")

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

    out_dir(args.out, "--out")
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

    out_dir(args.out, "--out")
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


def _verify(args: argparse.Namespace) -> int:
    from realm.verify import verify_path

    failed = 0
    for path in args.paths:
        report = verify_path(path)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0

"""`realm blocks build|import` and `realm index build|add|remove|compact`: documents -> block store ->
embeddings (exact or approximate), kept in sync as documents come and go."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
        _build_ann(args)
    return 0


def _build_ann(args: argparse.Namespace) -> None:
    import time

    from realm.index.ann import AnnConfig, build_ann, recall_check

    config = AnnConfig(
        kind=args.kind, lists=args.lists, probes=args.probes, m=args.m, ef_search=args.ef_search,
        ef_construction=args.ef_construction, pq_bytes=args.pq_bytes, rerank=args.rerank,
        mips_to_l2=args.mips_to_l2, train_size=args.train_size,
    )  # fmt: skip
    if config.kind != "exact":
        started = time.monotonic()
        index = build_ann(args.out, config)
        print(f"{args.out}: {index!r} built in {time.monotonic() - started:.1f} s")
    else:
        build_ann(args.out, config)
    if args.recall_check:
        report = recall_check(args.out, k=args.recall_k, queries=args.recall_check)
        print(f"{args.out}: {report.summary()}")


def add_ann_args(sub: argparse.ArgumentParser) -> None:
    """`realm index build`'s approximate-search options."""
    ann = sub.add_argument_group("approximate search (FAISS; pip install 'realm-lm[faiss]')")
    ann.add_argument("--kind", choices=("exact", "ivf", "hnsw", "ivfpq"), default="exact",
                     help="exact (default), ivf (IVF lists, Flat), hnsw (graph), ivfpq (IVF + PQ codes)")
    ann.add_argument("--lists", type=int, default=0, help="IVF lists (default 4 sqrt(N))")
    ann.add_argument("--probes", type=int, default=16, help="IVF lists searched per query (nprobe)")
    ann.add_argument("--m", type=int, default=32, help="HNSW links per node (M)")
    ann.add_argument("--ef-search", type=int, default=128, help="HNSW candidates per search (efSearch)")
    ann.add_argument("--ef-construction", type=int, default=200, help="HNSW candidates while building")
    ann.add_argument("--pq-bytes", type=int, default=32, help="PQ code bytes per vector (divides the dim)")
    ann.add_argument("--rerank", type=int, default=0, help="candidates re-scored exactly (PQ wants 100-400)")
    ann.add_argument("--mips-to-l2", action="store_true",
                     help="index [x, sqrt(M^2-|x|^2)] with L2 (inner product on unnormalised vectors)")
    ann.add_argument("--train-size", type=int, default=1 << 17, help="rows sampled to train centroids/codebooks")
    ann.add_argument("--recall-check", type=int, default=0, metavar="Q",
                     help="after building, report recall@k against exact search on Q held-out rows")
    ann.add_argument("--recall-k", type=int, default=10, help="k of --recall-check")  # fmt: skip


def add_live_verbs(index: Any) -> None:
    """`realm index remove` and `realm index compact` (on the `realm index` subparsers)."""
    remove = index.add_parser("remove", help="remove documents (by title or document id) from a store and its index")
    remove.add_argument("--store", required=True, help="the block store")
    remove.add_argument("--index", help="the index built from it (omit to mark the store only)")
    remove.add_argument("--title", action="append", default=[], help="a document title (repeatable)")
    remove.add_argument("--doc-id", action="append", type=int, default=[], help="a document id (repeatable)")
    remove.add_argument("--titles-from", help="a UTF-8 file with one title per line")
    remove.set_defaults(run=_index_remove)
    compact = index.add_parser(
        "compact", help="with --store: drop removed blocks from store and index (ids renumbered; compacted-dropped.npy maps them); "
        "without: merge appended segments",
    )  # fmt: skip
    compact.add_argument("--index", required=True, help="the index directory")
    compact.add_argument("--store", help="the store it was built from: rewrite both without the removed blocks")
    compact.add_argument("--sparse", help="with --store: the store's BM25 index, rebuilt over the compacted store")
    compact.set_defaults(run=_index_compact)


def _change_lines(change: Any) -> str:
    lines = []
    if change is not None and change.faiss:
        lines.append(f"  FAISS {change.faiss}")
    if change is not None and change.rebuild_advice:
        lines.append(f"  {change.rebuild_advice}")
    return "".join(f"\n{line}" for line in lines)


def _index_remove(args: argparse.Namespace) -> int:
    from realm.index.update import remove_documents

    titles = list(args.title)
    if args.titles_from:
        path = Path(args.titles_from)
        if not path.is_file():
            raise SystemExit(f"realm index remove: --titles-from {path}: no such file")
        titles += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not titles and not args.doc_id:
        raise SystemExit("realm index remove: name the documents with --title, --doc-id or --titles-from FILE")
    result = remove_documents(args.store, args.index, titles=titles, doc_ids=args.doc_id)
    missing = [*(repr(t) for t in result.missing_titles), *(f"doc {d}" for d in result.missing_doc_ids)]
    if result.blocks == 0:
        raise SystemExit(f"realm index remove: no block of {', '.join(missing)} in {args.store}; check the titles")
    where = f"{args.store} and {args.index}" if args.index else args.store
    note = f"; not found: {', '.join(missing)}" if missing else ""
    print(f"{where}: {result.blocks:,} blocks removed ({result.newly_removed:,} new){note}{_change_lines(result.change)}")
    return 0


def _index_compact(args: argparse.Namespace) -> int:
    from realm.index.live import removed_ids
    from realm.index.update import compact_index

    if args.store is None:
        if args.sparse:
            raise SystemExit("realm index compact: --sparse needs --store (the BM25 index is rebuilt from it)")
        merged = compact_index(args.index)
        print(f"{args.index}: {merged} appended segment(s) merged; unreferenced files deleted (block ids unchanged)")
        removed = len(removed_ids(args.index))
        if removed:
            print(f"  {removed:,} removed blocks keep their rows (filtered at search); drop them from the store and "
                  f"the index with: realm index compact --index {args.index} --store <store>")  # fmt: skip
        return 0
    from realm.index.reclaim import reclaim

    result = reclaim(args.store, args.index, sparse_dir=args.sparse)
    if result.finished_interrupted:
        print("finished an interrupted compaction (the store was published, the index not yet)")
    if not result.removed:
        print(f"{args.store} and {args.index}: no removed blocks; nothing to reclaim")
        return 0
    (sb, sa), (ib, ia) = result.store_bytes, result.index_bytes
    print(
        f"{args.store} and {args.index}: {result.removed:,} removed blocks dropped ({result.blocks_before:,} -> "
        f"{result.blocks_after:,} blocks); store segments {sb:,} -> {sa:,} bytes, index {ib:,} -> {ia:,} bytes\n"
        "  block ids are renumbered: compacted-dropped.npy in both directories lists the dropped old ids (new id i = the i-th old id kept)"
    )
    for note in result.notes:
        print(f"  {note}")
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
        num_workers=args.workers, replace=args.replace,
    )  # fmt: skip
    if result.change is None:
        print(f"{args.index}: {args.input} was already added (blocks {result.blocks_before:,}..{result.blocks_after - 1:,})")
        return 0
    verb = "resumed: " if result.resumed else ""
    replaced = f"; {result.replaced:,} older blocks of the same titles removed" if args.replace else ""
    print(
        f"{verb}{args.index}: {result.blocks_before:,} -> {result.blocks_after:,} blocks (only the new ones embedded, "
        f"in a new segment){replaced}{_change_lines(result.change)}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from realm.verify import verify_path

    failed = 0
    for path in args.paths:
        report = verify_path(path)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0

"""REALM's knowledge corpus: documents -> <=288-wordpiece blocks -> a memory-mapped block store.

* `realm.corpus.documents`: streaming readers (JSONL, WikiExtractor ``--json``, folders of ``.txt``).
* `realm.corpus.sentences`: the regex sentence splitter.
* `realm.corpus.blocks`: ORQA's block recipe (`BuildConfig`, `BlockBuilder`); `realm.corpus.stats`: `BuildStats`.
* `realm.corpus.store`: `BlockStore` (Arrow IPC segments + manifest; layout in `realm.corpus.segments`).
* `realm.corpus.build`: `build_store` and `import_block_records`.

Typical use::

    from realm import RealmTokenizerFast
    from realm.corpus import BlockStore, BuildConfig, build_store

    tokenizer = RealmTokenizerFast.from_pretrained("google/realm-orqa-nq-openqa")
    stats = build_store("enwiki-json/", "blocks/", tokenizer, BuildConfig(max_block_tokens=288))
    print(stats.summary())
    store = BlockStore.open("blocks/")
    store.texts([0, 17]), store.token_ids([0, 17])
"""

from .blocks import Block, BlockBuilder, BuildConfig, build_blocks, skip_reason
from .build import build_store, import_block_records, load_block_records
from .documents import CorpusFormatError, Document, DocumentReader, read_documents, source_fingerprint
from .segments import tokenizer_fingerprint
from .sentences import split_sentences
from .stats import BuildStats
from .store import BlockBatch, BlockStore

__all__ = [
    "Block",
    "BlockBatch",
    "BlockBuilder",
    "BlockStore",
    "BuildConfig",
    "BuildStats",
    "CorpusFormatError",
    "Document",
    "DocumentReader",
    "build_blocks",
    "build_store",
    "import_block_records",
    "load_block_records",
    "read_documents",
    "skip_reason",
    "source_fingerprint",
    "split_sentences",
    "tokenizer_fingerprint",
]

from __future__ import annotations

import os
from pathlib import Path

import pytest

from realm import RealmConfig

# Tests run offline: any accidental hub access fails at once instead of reaching the network.
os.environ["HF_HUB_OFFLINE"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"


def tiny_config(**changes: object) -> RealmConfig:
    """A config small enough to build any model class in milliseconds."""
    values = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        retriever_proj_size=16,
        span_hidden_size=24,
        max_span_width=4,
        reader_beam_size=3,
        searcher_beam_size=5,
        reader_seq_len=24,
        num_candidates=3,
        num_block_records=8,
        max_position_embeddings=64,
    )
    values.update(changes)
    return RealmConfig(**values)


@pytest.fixture
def config() -> RealmConfig:
    return tiny_config()

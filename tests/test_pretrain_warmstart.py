"""The reader warm start (`realm.pretrain.warmstart`) and a frozen document tower read from the index."""

from __future__ import annotations

import pytest
import torch

from realm import RealmKnowledgeAugEncoder
from realm.corpus import BlockStore
from realm.objectives import IGNORE_INDEX
from realm.pretrain.masking import MaskingConfig, SentenceMasker
from realm.pretrain.warmstart import ReaderWarmStartConfig, context_examples, warm_start_reader
from tests.test_pretrain import make_corpus, masked_batch, pretrainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return make_corpus(tmp_path_factory.mktemp("warmstart") / "corpus", num_facts=12)


def test_a_frozen_document_tower_scores_candidates_with_the_index_vectors(corpus) -> None:
    model = pretrainer(corpus, num_candidates=4).eval()
    model.query_embedder.requires_grad_(False)  # shared towers: the document tower is frozen too
    batch = masked_batch(model.store, [0, 3, 7])
    rows: list[int] = []
    hook = model.block_embedder.register_forward_hook(lambda module, args, kwargs_out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        reused = model(**batch)
    hook.remove()
    assert rows[-1] == 1  # the null block only: the 3 x 3 retrieved blocks were not run through the tower
    # The same step re-embedding every candidate (a trainable document tower takes that path).
    model.block_embedder.cls.requires_grad_(True)
    with torch.no_grad():
        embedded = model(**batch)
    assert torch.equal(reused.candidate_ids, embedded.candidate_ids)
    assert float(reused.loss) == pytest.approx(float(embedded.loss), rel=1e-5)
    assert float(reused.marginal_log_likelihood) == pytest.approx(float(embedded.marginal_log_likelihood), rel=1e-5)


def copy_documents(store: BlockStore) -> list[list[str]]:
    """Two-sentence documents: a fact block's sentence, then the same sentence again (its entity to copy)."""
    texts = store.texts(range(len(store)))
    return [[text, text] for text in texts]


def mlm_loss(encoder: RealmKnowledgeAugEncoder, examples: list) -> float:
    """The full encoder's mean loss over the examples' masked tokens (no cached states)."""
    total, count = 0.0, 0
    encoder.eval()
    with torch.no_grad():
        for e in examples:
            logits = encoder(torch.tensor([e.input_ids]), token_type_ids=torch.tensor([e.token_type_ids])).logits[0]
            labels = torch.tensor(e.labels)
            keep = labels != IGNORE_INDEX
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_warm_start_trains_the_upper_layers_and_head_only_and_lowers_the_full_model_s_loss(corpus) -> None:
    store = BlockStore.open(corpus["store"])
    tokenizer = store.load_tokenizer()
    masker = SentenceMasker(tokenizer, MaskingConfig(strategy="random_token", mask_rate=0.3, query_seq_len=32))
    documents = copy_documents(store) + [["a lone sentence ."]]
    examples, counts = context_examples(documents, tokenizer, masker, 64, seed=0)
    assert counts["documents"] == len(documents) and counts["single_sentence"] == 1
    assert len(examples) == len(store)
    for e in examples:  # `[CLS] masked [SEP] context [SEP]`, types 0 | 1, labels only in the first segment
        assert len(e.input_ids) == len(e.token_type_ids) == len(e.labels) <= 64
        first = e.token_type_ids.index(1)
        assert e.input_ids[first - 1] == tokenizer.sep_token_id and e.input_ids[-1] == tokenizer.sep_token_id
        assert all(label == IGNORE_INDEX for label in e.labels[first:]) and any(label != IGNORE_INDEX for label in e.labels)

    encoder = RealmKnowledgeAugEncoder.from_pretrained(corpus["encoder"])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    loss_before = mlm_loss(encoder, examples)
    rows = warm_start_reader(encoder, examples, ReaderWarmStartConfig(train_from=1, steps=60, batch_size=8, lr=3e-3))
    after = encoder.state_dict()
    for name, value in after.items():
        frozen = name.startswith(("realm.embeddings.", "realm.encoder.layer.0.", "realm.pooler.")) or name.endswith("decoder.weight")
        assert torch.equal(value, before[name]) == frozen, name
    assert all(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert rows[-1]["step"] == 60 and rows[-1]["loss"] < rows[0]["loss"]
    # The cached lower-layer states trained the model the full forward computes.
    assert mlm_loss(encoder, examples) < 0.8 * loss_before


def test_warm_start_refuses_bad_settings(corpus) -> None:
    encoder = RealmKnowledgeAugEncoder.from_pretrained(corpus["encoder"])
    with pytest.raises(ValueError, match="only 2 layers"):
        warm_start_reader(encoder, [object()], ReaderWarmStartConfig(train_from=2))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one example"):
        warm_start_reader(encoder, [], ReaderWarmStartConfig())
    with pytest.raises(ValueError, match="steps"):
        ReaderWarmStartConfig(steps=0)

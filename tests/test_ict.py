"""The Inverse Cloze Task: example layout and removal rate, the in-batch loss against a hand-written
formula, learning, and a real 2-process gloo run equal to one process on the whole batch."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from realm.corpus import BlockStore
from realm.inputs import block_inputs
from realm.modeling.embedder import RealmEmbedder
from realm.pretrain.ict import (
    ICTConfig,
    ICTExample,
    ICTExampleGenerator,
    ICTModel,
    collate_ict,
    in_batch_softmax_loss,
)
from realm.tokenization import RealmTokenizerFast
from tests.conftest import tiny_config
from tests.test_masking import PAGES, VOCAB, make_store

SMALL = ICTConfig(query_seq_len=32, block_seq_len=64)


@pytest.fixture(scope="module")
def tokenizer() -> RealmTokenizerFast:
    return RealmTokenizerFast(vocab_file=VOCAB)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> BlockStore:
    pages = PAGES + [("", "Rome is old. It has many churches.")]  # an empty title too
    return make_store(tmp_path_factory.mktemp("ict") / "blocks", tokenizer, pages, max_block_tokens=64)


def contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_layout_and_removal_rate(store, tokenizer) -> None:
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    generator = ICTExampleGenerator(store, tokenizer, ICTConfig(), seed=0)
    removed = 0
    n = 600
    for i in range(n):
        e = generator.example(i)
        title, tokens = store.title_ids([e.source_block])[0], store.token_ids([e.source_block])[0]
        starts = store.sentence_starts([e.source_block])[0]
        assert len(starts) >= 2
        sentences = [tokens[a:b] for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True)]
        # query: [CLS] one whole sentence of the block [SEP]
        assert e.query_ids[0] == cls_id and e.query_ids[-1] == sep_id and len(e.query_ids) <= 64
        sentence = e.query_ids[1:-1]
        assert sentence in sentences
        # block: [CLS] title [SEP] text [SEP], types 0 up to the first [SEP], 1 after
        t = len(title)
        assert e.block_ids[: t + 2] == [cls_id, *title, sep_id] and e.block_ids[-1] == sep_id
        assert e.block_type_ids == [0] * (t + 2) + [1] * (len(e.block_ids) - t - 2)
        assert len(e.block_ids) <= 288
        body = e.block_ids[t + 2 : -1]
        if e.removed:
            removed += 1
            k = starts[sentences.index(sentence)]
            assert body == tokens[:k] + tokens[k + len(sentence) :]
            assert not contains(body, sentence)
        else:
            assert body == tokens
            # exactly what the index builder feeds the embedder for this block
            assert (e.block_ids, e.block_type_ids) == block_inputs(title, tokens, cls_id, sep_id, 288)
    # 0.9 of 600: standard deviation ~7.3, so [0.85, 0.95] is +-4 sd
    assert 0.85 * n <= removed <= 0.95 * n, removed
    assert generator.counters["examples"] == n


def test_truncation_and_determinism(store, tokenizer) -> None:
    config = ICTConfig(query_seq_len=8, block_seq_len=20, remove_rate=0.5)
    a = ICTExampleGenerator(store, tokenizer, config, seed=1)
    b = ICTExampleGenerator(store, tokenizer, config, seed=1)
    c = ICTExampleGenerator(store, tokenizer, config, seed=2)
    first = [a.example(i) for i in range(30)]
    assert [b.example(i) for i in reversed(range(30))][::-1] == first
    assert [c.example(i) for i in range(30)] != first
    for e in first:
        assert len(e.query_ids) <= 8 and len(e.block_ids) <= 20 and len(e.block_type_ids) == len(e.block_ids)


def test_single_sentence_blocks_are_redrawn_or_refused(tmp_path, tokenizer) -> None:
    one = make_store(tmp_path / "one", tokenizer, [("Rome", "Rome is old.")])
    with pytest.raises(ValueError, match="no block with >= 2 sentences"):
        ICTExampleGenerator(one, tokenizer, ICTConfig(), seed=0).example(0)
    with pytest.raises(ValueError, match="ICTConfig.remove_rate"):
        ICTConfig(remove_rate=1.5)


def test_collate_ict() -> None:
    examples = [
        ICTExample([1, 5, 2], [1, 7, 2, 8, 2], [0, 0, 0, 1, 1]),
        ICTExample([1, 5, 6, 2], [1, 2, 9, 2], [0, 0, 1, 1]),
    ]
    batch = collate_ict(examples, pad_id=0)
    assert batch["query_input_ids"].tolist() == [[1, 5, 2, 0], [1, 5, 6, 2]]
    assert batch["query_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["block_input_ids"].tolist() == [[1, 7, 2, 8, 2], [1, 2, 9, 2, 0]]
    assert batch["block_attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["block_token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]]


# --------------------------------------------------------------------------------------------- the model


def tiny_model(vocab_size: int, seed: int = 0) -> ICTModel:
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ICTModel(RealmEmbedder(config))


def ict_batch(store, tokenizer, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = ICTExampleGenerator(store, tokenizer, SMALL, seed=seed)
    return collate_ict([generator.example(i) for i in range(n)], tokenizer.pad_token_id)


def test_in_batch_softmax_loss_against_the_formula() -> None:
    torch.manual_seed(0)
    q, b = torch.randn(3, 5), torch.randn(7, 5)
    targets = torch.tensor([4, 0, 6])
    loss, accuracy = in_batch_softmax_loss(q, b, targets)
    by_hand, correct = 0.0, 0
    for i in range(3):
        scores = [sum(float(q[i, d]) * float(b[j, d]) for d in range(5)) for j in range(7)]
        by_hand -= scores[targets[i]] - math.log(sum(math.exp(s) for s in scores))
        correct += max(range(7), key=scores.__getitem__) == targets[i]
    assert loss.item() == pytest.approx(by_hand / 3, rel=1e-5)
    assert accuracy.item() == pytest.approx(correct / 3)


def test_ict_model_loss_is_cross_entropy_over_the_batch(store, tokenizer) -> None:
    model = tiny_model(len(tokenizer))
    batch = ict_batch(store, tokenizer)
    out = model(**batch)
    embed = model.embedder
    q = embed(batch["query_input_ids"], attention_mask=batch["query_attention_mask"],
              token_type_ids=torch.zeros_like(batch["query_input_ids"])).projected_score.double()  # fmt: skip
    b = embed(batch["block_input_ids"], attention_mask=batch["block_attention_mask"],
              token_type_ids=batch["block_token_type_ids"]).projected_score.double()  # fmt: skip
    scores = q @ b.T  # [8, 8]
    by_hand = -(scores.diagonal() - scores.logsumexp(dim=1)).mean()
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert out.accuracy.item() == pytest.approx(
        (scores.argmax(dim=1) == torch.arange(8)).double().mean().item()
    )


def test_one_step_lowers_the_loss_and_reaches_the_embedder(store, tokenizer) -> None:
    model = tiny_model(len(tokenizer))
    batch = ict_batch(store, tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model(**batch).loss
    before.backward()
    word_grad = model.embedder.realm.embeddings.word_embeddings.weight.grad
    assert word_grad is not None and word_grad.abs().sum() > 0
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("embedder.cls.predictions.")
    }
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after = model(**batch).loss
    assert after.item() < before.item()


# --------------------------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        saved = torch.load(Path(directory) / "inputs.pt", weights_only=False)
        model = ICTModel(RealmEmbedder(saved["config"]))
        model.load_state_dict(saved["state"])
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        local = saved["batch"]["query_input_ids"].shape[0] // world_size
        half = {k: v[rank * local : (rank + 1) * local] for k, v in saved["batch"].items()}
        out = ddp(**half)
        out.loss.backward()  # DDP averages the gradients over the processes
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": out.loss.detach(), "grads": grads}, Path(directory) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_whole_batch(store, tokenizer, tmp_path) -> None:
    model = tiny_model(len(tokenizer))
    batch = ict_batch(store, tokenizer, n=8)
    out = model(**batch)
    out.loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save(
        {"config": model.embedder.config, "state": model.state_dict(), "batch": batch}, tmp_path / "inputs.pt"
    )

    env = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # equal halves: the global mean loss is the mean of the two processes' losses
    assert ((ranks[0]["loss"] + ranks[1]["loss"]) / 2).item() == pytest.approx(out.loss.item(), abs=1e-5)
    assert ranks[0]["loss"].item() != pytest.approx(ranks[1]["loss"].item(), abs=1e-4)  # halves differ
    for r in ranks:
        assert r["grads"].keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(r["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)

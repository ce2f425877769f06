"""Behaviour beyond the port's own cases: batches, any number of blocks, clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from realm import (
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
    RealmTokenizer,
)
from realm.objectives import marginal_mlm_loss
from tests.conftest import REFERENCE, tiny_config

QUESTIONS = ["the capital of france?", "which city has the eiffel tower?", "the capital of italy"]
ANSWERS = [["paris"], ["paris", "the eiffel tower"], ["rome"]]


def openqa_model() -> RealmForOpenQA:
    directory = REFERENCE / "openqa_eval"
    tokenizer = RealmTokenizer.from_pretrained(directory)
    records = json.loads((directory / "block_records.json").read_text())
    return RealmForOpenQA.from_pretrained(
        directory,
        retriever=RealmRetriever(records, tokenizer),
        hidden_dropout_prob=0.0,  # train mode stays deterministic
        attention_probs_dropout_prob=0.0,
    )


def encode(model: RealmForOpenQA, questions: list[str], answers: list[list[str]]):
    tokenizer = model.retriever.tokenizer
    inputs = tokenizer(questions, padding="max_length", max_length=12, return_tensors="pt")
    answer_ids = [tokenizer(a, add_special_tokens=False).input_ids for a in answers]
    return inputs, answer_ids


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_equals_one_question_at_a_time(mode: str) -> None:
    model = openqa_model()
    model.train(mode == "train")
    inputs, answer_ids = encode(model, QUESTIONS, ANSWERS)
    batch = model(**inputs, answer_ids=answer_ids)
    losses = []
    for b in range(len(QUESTIONS)):
        single = model(**{k: v[b : b + 1] for k, v in inputs.items()}, answer_ids=answer_ids[b])
        out = single.reader_output
        assert torch.equal(batch.retrieved_block_ids[b], single.retrieved_block_ids)
        assert torch.equal(batch.predicted_answer_ids[b], single.predicted_answer_ids)
        assert batch.reader_output.block_idx[b] == out.block_idx
        assert batch.reader_output.start_pos[b] == out.start_pos and batch.reader_output.end_pos[b] == out.end_pos
        assert torch.equal(batch.reader_output.retriever_correct[b], out.retriever_correct)
        torch.testing.assert_close(batch.reader_output.retriever_loss[b], out.retriever_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.reader_output.reader_loss[b], out.reader_loss, atol=1e-5, rtol=1e-5)
        losses.append(out.loss)
    torch.testing.assert_close(batch.reader_output.loss, torch.stack(losses).mean(), atol=1e-5, rtol=1e-5)
    assert isinstance(batch.predicted_answer_ids, list) and batch.reader_output.block_idx.shape == (3,)


def test_gradient_reaches_the_query_tower_and_reader_not_the_index() -> None:
    model = openqa_model().train()
    inputs, answer_ids = encode(model, QUESTIONS[:2], ANSWERS[:2])
    out = model(**inputs, answer_ids=answer_ids)
    assert out.reader_output.loss > 0
    out.reader_output.loss.backward()
    assert model.embedder.cls.dense.weight.grad.abs().sum() > 0
    assert model.reader.qa_outputs.dense_output.weight.grad.abs().sum() > 0
    assert model.block_emb.grad is None


def test_answer_ids_as_padded_tensor_match_the_list() -> None:
    model = openqa_model()
    inputs, answer_ids = encode(model, QUESTIONS[1:2], ANSWERS[1:2])
    ids = answer_ids[0]
    width = max(len(a) for a in ids)
    padded = torch.tensor([a + [-1] * (width - len(a)) for a in ids])
    assert width > min(len(a) for a in ids)  # the padding is really there
    from_list = model(**inputs, answer_ids=ids).reader_output
    from_tensor = model(**inputs, answer_ids=padded).reader_output
    assert from_list.loss > 0
    torch.testing.assert_close(from_tensor.loss, from_list.loss)
    assert torch.equal(from_tensor.reader_correct, from_list.reader_correct)


def test_openqa_errors() -> None:
    model = openqa_model()
    inputs, answer_ids = encode(model, QUESTIONS[:2], ANSWERS[:2])
    with pytest.raises(ValueError, match="answers for 1 questions but the batch has 2"):
        model(**inputs, answer_ids=[answer_ids[0]])
    with pytest.raises(ValueError, match="one question's answers but the batch has 2"):
        model(**inputs, answer_ids=answer_ids[0])
    model.retriever = None
    with pytest.raises(ValueError, match="needs a retriever"):
        model(**inputs)


def test_block_embedding_to() -> None:
    model = openqa_model()
    model.block_embedding_to("cpu")
    assert model.block_emb.device.type == "cpu"
    inputs, _ = encode(model, QUESTIONS[:1], ANSWERS[:1])
    assert model(**inputs).predicted_answer_ids.dim() == 1


def reader_case() -> tuple[RealmReader, dict[str, torch.Tensor]]:
    directory = REFERENCE / "reader_eval_labels"
    io = load_file(directory / "io.safetensors")
    return RealmReader.from_pretrained(directory), {k[6:]: v for k, v in io.items() if k.startswith("input.")}


def test_reader_reads_any_number_of_blocks() -> None:
    reader, inputs = reader_case()
    r = inputs["input_ids"].shape[0]
    assert r == reader.config.reader_beam_size
    full = reader(**inputs)
    # Fewer blocks: the first two rows, scored exactly as the port scores them among three.
    two = reader(**{k: (v[:2] if k in ("input_ids", "attention_mask", "token_type_ids") else v) for k, v in inputs.items()})
    assert two.reader_correct.shape[0] == 2
    # More blocks than reader_beam_size: the port would crash; we read all of them.
    more = {k: torch.cat([v, v[:1]]) if k in ("input_ids", "attention_mask", "token_type_ids") else v for k, v in inputs.items()}
    out = reader(**more)
    assert out.reader_correct.shape[0] == r + 1 and out.loss is not None
    assert torch.isfinite(full.loss) and torch.isfinite(two.loss)


def test_reader_needs_token_type_ids_and_enough_scores() -> None:
    reader, inputs = reader_case()
    with pytest.raises(ValueError, match="needs token_type_ids"):
        reader(**{k: v for k, v in inputs.items() if k != "token_type_ids"})
    with pytest.raises(ValueError, match="relevance_score has 2 entries"):
        reader(**{**inputs, "relevance_score": inputs["relevance_score"][:2]})
    with pytest.raises(ValueError, match="block_mask"):
        reader(**{k: v for k, v in inputs.items() if k != "block_mask"})


def test_return_dict_false_gives_the_ports_tuple() -> None:
    reader, inputs = reader_case()
    record = reader(**inputs)
    as_tuple = reader(**inputs, return_dict=False)
    assert len(as_tuple) == 9 and torch.equal(as_tuple[5], record.block_idx)
    assert torch.equal(record[0], record.loss) and torch.equal(record["start_pos"], record.start_pos)


def test_scorer_takes_the_candidate_count_from_the_inputs() -> None:
    scorer = RealmScorer(tiny_config(num_candidates=3)).eval()
    query = torch.randint(5, 64, (2, 6))
    candidates = torch.randint(5, 64, (2, 5, 7))
    out = scorer(input_ids=query, candidate_input_ids=candidates)
    assert out.relevance_score.shape == (2, 5) and out.candidate_score.shape == (2, 5, 16)
    expected = torch.einsum("bd,bcd->bc", out.query_score, out.candidate_score)
    torch.testing.assert_close(out.relevance_score, expected)
    with pytest.raises(ValueError, match="candidate_input_ids"):
        scorer(input_ids=query)


def test_encoder_loss_is_the_marginal_written_out() -> None:
    """Per-token marginal over blocks, against the sum spelled out with loops."""
    torch.manual_seed(0)
    encoder = RealmKnowledgeAugEncoder(tiny_config()).eval()
    b, c, t = 2, 3, 6
    input_ids = torch.randint(5, 64, (b, c, t))
    relevance = torch.randn(b, c)
    labels = torch.full((b, t), -100)
    labels[0, 2], labels[1, 4], labels[1, 1] = 7, 9, 11
    out = encoder(input_ids=input_ids, relevance_score=relevance, labels=labels)
    logp = out.logits.view(b, c, t, -1).log_softmax(-1)
    prior = relevance.log_softmax(-1)
    total = 0.0
    for i in range(b):
        for j in range(t):
            if labels[i, j] != -100:
                total += torch.logsumexp(torch.stack([prior[i, k] + logp[i, k, j, labels[i, j]] for k in range(c)]), 0)
    torch.testing.assert_close(out.loss, -total / (b * t))
    mask = (labels != -100).float()
    torch.testing.assert_close(
        marginal_mlm_loss(out.logits.view(b, c, t, -1), labels, relevance, mask), -total / mask.sum()
    )
    with pytest.raises(ValueError, match="relevance_score"):
        encoder(input_ids=input_ids, labels=labels)


def test_embedder_accepts_missing_token_type_ids() -> None:
    embedder = RealmEmbedder(tiny_config()).eval()
    ids = torch.randint(5, 64, (3, 8))
    torch.testing.assert_close(embedder(ids).projected_score, embedder(ids, token_type_ids=torch.zeros_like(ids)).projected_score)


def test_bf16_autocast_runs_close_to_fp32() -> None:
    reader, inputs = reader_case()
    fp32 = reader(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = reader(**inputs)
    assert torch.isfinite(bf16.loss)
    torch.testing.assert_close(bf16.loss, fp32.loss, atol=0.1, rtol=0.05)

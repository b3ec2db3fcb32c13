"""The token gate of a decoder: greedy tokens a user sees and perplexity on a held-out text, each judged
against eager under the tolerance in force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.errors import RecipeError
from pipeline.model.cache import CacheLayout
from pipeline.model.inputs import Inputs
from pipeline.recipe.schema import DEFAULT_TOLERANCE, Tolerance
from pipeline.verify.cases import Case, CaseKind, split_generation
from pipeline.verify.decoding import judge_decoding
from pipeline.verify.perplexity import perplexity, perplexity_change, text_windows, window_nll, window_outputs

LAYOUT = CacheLayout(layers=1, heads=1, head_dim=2)
VOCAB = 5


class Tokenizer:
    """Each whitespace-separated word is one token: its length mod the vocabulary."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [len(word) % VOCAB for word in text.split()]}


def bigram(table: np.ndarray) -> object:
    """A decoder whose next-token logits depend on the current token only (log-probabilities ``table``)."""
    def fn(inputs: Inputs) -> dict[str, np.ndarray]:
        ids = inputs["input_ids"]
        batch, seq = ids.shape
        past = inputs[LAYOUT.past_names[0]].shape[2]
        grown = np.zeros((batch, 1, past + seq, 2), dtype=np.float32)
        return {"logits": table[ids], **dict.fromkeys(LAYOUT.present_names, grown)}
    return fn


def log_softmax(scores: np.ndarray) -> np.ndarray:
    return scores - np.log(np.exp(scores).sum(-1, keepdims=True))


def test_window_nll_is_the_negative_log_likelihood_of_each_next_token() -> None:
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = np.array([[2, 0, 1]])
    assert window_nll(logits, ids)[0] == pytest.approx(-math.log(0.5) - math.log(0.8))
    # shifting every logit by a constant changes nothing (a log-softmax inside)
    assert window_nll(logits + 7.0, ids)[0] == pytest.approx(window_nll(logits, ids)[0])


def test_text_windows_cut_full_windows_in_batches_with_an_empty_cache() -> None:
    text = " ".join(["a", "bb", "ccc"] * 5)  # 15 tokens
    windows = text_windows(Tokenizer(), text, window=4, batch=2, limit=None, layout=LAYOUT)
    assert [w["input_ids"].shape for w in windows] == [(2, 4), (1, 4)]  # 3 full windows; the tail of 3 is left out
    assert windows[0]["attention_mask"].all() and windows[0][LAYOUT.past_names[0]].shape == (2, 1, 0, 2)
    assert len(text_windows(Tokenizer(), text, 4, 2, limit=1, layout=LAYOUT)) == 1
    with pytest.raises(RecipeError, match="fewer than one window"):
        text_windows(Tokenizer(), "a bb", 4, 2, None, LAYOUT)


def test_perplexity_is_exp_of_the_mean_nll_and_its_change_is_relative_to_eager() -> None:
    outputs = [{"nll": np.array([2.0, 4.0]), "count": np.array([3, 3])}]
    value, count = perplexity(outputs)
    assert count == 6 and value == pytest.approx(math.exp(1.0))
    worse = [{"nll": np.array([2.6, 4.0]), "count": np.array([3, 3])}]
    change = perplexity_change(outputs, worse)
    assert change["increase"] == pytest.approx(math.exp(1.1) / math.exp(1.0) - 1)


def _cases(table: np.ndarray) -> list[Case]:
    eager = bigram(table)
    prompt = {"input_ids": np.array([[0, 1], [1, 2]]), "attention_mask": np.ones((2, 2), dtype=np.int64)}
    from pipeline.verify.greedy import greedy

    tokens = greedy(eager, prompt, LAYOUT, 4)
    generate = Case("generate_0", prompt, {"tokens": tokens, "visible": np.array([4, 4])}, CaseKind.GENERATE)
    window = {"input_ids": np.array([[0, 1, 2, 3, 4, 0]]), "attention_mask": np.ones((1, 6), dtype=np.int64),
              **LAYOUT.empty(1)}
    return [generate, Case("perplexity_0", window, window_outputs(eager, window), CaseKind.PERPLEXITY)]


def test_the_gate_passes_eager_itself_and_names_token_match_and_perplexity_when_they_miss() -> None:
    rng = np.random.default_rng(0)
    table = log_softmax(rng.standard_normal((VOCAB, VOCAB)) * 3).astype(np.float32)
    cases = _cases(table)
    forward, decoding = split_generation([Case("f", {"input_ids": np.zeros((1, 1))}, {"logits": np.zeros(1)}),
                                          *cases])
    assert [c.name for c in forward] == ["f"] and decoding == cases
    tolerance = DEFAULT_TOLERANCE["int4"]
    same = judge_decoding(bigram(table), cases, LAYOUT, 4, tolerance)
    assert not same.failures and same.generation is not None and same.generation["share"] == 1.0
    assert same.perplexity is not None and same.perplexity["increase"] == pytest.approx(0.0, abs=1e-9)
    flipped = table.copy()
    flipped[:, [0, 1, 2, 3, 4]] = table[:, [4, 3, 2, 1, 0]]  # another arg-max for most tokens, a worse likelihood
    bad = judge_decoding(bigram(flipped), cases, LAYOUT, 4, tolerance)
    assert any(line.startswith("token match: ") for line in bad.failures)
    assert any(line.startswith("perplexity: ") for line in bad.failures)
    sequences = Tolerance(min_sequences_equal=1.0).over(Tolerance())
    assert any("sequences equal" in line for line in judge_decoding(bigram(flipped), cases, LAYOUT, 4,
                                                                    sequences).failures)


def test_an_artifact_that_cannot_decode_fails_the_gate_with_the_reason() -> None:
    def broken(inputs: Inputs) -> dict[str, np.ndarray]:
        raise RuntimeError("no kernel for MatMulNBits")

    table = log_softmax(np.zeros((VOCAB, VOCAB), dtype=np.float32))
    verdict = judge_decoding(broken, _cases(table), LAYOUT, 4, DEFAULT_TOLERANCE["int8"])
    assert verdict.failures and "does not run" in verdict.failures[0] and "MatMulNBits" in verdict.failures[0]

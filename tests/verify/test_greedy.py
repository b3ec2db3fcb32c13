"""Greedy decoding with a key/value cache (prefill, then one token a step, the returned cache fed back), and
token_match: each sequence counted up to its first difference from eager's tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.model.cache import CacheLayout, with_cache
from pipeline.model.inputs import Inputs, load_sentences
from pipeline.model.loading import ModelHandle
from pipeline.model.spec import ModelSpec
from pipeline.runtime.runner import run_module
from pipeline.verify.greedy import (
    eager_generate,
    greedy,
    next_inputs,
    prompt_batches,
    steps,
    token_match,
    visible_lengths,
)

VOCAB = 11
LAYOUT = CacheLayout(layers=2, heads=1, head_dim=3)


class Counter:
    """A fake decoder step: each new position's cache entry is its token id, and the next token is
    (last token + cache length before this call + number of real tokens) mod VOCAB, so a step that was fed
    the wrong cache, mask or token picks a different token. Every call's inputs are kept."""

    def __init__(self) -> None:
        self.calls: list[Inputs] = []

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]:
        self.calls.append({name: np.array(value, copy=True) for name, value in inputs.items()})
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch, seq = ids.shape
        past = inputs[LAYOUT.past_names[0]].shape[2]
        assert mask.shape == (batch, past + seq), (mask.shape, past, seq)
        new = np.broadcast_to(ids[:, None, :, None].astype(np.float32), (batch, LAYOUT.heads, seq, LAYOUT.head_dim))
        present = {out: np.concatenate([inputs[past_name], new], axis=2)
                   for past_name, out in zip(LAYOUT.past_names, LAYOUT.present_names, strict=True)}
        # the choice reads the cache back: its first layer's key at the last position must be the last token
        last = present["present.0.key"][:, 0, -1, 0].astype(np.int64)
        assert (last == ids[:, -1]).all()
        chosen = (last + past + mask.sum(axis=1)) % VOCAB
        logits = np.zeros((batch, seq, VOCAB), dtype=np.float32)
        logits[np.arange(batch), -1, chosen] = 1.0
        logits[:, :-1, 0] = 5.0  # earlier positions favour token 0: only the last position may be read
        return {"logits": logits, **present}


def _prompt() -> Inputs:
    ids = np.array([[0, 3, 4], [2, 5, 6]], dtype=np.int64)
    mask = np.array([[0, 1, 1], [1, 1, 1]], dtype=np.int64)  # row 0 left-padded
    return {"input_ids": ids, "attention_mask": mask}


def _expected(prompt: Inputs, new_tokens: int) -> np.ndarray:
    """The tokens Counter leads to, worked out step by step without the cache."""
    rows = []
    for ids, mask in zip(prompt["input_ids"], prompt["attention_mask"], strict=True):
        last, past, real, out = int(ids[-1]), 0, int(mask.sum()), []
        seq = len(ids)
        for _ in range(new_tokens):
            token = (last + past + real) % VOCAB
            out.append(token)
            past, seq, real, last = past + seq, 1, real + 1, token
        rows.append(out)
    return np.array(rows)


def test_greedy_takes_the_argmax_of_the_last_position_at_each_step() -> None:
    fn = Counter()
    tokens = greedy(fn, _prompt(), LAYOUT, 4)
    assert tokens.shape == (2, 4)
    assert tokens.tolist() == _expected(_prompt(), 4).tolist() == [[6, 1, 9, 8], [9, 5, 3, 3]]
    assert len(fn.calls) == 4


def test_prefill_starts_from_an_empty_cache_and_each_step_feeds_one_token_and_the_grown_cache() -> None:
    fn = Counter()
    tokens = greedy(fn, _prompt(), LAYOUT, 3)
    prefill, second, third = fn.calls
    assert prefill["input_ids"].tolist() == _prompt()["input_ids"].tolist()
    assert set(prefill) == {"input_ids", "attention_mask", *LAYOUT.past_names}
    assert all(prefill[name].shape == (2, 1, 0, 3) and prefill[name].dtype == np.float32 for name in LAYOUT.past_names)
    assert second["input_ids"].tolist() == tokens[:, :1].tolist() and second["input_ids"].dtype == np.int64
    assert third["input_ids"].tolist() == tokens[:, 1:2].tolist()
    assert second["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert third["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    # the cache of each step is the previous step's present: the prompt, then the prompt and the first token
    assert second["past_key_values.1.value"][:, 0, :, 0].tolist() == [[0, 3, 4], [2, 5, 6]]
    assert third["past_key_values.0.key"][:, 0, :, 0].tolist() == [[0, 3, 4, 6], [2, 5, 6, 9]]


def test_steps_yields_each_calls_inputs_outputs_and_choice_and_one_token_is_just_the_prefill() -> None:
    fn = Counter()
    seen = list(steps(fn, _prompt(), LAYOUT, 2))
    assert len(seen) == 2
    for (inputs, outputs, chosen), call in zip(seen, fn.calls, strict=True):
        assert inputs["input_ids"].tolist() == call["input_ids"].tolist()
        assert chosen.tolist() == outputs["logits"][:, -1].argmax(-1).tolist()
    one = Counter()
    assert greedy(one, _prompt(), LAYOUT, 1).tolist() == [[6], [9]]
    assert len(one.calls) == 1  # no decode step is prepared after the last token


def test_next_inputs_grows_the_mask_keeps_its_dtype_and_takes_the_present_tensors_as_float32() -> None:
    mask = np.array([[0, 1], [1, 1]], dtype=np.int32)
    inputs: Inputs = {"input_ids": np.zeros((2, 2), dtype=np.int64), "attention_mask": mask, **LAYOUT.empty(2, 2)}
    present = {name: np.full((2, 1, 3, 3), i, dtype=np.float16)[:, :, ::-1]  # a non-contiguous fp16 view
               for i, name in enumerate(LAYOUT.present_names)}
    step = next_inputs(inputs, {"logits": np.zeros((2, 2, VOCAB)), **present}, np.array([7, 8]), LAYOUT)
    assert set(step) == {"input_ids", "attention_mask", *LAYOUT.past_names}
    assert step["input_ids"].tolist() == [[7], [8]] and step["input_ids"].dtype == np.int64
    assert step["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]] and step["attention_mask"].dtype == np.int32
    for i, name in enumerate(LAYOUT.past_names):
        value = step[name]
        assert value.dtype == np.float32 and value.flags["C_CONTIGUOUS"] and value.shape == (2, 1, 3, 3)
        assert (value == i).all()  # past i comes from present i, in the layout's order


def test_token_match_of_identical_tokens_is_complete() -> None:
    want = [np.array([[1, 2, 3], [4, 5, 6]]), np.array([[7, 8, 9]])]
    match = token_match(want, [w.copy() for w in want])
    assert match == {"sequences": 3, "tokens": 9, "matched": 9, "share": 1.0, "sequences_equal": 3,
                     "sequences_share": 1.0, "first_differences": []}


def test_only_the_tokens_a_user_sees_count_up_to_and_including_the_end_of_text() -> None:
    want = [np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 7]])]  # row 0 ended at its 3rd token (end-of-text 0)
    got = [np.array([[1, 2, 0, 8, 9], [3, 4, 5, 6, 7]])]  # what follows an end-of-text is never shown
    visible = [visible_lengths(want[0], {0})]
    assert visible[0].tolist() == [3, 5]
    match = token_match(want, got, visible)
    assert (match["tokens"], match["matched"], match["sequences_equal"]) == (8, 8, 2)
    early = [np.array([[1, 0, 7, 7, 7], [3, 4, 5, 6, 7]])]  # an end-of-text one token early is a difference
    assert token_match(want, early, visible)["first_differences"] == [1]
    assert visible_lengths(want[0], set()).tolist() == [5, 5]  # a model without an end-of-text token


def test_tokens_after_the_first_difference_never_count_even_when_they_agree_again() -> None:
    want = [np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]), np.array([[6, 7, 8, 9, 10]])]
    got = [np.array([[1, 9, 3, 4, 5], [1, 2, 3, 4, 5]]), np.array([[0, 7, 8, 9, 10]])]
    match = token_match(want, got)
    # row 0 agrees on 1 token (then 3 more that no longer count), row 1 on all 5, row 2 on none
    assert (match["sequences"], match["tokens"], match["matched"], match["sequences_equal"]) == (3, 15, 6, 1)
    assert match["share"] == pytest.approx(6 / 15)
    assert match["first_differences"] == [1, 0]  # in corpus order, only for rows that differ


def test_token_match_lists_at_most_twenty_first_differences_and_an_empty_run_is_a_full_match() -> None:
    want = [np.zeros((25, 3), dtype=np.int64)]
    got = [np.zeros((25, 3), dtype=np.int64)]
    got[0][:, 2] = 1
    match = token_match(want, got)
    assert match["first_differences"] == [2] * 20 and match["matched"] == 50 and match["sequences_equal"] == 0
    assert token_match([], [])["share"] == 1.0
    with pytest.raises(ValueError):  # a missing batch is an error, not a silently shorter comparison
        token_match(want, [])


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_config: Path) -> ModelHandle:
    """The tiny random GPT-2 with its cache inputs and outputs (eager attention)."""
    spec = ModelSpec(source=str(tiny_gpt2_config), tokenizer="packaged:all-MiniLM-L6-v2", attn_implementation="eager")
    handle = ModelHandle(spec, "text-generation", ["input_ids", "attention_mask"], ["logits"])
    with_cache(handle, {})
    return handle


def test_greedy_with_the_eager_decoder_gives_generates_tokens_on_left_padded_prompts(gpt2: ModelHandle) -> None:
    prompts = prompt_batches(gpt2.tokenizer, load_sentences()[:5], 3)
    assert [p["input_ids"].shape[0] for p in prompts] == [3, 2]  # corpus order, the last batch shorter
    assert all(p["attention_mask"][:, -1].all() for p in prompts)  # left padding: every row ends in a real token
    assert not prompts[0]["attention_mask"].all()
    loaded: Any = gpt2.load().module  # the decoder wrapper: its causal LM and cache layout
    expected = [eager_generate(loaded.model, p, 5, gpt2.tokenizer.pad_token_id)["tokens"] for p in prompts]
    assert [e.shape for e in expected] == [(3, 5), (2, 5)]
    tokens = [greedy(lambda x: run_module(loaded, x, gpt2.input_names, gpt2.output_names), p, loaded.layout, 5)
              for p in prompts]
    match = token_match(expected, tokens)
    assert match["matched"] == match["tokens"] == 25 and match["sequences_equal"] == 5
    # a decoder that forgets its cache (each step sees only its one token) does not: the comparison can fail
    def forgetful(x: Inputs) -> dict[str, np.ndarray]:
        seq = x["input_ids"].shape[1]
        fed = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:, -seq:],
               **loaded.layout.empty(seq and x["input_ids"].shape[0])}
        return run_module(loaded, fed, gpt2.input_names, gpt2.output_names)

    forgot = token_match(expected, [greedy(forgetful, p, loaded.layout, 5) for p in prompts])
    assert forgot["first_differences"] and min(forgot["first_differences"]) >= 1  # the prefill still agrees

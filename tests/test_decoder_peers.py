"""The decoder peers' pure logic on fakes: the padding-free adapter, the token gate over a peer's outputs,
the arrays a peer's environment hands back, the generation worker's backend and the table.

The peers run itself (`make peers RECIPE=smollm2`) takes many minutes and is not part of `make test`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.decoder_arrays import load_inputs, load_outputs, save_inputs, save_outputs  # noqa: E402
from benchmarks.decoder_build import fresh, read_stamp, write_stamp  # noqa: E402
from benchmarks.decoder_gate import decoding_metrics, right_padded, verdicts  # noqa: E402
from benchmarks.decoder_report import markdown, round_speeds, row, speed  # noqa: E402
from benchmarks.decoder_worker import Generation  # noqa: E402
from benchmarks.peer_table import Target  # noqa: E402
from pipeline.model.cache import CacheLayout  # noqa: E402
from pipeline.recipe.schema import DEFAULT_TOLERANCE  # noqa: E402
from pipeline.verify.cases import Case, CaseKind  # noqa: E402
from pipeline.verify.greedy import greedy  # noqa: E402

LAYOUT = CacheLayout(layers=1, heads=1, head_dim=1)
VOCAB = 11


def right_reader(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A decoder step that reads padding as GroupQueryAttention does: each row's real positions first (as
    many as its mask has ones), padding after. The next token is (sum of the row's cached tokens + their
    count) mod VOCAB, so any padding read as real changes it."""
    ids, mask, past = inputs["input_ids"], inputs["attention_mask"], inputs["past_key_values.0.key"]
    batch, new = ids.shape
    key = np.zeros((batch, 1, mask.shape[1], 1), dtype=np.float32)
    logits = np.zeros((batch, new, VOCAB), dtype=np.float32)
    for index in range(batch):
        length = int(mask[index].sum())
        fresh_tokens = min(new, length)
        kept = length - fresh_tokens
        key[index, 0, :kept, 0] = past[index, 0, :kept, 0]
        key[index, 0, kept:length, 0] = ids[index, :fresh_tokens]
        logits[index, fresh_tokens - 1, int(key[index, 0, :length].sum() + length) % VOCAB] = 1.0
    return {"logits": logits, "present.0.key": key, "present.0.value": key.copy()}


def left_padded(rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Prompts left-padded with token 0."""
    width = max(map(len, rows))
    ids = np.asarray([[0] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.asarray([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask}


ROWS = [[3, 5, 7], [2], [4, 4, 4], [9, 1]]


def test_right_padded_gives_each_row_its_tokens_alone() -> None:
    prompt = left_padded(ROWS)
    alone = np.concatenate([greedy(right_reader, left_padded([r]), LAYOUT, 6) for r in ROWS])
    assert np.array_equal(greedy(right_padded(right_reader, LAYOUT), prompt, LAYOUT, 6), alone)
    assert not np.array_equal(greedy(right_reader, prompt, LAYOUT, 6), alone)  # the fake does need it


def test_right_padded_gives_back_the_left_padded_layout() -> None:
    prompt = {**left_padded(ROWS), **LAYOUT.empty(len(ROWS))}
    out = right_padded(right_reader, LAYOUT)(prompt)
    mask = prompt["attention_mask"].astype(bool)
    assert out["present.0.key"].shape == (4, 1, 3, 1)
    assert np.array_equal(out["present.0.key"][:, 0, :, 0], np.where(mask, prompt["input_ids"], 0))
    assert not out["logits"][~mask].any() and out["logits"][:, -1].sum() == len(ROWS)


def test_right_padded_passes_an_unpadded_batch_through() -> None:
    prompt = {"input_ids": np.asarray([[1, 2], [3, 4]]), "attention_mask": np.ones((2, 2), dtype=np.int64),
              **LAYOUT.empty(2)}
    assert np.array_equal(right_padded(right_reader, LAYOUT)(prompt)["logits"], right_reader(prompt)["logits"])


def cases() -> list[Case]:
    """Two prompt batches (eager's tokens, visible counts) and one window case (eager's likelihoods)."""
    tokens = np.asarray([[1, 2, 3, 4], [5, 6, 2, 0]])
    return [Case("generate_0", left_padded([[1], [2]]), {"tokens": tokens, "visible": np.asarray([4, 3])},
                 CaseKind.GENERATE),
            Case("generate_1", left_padded([[3], [4]]), {"tokens": tokens, "visible": np.asarray([4, 4])},
                 CaseKind.GENERATE),
            Case("perplexity_0", {"input_ids": np.ones((1, 5), dtype=np.int64)},
                 {"nll": np.asarray([8.0]), "count": np.asarray([4])}, CaseKind.PERPLEXITY)]


def test_metrics_count_visible_tokens_up_to_the_first_difference() -> None:
    got = [np.asarray([[1, 2, 3, 4], [5, 6, 2, 9]]), np.asarray([[1, 2, 0, 4], [5, 6, 2, 0]])]
    metrics = decoding_metrics(cases(), got, [{"nll": np.asarray([8.2]), "count": np.asarray([4])}])
    match = metrics["generation"]
    assert (match["tokens"], match["matched"], match["sequences_equal"]) == (15, 13, 3)
    assert metrics["perplexity"]["increase"] == pytest.approx(np.exp(8.2 / 4) / np.exp(8.0 / 4) - 1)


def test_verdicts_under_the_presets() -> None:
    metrics = {"generation": {"share": 0.95, "sequences_share": 0.5}, "perplexity": {"increase": 0.02}}
    out = verdicts(metrics, {p: DEFAULT_TOLERANCE[p] for p in ("int8", "int4")})
    assert not out["int8"]["passed"] and len(out["int8"]["failures"]) == 2
    assert out["int4"] == {"passed": True, "failures": []}
    assert not verdicts({"perplexity": {"increase": float("nan")}}, {"int4": DEFAULT_TOLERANCE["int4"]})["int4"][
        "passed"]


def test_metrics_refuse_outputs_that_do_not_line_up() -> None:
    with pytest.raises(ValueError, match="token batches"):
        decoding_metrics(cases(), [np.zeros((2, 4))], [])


def test_arrays_round_trip(tmp_path: Path) -> None:
    given = [(c.name, c.kind.value, c.inputs) for c in cases()]
    save_inputs(tmp_path / "in.npz", given)
    loaded = load_inputs(tmp_path / "in.npz")
    assert [(n, k) for n, k, _ in loaded] == [(n, k) for n, k, _ in given]
    assert np.array_equal(loaded[1][2]["attention_mask"], given[1][2]["attention_mask"])
    save_outputs(tmp_path / "out.npz", {"generate_1": np.ones((2, 4)), "generate_0": np.zeros((2, 4))},
                 {"perplexity_0": {"nll": np.asarray([1.5]), "count": np.asarray([4])}})
    tokens, windows = load_outputs(tmp_path / "out.npz", ["generate_0", "generate_1"], ["perplexity_0"])
    assert tokens[0].sum() == 0 and tokens[1].sum() == 8
    assert windows == [{"nll": np.asarray([1.5]), "count": np.asarray([4])}]


def test_generation_backend_times_whole_generations_of_the_point_shape() -> None:
    seen: list[tuple[int, int]] = []
    made = iter([4, 4, 3])

    def generate(prompt: np.ndarray) -> int:
        seen.append(prompt.shape)
        return next(made)

    backend = Generation(generate, lambda batch, length: np.zeros((batch, length), dtype=np.int64), 4)
    call = backend.stage({"input_ids": np.ones((2, 7), dtype=np.int64)})
    call()
    assert backend.timer.time_ms(call) >= 0 and seen == [(2, 7), (2, 7)]
    with pytest.raises(RuntimeError, match="generated 3 tokens per row, not 4"):
        call()


def test_stamps_mark_finished_builds(tmp_path: Path) -> None:
    folder = tmp_path / "build"
    assert not fresh(folder, {"source": "a"})
    folder.mkdir()
    (folder / "model.onnx").write_text("x")
    write_stamp(folder, {"source": "a"})
    assert fresh(folder, {"source": "a"}) and read_stamp(folder) == {"source": "a"}
    assert not fresh(folder, {"source": "b"}) and not folder.exists()  # a stale build is removed


def bench(round_ms: list[float], batch: int = 1) -> dict[str, Any]:
    return {"rows": [{"batch": batch, "seq": 32, "p50_ms": float(np.median(round_ms)), "round_p50_ms": round_ms}]}


def test_round_speeds_and_interval() -> None:
    assert round_speeds(bench([1000.0, 500.0]), 1, 32) == [32.0, 64.0]
    assert round_speeds(bench([1000.0], batch=4), 4, 32) == [128.0]
    assert round_speeds(bench([1000.0]), 4, 32) == []
    measured = speed(bench([1000.0, 800.0, 1250.0, 1000.0]), 1, 32, "t/1")
    assert measured is not None and measured["tokens_per_s"] == pytest.approx(32.0)
    assert measured["ci95"][0] <= 32.0 <= measured["ci95"][1] and measured["rounds"] == 4


def targets() -> list[Target]:
    eager = Target("eager", "PyTorch", "eager", bench=bench([1000.0, 1100.0]),
                   parity={"reference": True, "metrics": {"perplexity": {"artifact": 9.5, "increase": 0.0}}})
    peer = Target("genai-int4", "onnxruntime-genai", "genai", precision="int4", bench=bench([400.0, 440.0]),
                  parity={"metrics": {"generation": {"share": 0.93, "sequences_share": 0.6},
                                      "perplexity": {"artifact": 9.9, "increase": 0.042}},
                          "verdicts": {"int8": {"passed": False, "failures": ["token match 0.93 < 0.99"]},
                                       "int4": {"passed": True, "failures": []}}})
    broken = Target("optimum-intel-int4", "optimum-intel", "openvino", precision="int4",
                    error="InvalidGroupSizeError: group size 128")
    return [eager, peer, broken]


RATIOS = [{"target": "genai-int4", "baseline": "eager", "batch": 1, "seq": 32, "ratio": 2.5, "ci95": [2.4, 2.6],
           "rounds": 2, "measured": True}]


def test_rows_and_markdown() -> None:
    lines = [row(t, RATIOS, (1,), 32) for t in targets()]
    assert lines[0]["speed"][1]["vs_eager"]["ratio"] == 1.0 and lines[0]["reference"]
    assert lines[1]["speed"][1]["vs_eager"]["ratio"] == 2.5
    assert lines[1]["gate"] == {"int8": False, "int4": True} and lines[1]["token_match"] == 0.93
    assert lines[2]["speed"][1] is None
    meta = {"recipe": "smollm2", "date": "2026-12-05", "model": "packaged:x", "cpu": "Xeon", "threads": 2,
            "protocol": "8 rounds.", "notes": ["a note"], "command": "python benchmarks/peers.py r.yaml"}
    text = markdown(lines, meta, (1,))
    table = [line for line in text.splitlines() if line.startswith("| genai-int4")]
    assert table == ["| genai-int4 | onnxruntime-genai | int4 | 76.4 [76.4, 76.4] | 2.50x [2.40, 2.60] | 0.9300 | "
                     "0.6000 | 9.900 (+4.20%) | fail | pass |"]
    assert "| eager | PyTorch | fp32 |" in text and "reference" in text
    assert "- optimum-intel-int4: InvalidGroupSizeError: group size 128" in text


def test_an_unmeasured_point_says_so() -> None:
    ratios = [{**RATIOS[0], "measured": False, "reasons": ["not measured: every round was disturbed"]}]
    peer = targets()[1]
    assert peer.bench is not None
    peer.bench["rows"][0]["measured"] = False
    meta = {"recipe": "r", "date": "d", "model": "m", "cpu": "c", "threads": 2, "protocol": "", "command": "c",
            "ratios": ratios}
    text = markdown([row(peer, ratios, (1,), 32)], meta, (1,))
    assert "| not measured (76.4 [76.4, 76.4]) | not measured |" in text
    assert "- batch 1: not measured: every round was disturbed; its numbers are shown in brackets only" in text
    assert "- batch 1: ratios over 2 rounds, 0 more dropped as disturbed" in markdown(
        [row(targets()[1], RATIOS, (1,), 32)], {**meta, "ratios": RATIOS}, (1,))


def test_a_text_generation_recipe_goes_to_the_decoder_run(tmp_path: Path) -> None:
    from benchmarks.peers import generates_text

    recipe = tmp_path / "decoder.yaml"
    recipe.write_text("model: {source: packaged:SmolLM2-135M-Instruct}\ntask: text-generation\n"
                      "inputs: {names: [input_ids, attention_mask], outputs: [logits]}\npasses:\n  - onnx_export: {}\n")
    assert generates_text([str(recipe), "--rounds", "2"])
    assert not generates_text([str(ROOT / "recipes" / "minilm.yaml")])
    assert not generates_text([str(tmp_path / "missing.yaml")]) and not generates_text([])

"""The ship rule on a benchmark session: the fastest passing step ships only when its interval
separates it from the next; otherwise the better parity of those it is not told apart from."""

from __future__ import annotations

from pipeline.bench.spec import BenchResult, Ratio
from pipeline.recipe.schema import ShipSpec
from pipeline.ship.rule import choose_shipped, slower_note
from pipeline.verify.parity import Parity

STEPS = ["fused", "fp16", "int8", "broken"]


def _rule(fastest_at: tuple[int, int] | None = (1, 128), step: str | None = None) -> ShipSpec:
    return ShipSpec(step=step, fastest_at=fastest_at)


def _parity(cos_min: float, passed: bool = True) -> Parity:
    return Parity(passed=passed, metrics={"out": {"cos_min": cos_min, "max_abs": 1 - cos_min}}, tolerance={})


PARITY = {"fused": _parity(1.0), "fp16": _parity(0.9999), "int8": _parity(0.991), "broken": _parity(0.5, False)}


def _ratio(target: str, ratio: float, low: float, high: float) -> Ratio:
    return {"target": target, "baseline": "eager", "batch": 1, "seq": 128, "ratio": ratio, "ci95": [low, high]}


def test_the_fastest_ships_when_its_interval_is_above_every_other() -> None:
    ratios = [_ratio("fused", 1.4, 1.35, 1.45), _ratio("int8", 2.1, 2.0, 2.2), _ratio("broken", 5.0, 4.9, 5.1)]
    assert choose_shipped(_rule(), STEPS, PARITY, {}, ratios) == ("int8", None)


def test_when_intervals_overlap_the_better_parity_ships_and_the_note_says_why() -> None:
    ratios = [_ratio("fused", 1.4, 1.35, 1.45), _ratio("fp16", 1.9, 1.7, 2.05), _ratio("int8", 2.0, 1.85, 2.2)]
    chosen, note = choose_shipped(_rule(), STEPS, PARITY, {}, ratios)
    assert chosen == "fp16"
    assert note is not None and "int8 2.00x [1.85, 2.20]" in note and "fp16 1.90x [1.70, 2.05]" in note
    assert "shipping fp16, the best parity of them" in note and "fused" not in note


def test_without_ratios_the_p50_decides_and_says_so() -> None:
    bench: dict[str, BenchResult] = {name: {"rows": [{"batch": 1, "seq": 128, "p50_ms": ms}]}
                                     for name, ms in (("fused", 9.0), ("int8", 5.0))}
    chosen, note = choose_shipped(_rule(), STEPS, PARITY, bench, [])
    assert chosen == "int8" and note is not None and "p50 alone" in note


def test_a_named_step_or_the_last_passing_one_ships_without_a_note() -> None:
    assert choose_shipped(_rule(None), STEPS, PARITY, {}, []) == ("int8", None)
    assert choose_shipped(_rule(None, step="fp16"), STEPS, PARITY, {}, []) == ("fp16", None)
    assert choose_shipped(_rule(None, step="broken"), STEPS, PARITY, {}, []) == (None, None)


def test_a_shipped_step_slower_than_eager_or_its_parent_is_said_plainly() -> None:
    ratios = [_ratio("fused", 1.40, 1.35, 1.45), _ratio("fp16", 0.98, 0.88, 1.03)]
    note = slower_note("fp16", "fused", ratios, (1, 128))
    assert note is not None and note.startswith("the shipped step fp16 is slower at b1 s128 than eager (0.98x")
    assert "its parent fused (1.40x [1.35, 1.45] over eager against 0.98x [0.88, 1.03])" in note


def test_a_faster_shipped_step_or_one_not_measured_there_gets_no_note() -> None:
    ratios = [_ratio("fused", 1.40, 1.35, 1.45), _ratio("int8", 2.1, 2.0, 2.2)]
    assert slower_note("int8", "fused", ratios, (1, 128)) is None
    assert slower_note("int8", "fused", ratios, (8, 128)) is None  # no ratio at that point
    close = [_ratio("fused", 1.40, 1.30, 1.50), _ratio("fp16", 1.35, 1.25, 1.45)]
    assert slower_note("fp16", "fused", close, (1, 128)) is None  # not told apart from its parent

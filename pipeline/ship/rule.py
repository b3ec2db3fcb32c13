"""Which step ships: the recipe's ship rule applied to the parity verdicts and the benchmark session."""

from __future__ import annotations

import logging

from pipeline.bench.rounds import separated, speedup_text
from pipeline.bench.spec import BenchResult, Ratio
from pipeline.recipe.schema import DEFAULT_TOLERANCE, ShipSpec
from pipeline.verify.metrics import worst
from pipeline.verify.parity import Parity

log = logging.getLogger(__name__)


def may_ship(parity: dict[str, Parity], name: str) -> bool:
    """Whether a step passed its gate (or failed it but is exempt)."""
    verdict = parity.get(name)
    return verdict is not None and (verdict.passed or verdict.exempt)


def parity_rank(parity: Parity) -> tuple[float, float]:
    """Higher is closer to eager: the worst min cosine over the outputs, then the smaller max abs error."""
    return worst(parity.metrics, "cos_min", min) or 0.0, -(worst(parity.metrics, "max_abs", max) or 0.0)


def fastest_told_apart(entries: list[Ratio], parity: dict[str, Parity]) -> tuple[str, str | None]:
    """The step with the highest ratio over eager when its interval lies above every other's; else, of
    those it cannot be told apart from, the one with the best parity: (step, why, when not plain)."""
    ranked = sorted(entries, key=lambda e: e["ratio"], reverse=True)
    best, tied = ranked[0], [e for e in ranked[1:] if not separated(ranked[0], e)]
    if not tied:
        return best["target"], None
    chosen = max([best, *tied], key=lambda e: parity_rank(parity[e["target"]]))
    cos = worst(parity[chosen["target"]].metrics, "cos_min", min)
    others = ", ".join(f"{e['target']} {speedup_text(e)}" for e in tied)
    return chosen["target"], (
        f"ship.fastest_at b{best['batch']} s{best['seq']}: the fastest, {best['target']} {speedup_text(best)} over "
        f"eager, is not told apart from {others} (95% intervals overlap); shipping {chosen['target']}, the best "
        f"parity of them (min cosine {cos:.6f})")


def batch_dependence(parity: Parity | None, precision: str) -> str | None:
    """What to say when an artifact ships whose rows depend on their batch more than its precision's
    default bound allows (the recipe relaxed ``min_batch_cosine``); None when it meets the default."""
    bound = DEFAULT_TOLERANCE[precision].min_batch_cosine
    cos = min((m.get("cos_min", 1.0) for m in parity.batch_invariance.values()), default=None) if parity else None
    if cos is None or bound is None or cos >= bound:
        return None
    return (f"the shipped artifact's output depends on its batch: a row computed alone and inside a padded batch "
            f"agrees only to min cosine {cos:.6f}, under the {precision} default {bound} (the recipe relaxes "
            f"min_batch_cosine); a request's result changes with the other requests that share its batch")


def choose_shipped(spec: ShipSpec, steps: list[str], parity: dict[str, Parity], bench: dict[str, BenchResult],
                   ratios: list[Ratio]) -> tuple[str | None, str | None]:
    """The step to ship among ``steps`` (in chain order) that may, by the recipe's ship rule ``spec``, and
    a note when the choice needs one; (None, ...) when none may ship.

    ``ship.step`` names it. ``ship.fastest_at: [batch, seq]`` takes the highest interleaved ratio over
    eager there when its interval separates it from the next, else the best parity among the steps it
    cannot be told apart from (by p50 alone when eager has no ratio there). Otherwise: the last step
    of the chain that may ship.
    """
    if spec.step:
        return (spec.step if may_ship(parity, spec.step) else None), None
    allowed = [name for name in steps if may_ship(parity, name)]
    if spec.fastest_at is not None and allowed:
        point = tuple(spec.fastest_at)
        entries = [e for e in ratios if (e["batch"], e["seq"]) == point and e["target"] in allowed]
        if entries:
            return fastest_told_apart(entries, parity)
        timed = {name: row["p50_ms"] for name in allowed for row in bench.get(name, {}).get("rows", [])
                 if (row["batch"], row["seq"]) == point and row.get("measured", True)}
        if timed:
            return min(timed, key=timed.__getitem__), (
                f"ship.fastest_at {list(point)}: no ratio over eager there (eager was not measured); "
                "picked by p50 alone")
        log.warning("ship.fastest_at %s: no benchmark at that point; shipping the last passing step", point)
    return (allowed[-1] if allowed else None), None


def slower_note(shipped: str, parent: str, ratios: list[Ratio], point: tuple[int, int]) -> str | None:
    """What to say when the shipped step is slower at ``point`` than eager (its ratio under 1) or than its
    parent (told apart from it); None when it is not, or when the point has no ratio for it."""
    at = {e["target"]: e for e in ratios if (e["batch"], e["seq"]) == point}
    own = at.get(shipped)
    if own is None:
        return None
    slower = []
    if own["ratio"] < 1.0:
        slower.append(f"eager ({speedup_text(own)} over it)")
    above = at.get(parent)
    if above is not None and separated(above, own):
        slower.append(f"its parent {parent} ({speedup_text(above)} over eager against {speedup_text(own)})")
    if not slower:
        return None
    return f"the shipped step {shipped} is slower at b{point[0]} s{point[1]} than {' and than '.join(slower)}"

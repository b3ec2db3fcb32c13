"""How far a repair's search may go, built from a pass's repair options in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # options imports the search, which takes a budget
    from passes.repair.options import RepairOptions


@dataclass(frozen=True)
class RepairBudget:
    """The limits of one repair.

    At most ``max_kept`` nodes stay in float. Keeping more runs at most ``rounds`` rounds (twice as many
    more each) and gives up after ``patience`` rounds in a row that do not raise the best min cosine
    reached. A forward selection keeps one node a round for at most ``greedy_rounds`` rounds, each
    trying the ``greedy_pool`` most harmful candidates not yet kept.
    """

    max_kept: int
    rounds: int
    patience: int
    greedy_pool: int = 8
    greedy_rounds: int = 4

    @classmethod
    def from_options(cls, options: RepairOptions, candidates: int) -> RepairBudget:
        """A pass's budget over ``candidates`` nodes: ``repair_rounds``, ``repair_patience``, and at most
        ``repair_max_fraction`` of the candidates in float (at least one)."""
        return cls(max_kept=max(1, int(options.repair_max_fraction * candidates)), rounds=options.repair_rounds,
                   patience=options.repair_patience)

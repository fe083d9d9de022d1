"""A time budget for a run: every stage's length scaled by one factor so the run fits M minutes.

The trainer measures what each kind of stage costs on this machine (a few real steps of a
throw-away copy of the model: seconds per step, plus the one-off cost of its first steps such as
DataLoader start-up; a compilation, paid once per process while measuring, is left out of the
start planned for the stages that reuse it), one validation pass and one checkpoint write, then
:func:`fit_schedule` finds the largest factor whose schedule fits. Stages keep their proportions,
warm-ups scale with them, and the scaled schedule is what the run records (``config.yaml`` and
its checkpoints), so ``--resume`` continues it unchanged and the run can be repeated without a
budget from its ``config.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: fewest steps a stage may be scaled to: a budget that cannot give every stage this many is refused
MIN_STAGE_STEPS = 10
#: share of the budget planned for; the rest absorbs run-to-run variation of the step time
PLAN_SHARE = 0.95


class BudgetError(ValueError):
    """The time budget cannot hold the run (the message says what it needs)."""


@dataclass(frozen=True)
class StageCost:
    """What one stage costs: steady seconds per step and one-off seconds at its start."""

    step: float
    start: float


@dataclass(frozen=True)
class Overheads:
    """Costs outside the steps: one validation pass, one checkpoint write, and what follows the last stage."""

    validation: float = 0.0
    checkpoint: float = 0.0
    final: float = 0.0


def stage_seconds(steps: int, cost: StageCost, over: Overheads, val_every: int | None, ckpt_every: int) -> float:
    """Predicted wall time of one stage of ``steps`` steps (validation after every ``val_every``
    steps and at the end; a checkpoint every ``ckpt_every`` steps and at the end)."""
    validations = math.ceil(steps / val_every) if val_every else 0
    checkpoints = steps // ckpt_every + 1
    return cost.start + steps * cost.step + validations * over.validation + checkpoints * over.checkpoint


def fit_schedule(
    iterations: list[int],
    costs: list[StageCost],
    over: Overheads,
    seconds: float,
    val_every: int | None,
    ckpt_every: int,
    spent: float = 0.0,
) -> tuple[float, list[int]]:
    """The largest factor ``s`` (and the stage lengths ``max(MIN_STAGE_STEPS, round(s * n))``) whose
    predicted time fits ``PLAN_SHARE * seconds``; :class:`BudgetError` if even the shortest does not.
    ``spent``: seconds of the user's budget already gone before ``seconds`` left (setting up: the folders,
    the photos, the validation cache; then measuring this machine) - so that the refusal speaks of the
    budget the user gave and what to give instead."""
    if len(iterations) != len(costs):
        raise ValueError("one cost per stage")
    avail = PLAN_SHARE * seconds - over.final

    def lengths(s: float) -> list[int]:
        return [max(MIN_STAGE_STEPS, round(s * n)) for n in iterations]

    def total(s: float) -> float:
        return sum(stage_seconds(n, c, over, val_every, ckpt_every) for n, c in zip(lengths(s), costs))

    if total(0.0) > avail:
        need = (total(0.0) + over.final) / PLAN_SHARE + spent
        measuring = f" ({spent / 60:.2f} min of it to set up and measure this machine first)" if spent > 0 else ""
        raise BudgetError(
            f"a budget of {(seconds + spent) / 60:.2f} min is too small for this run: its {len(iterations)} stage(s) need "
            f"at least {need / 60:.2f} min{measuring} for {MIN_STAGE_STEPS} steps each (measured here: "
            + ", ".join(f"{c.step:.3g} s/step" for c in costs)
            + f"; validation {over.validation:.3g} s, checkpoint {over.checkpoint:.3g} s, final step {over.final:.3g} s)"
        )
    lo, hi = 0.0, 1.0
    while total(hi) <= avail and hi < 1e9:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= avail else (lo, mid)
    return lo, lengths(lo)


def scaled_warmup(warmup: int, iterations: int, scaled: int) -> int:
    """A stage's warm-up scaled with its length (at least one step if it had one; never the whole stage)."""
    if warmup <= 0:
        return 0
    return min(max(1, round(warmup * scaled / iterations)), max(1, scaled - 1))

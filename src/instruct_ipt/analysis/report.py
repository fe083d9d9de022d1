"""The analyses' outputs: markdown and text tables, CSV, PNG charts, and the runs the CLI starts.

Charts need matplotlib, an optional extra (``pip install "instruct-ipt[analysis]"``). The runs
check for it before loading anything, so a missing extra fails at once and leaves no partial
set of files. Every file is written atomically: an interrupted run never leaves a truncated one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import atomic_write, atomic_write_text
from .groups import GROUPS, OTHER
from .rank_energy import RankEnergyRow, rank_energy
from .similarity import similarity

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MATPLOTLIB_MISSING = 'the analysis charts need matplotlib: pip install "instruct-ipt[analysis]"'

SIMILARITY_MD, SIMILARITY_CSV, SIMILARITY_PNG = "similarity.md", "similarity.csv", "similarity.png"
RANK_ENERGY_CSV = "rank_energy.csv"
RANK_ENERGY_CONSTANT_PNG, RANK_ENERGY_PROPORTIONAL_PNG = "rank_energy_constant.png", "rank_energy_proportional.png"


def require_matplotlib() -> None:
    """Raise ImportError with the install line when the ``analysis`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot: no global state, no display needed."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _number(value: float) -> str:
    return f"{value:.10g}"


# similarity (Table 2) ----------------------------------------------------------------------------
def _present_groups(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    return [g for g in (*GROUPS, OTHER) if any(g in r for r in results.values())]


def similarity_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table: one row per group, one column per fine-tuned model (as the paper's Table 2)."""
    names = list(results)
    lines = ["| group | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for g in _present_groups(results):
        cells = [f"{results[n][g]:.4f}" if g in results[n] else "-" for n in names]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_similarity(results: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Grouped bar chart: groups on the x axis, one bar per fine-tuned model.

    The y axis starts just below the lowest value, not at 0: similarities after fine-tuning are
    mostly close to 1 and their differences are what the chart is for.
    """
    names, groups = list(results), _present_groups(results)
    values = [v for r in results.values() for v in r.values()]
    fig = _figure(max(8.0, 1.1 * len(groups) + 0.15 * len(groups) * len(names)), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j, g in enumerate(groups) if g in results[name]]
        ys = [results[name][g] for g in groups if g in results[name]]
        ax.bar(xs, ys, width, label=name)
    low = min(values, default=0.0)
    span = max(1.0 - low, 1e-3)
    ax.set_ylim(max(-1.0, low - 0.1 * span), min(1.0 + 0.05 * span, 1.05))
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel("mean cosine similarity to the base")
    ax.set_title("Weight similarity of fine-tuned models to their base, per layer group")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="fine-tuned for", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside, not on, the bars
    return _save_png(fig, Path(path))


def write_similarity(
    results: Mapping[str, Mapping[str, float]], out: str | os.PathLike, base: str | os.PathLike | None = None
) -> list[Path]:
    """``similarity.md``, ``similarity.csv`` (full precision) and ``similarity.png`` in ``out``."""
    require_matplotlib()
    out = Path(out)
    names = list(results)
    described = f" of the base model (`{base}`)" if base is not None else " of the base model"
    md = (
        "# Weight similarity of fine-tuned models to their base\n\n"
        f"Mean cosine similarity between each backbone weight{described} and the same weight of each fine-tuned\n"
        "model, averaged per layer group (Instruct-IPT, Table 2); 1 means unchanged. "
        "Written by `instruct-ipt analyze similarity`.\n\n" + similarity_table(results) + "\n"
    )
    table = [["group", *names]] + [
        [g, *(_number(results[n][g]) if g in results[n] else "" for n in names)] for g in _present_groups(results)
    ]
    return [
        atomic_write_text(out / SIMILARITY_MD, md),
        atomic_write_text(out / SIMILARITY_CSV, _csv_text(table)),
        plot_similarity(results, out / SIMILARITY_PNG),
    ]


# rank energy (Fig. 2) ----------------------------------------------------------------------------
RANK_ENERGY_COLUMNS = (
    "index", "layer", "stage", "level", "shape", "matrix", "full_rank",
    "constant_rank", "constant_energy", "proportional_rank", "proportional_energy", "delta_norm",
)


def rank_energy_csv(rows: Sequence[RankEnergyRow]) -> str:
    """One line per layer in network order; NaN energy: the weight did not change."""
    lines = [list(RANK_ENERGY_COLUMNS)] + [
        [
            i, r.layer, r.stage, r.level, "x".join(map(str, r.shape)), "x".join(map(str, r.matrix)), r.full_rank,
            r.constant_rank, _number(r.constant_energy), r.proportional_rank, _number(r.proportional_energy),
            _number(r.delta_norm),
        ]
        for i, r in enumerate(rows)
    ]
    return _csv_text(lines)


def _stages(rows: Sequence[RankEnergyRow]) -> list[tuple[str, int, list[RankEnergyRow]]]:
    """Consecutive runs of one stage: ``(stage, level, rows)`` in network order."""
    runs: list[tuple[str, int, list[RankEnergyRow]]] = []
    for r in rows:
        if runs and runs[-1][0] == r.stage:
            runs[-1][2].append(r)
        else:
            runs.append((r.stage, r.level, [r]))
    return runs


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _span(values: Sequence[int]) -> str:
    return str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def rank_energy_table(rows: Sequence[RankEnergyRow]) -> str:
    """Short markdown summary per U-Net stage: ranks and mean energy of each strategy (the CSV has every layer)."""
    lines = [
        "| stage | layers | constant rank | energy | proportional rank | energy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, _, group in [*_stages(rows), ("all", 0, list(rows))]:
        if not group:
            continue
        lines.append(
            f"| {stage} | {len(group)} | {_span([r.constant_rank for r in group])} "
            f"| {_mean([r.constant_energy for r in group]):.4f} | {_span([r.proportional_rank for r in group])} "
            f"| {_mean([r.proportional_energy for r in group]):.4f} |"
        )
    return "\n".join(lines)


def plot_rank_energy(
    rows: Sequence[RankEnergyRow], energies: Sequence[float], ranks: Sequence[int], title: str, path: str | os.PathLike
) -> Path:
    """Energy kept per layer (line, left axis) and the rank used (steps, right axis), layers in
    network order, each U-Net stage shaded by its depth (darker: deeper)."""
    fig = _figure(min(24.0, max(8.0, 0.12 * len(rows))), 4.5)
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    deepest = max((r.level for r in rows), default=0) or 1
    start = 0
    for stage, level, group in _stages(rows):
        end = start + len(group)
        ax.axvspan(start - 0.5, end - 0.5, color=str(0.95 - 0.25 * level / deepest), lw=0)
        if start:  # neighbouring stages of one depth share a shade: a line between them
            ax.axvline(start - 0.5, color="0.5", lw=0.6)
        ax.text((start + end - 1) / 2, 0.02, stage, rotation=90, ha="center", va="bottom", fontsize=7,
                transform=ax.get_xaxis_transform())
        start = end
    xs = list(range(len(rows)))
    ax.plot(xs, energies, marker="o", markersize=3, color="tab:blue", label="energy kept")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("energy of W_ft - W_base within the rank", color="tab:blue")
    ax.set_xlabel("modulated layer, in network order (shading: U-Net depth, darker is deeper)")
    ax.set_title(title)
    twin = ax.twinx()
    twin.step(xs, ranks, where="mid", color="tab:orange", alpha=0.7, lw=1)
    twin.set_ylabel("rank", color="tab:orange")
    twin.set_ylim(0, max(ranks, default=1) * 1.1 + 1)
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save_png(fig, Path(path))


def write_rank_energy(
    rows: Sequence[RankEnergyRow], out: str | os.PathLike, constant: int, proportional: float
) -> list[Path]:
    """``rank_energy.csv`` and one chart per strategy (``rank_energy_constant.png``, ``rank_energy_proportional.png``)."""
    require_matplotlib()
    out = Path(out)
    return [
        atomic_write_text(out / RANK_ENERGY_CSV, rank_energy_csv(rows)),
        plot_rank_energy(
            rows, [r.constant_energy for r in rows], [r.constant_rank for r in rows],
            f"Fine-tuning delta kept at constant rank {constant} (at most the layer's full rank)",
            out / RANK_ENERGY_CONSTANT_PNG,
        ),
        plot_rank_energy(
            rows, [r.proportional_energy for r in rows], [r.proportional_rank for r in rows],
            f"Fine-tuning delta kept at proportional rank ({proportional:g} of the layer's full rank)",
            out / RANK_ENERGY_PROPORTIONAL_PNG,
        ),
    ]


# runs from saved model folders (the CLI) ---------------------------------------------------------
def default_names(folders: Sequence[str | os.PathLike]) -> list[str]:
    """Each folder's own name (``runs/denoise`` -> ``denoise``)."""
    return [Path(os.path.abspath(f)).name for f in folders]


def analyze_similarity(
    base: str | os.PathLike,
    finetuned: Sequence[str | os.PathLike],
    names: Sequence[str] | None,
    out: str | os.PathLike,
) -> tuple[dict[str, dict[str, float]], list[Path]]:
    """Table 2 for saved models: the base folder against each fine-tuned folder; returns the
    results (by name, then group) and the files written. Models load one at a time, on the CPU."""
    from ..model import InstructIPT

    require_matplotlib()
    names = list(names) if names else default_names(finetuned)
    if len(names) != len(finetuned):
        raise ValueError(f"{len(names)} names for {len(finetuned)} fine-tuned models: give one name per model")
    if len(set(names)) != len(names):
        raise ValueError(f"the fine-tuned models need distinct names, got {', '.join(names)}: name them (--names)")
    base_model = InstructIPT.from_pretrained(base)
    results = {}
    for name, folder in zip(names, finetuned):
        try:
            results[name] = similarity(base_model, InstructIPT.from_pretrained(folder))
        except ValueError as e:  # say which of several models does not fit
            raise ValueError(f"{folder}: {e}") from None
    return results, write_similarity(results, out, base)


def analyze_rank_energy(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    constant: int,
    proportional: float,
    out: str | os.PathLike,
) -> tuple[list[RankEnergyRow], list[Path]]:
    """Fig. 2 for saved models: every modulated layer's fine-tuning delta at both strategies' ranks;
    returns the rows and the files written."""
    from ..model import InstructIPT

    require_matplotlib()
    rows = rank_energy(InstructIPT.from_pretrained(base), InstructIPT.from_pretrained(finetuned), constant, proportional)
    return rows, write_rank_energy(rows, out, constant, proportional)

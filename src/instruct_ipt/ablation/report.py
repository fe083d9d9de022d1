"""An ablation's figures, verdicts, charts and ``report.md``.

Verdicts are made seed by seed: for the claim "A is higher than B", the difference ``A - B`` of
each seed (the same seed: the same initial weights and batches for every arm), their mean, and
their spread. With two seeds or more a claim **holds** when the mean difference is positive and
larger than two standard errors of the differences, **does not hold** when it is negative and
larger, and is **within noise** otherwise. One seed gives no spread: the verdict then says only
which way the difference goes, marked "(one seed)" (a tie: "tie (one seed)"). A figure that could
not be measured (NaN: e.g. no layer changed) gives "no data".
"""

from __future__ import annotations

import datetime
import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io import atomic_write_text
from ..version import __version__
from .arms import ARMS, SIGMA, TASKS
from .tables import TABLES, Table, TradeClaim

if TYPE_CHECKING:
    from .runner import Ablation

#: the groups the method modulates, and those it leaves shared (instruct_ipt.analysis.GROUPS names)
TARGET_GROUPS = ("output layer", "up-sampling", "down-sampling", "channel reduction", "QKV",
                 "after-attention projection", "FFN")
SHARED_GROUPS = ("image embedder", "normalisation")
CONSTANT_RANK, PROPORTION = 8, 0.05


def verdict(higher: Sequence[float], lower: Sequence[float]) -> dict[str, Any]:
    """The claim "``higher`` > ``lower``" over paired per-seed values (see the module docstring)."""
    diffs = [h - lo for h, lo in zip(higher, lower, strict=True)]
    mean = statistics.fmean(diffs)
    if math.isnan(mean):
        return {"difference": mean, "noise": None, "verdict": "no data"}
    if len(diffs) < 2:
        word = "holds" if mean > 0 else "does not hold" if mean < 0 else "tie"
        return {"difference": mean, "noise": None, "verdict": word + " (one seed)"}
    noise = 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    word = "within noise" if abs(mean) <= noise else "holds" if mean > 0 else "does not hold"
    return {"difference": mean, "noise": noise, "verdict": word}


def trade_verdict(arm: dict[str, Sequence[float]], baseline: dict[str, Sequence[float]]) -> dict[str, Any]:
    """The claim "``arm`` trades one task for the other" against ``baseline`` (per task, per-seed
    values): each task's difference is judged as in :func:`verdict`; it **holds** when one task
    gains and the other loses (each beyond noise), **does not hold** when something moved beyond
    noise otherwise (a gain without a loss is an improvement, not a trade), and is **within
    noise** when no task moved beyond noise."""
    each = {t: verdict(arm[t], baseline[t]) for t in arm}
    if any(v["verdict"] == "no data" for v in each.values()):
        return {"difference": "", "noise": None, "verdict": "no data"}
    gains = [t for t, v in each.items() if v["verdict"].startswith("holds")]
    losses = [t for t, v in each.items() if v["verdict"].startswith("does not hold")]
    one_seed = " (one seed)" if any(v["noise"] is None for v in each.values()) else ""
    if len(gains) == 1 and len(losses) == 1:
        word = "holds"
    elif gains or losses:
        word = "does not hold"
    else:
        word = "within noise"
    diffs = ", ".join(f"{t} {v['difference']:+.3f}" for t, v in each.items())
    noise = [v["noise"] for v in each.values()]
    return {"difference": diffs, "noise": None if None in noise else max(noise), "verdict": word + one_seed}


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


# analyses ----------------------------------------------------------------------------------------
def _pairs(ab: Ablation, seeds: int):
    """``(seed, task, plain model, its fine-tune on task)`` for every seed and task; each seed's
    plain model is loaded once."""
    from ..model import InstructIPT

    for seed in range(seeds):
        base = InstructIPT.from_pretrained(ab.run_dir("plain", seed) / "model")
        for task in TASKS:
            yield seed, task, base, InstructIPT.from_pretrained(ab.run_dir(f"ft-{task}", seed) / "model")


def similarity_figures(ab: Ablation, table: Table, seeds: int) -> dict[str, list[float]]:
    """Table 2: similarity of each seed's plain model to its fine-tunes; writes the seed-averaged
    table and chart (instruct_ipt.analysis) to ``OUT/table2``."""
    from ..analysis import similarity, write_similarity

    per_seed: dict[str, list[dict[str, float]]] = {t: [] for t in TASKS}
    for _, task, base, tuned in _pairs(ab, seeds):
        per_seed[task].append(similarity(base, tuned))
    averaged = {t: {g: statistics.fmean(r[g] for r in rs) for g in rs[0]} for t, rs in per_seed.items()}
    write_similarity(averaged, ab.out / table.name, f"plain, mean of {seeds} seed(s)")
    ab.results.setdefault("analyses", {})[table.name] = averaged
    figures = {}
    for t, rs in per_seed.items():
        figures[f"similarity:targets:{t}"] = [statistics.fmean(r[g] for g in TARGET_GROUPS if g in r) for r in rs]
        figures[f"similarity:others:{t}"] = [statistics.fmean(r[g] for g in SHARED_GROUPS if g in r) for r in rs]
    return figures


def rank_energy_figures(ab: Ablation, table: Table, seeds: int) -> dict[str, list[float]]:
    """Fig. 2: the energy each strategy's rank holds, per seed (mean over the modulated layers that
    changed); writes seed 0's per-layer CSV and charts to ``OUT/fig2/<task>``."""
    from ..analysis import rank_energy, rank_energy_table, write_rank_energy

    figures: dict[str, list[float]] = {}
    tables = {}
    for s, t, base, tuned in _pairs(ab, seeds):
        rows = rank_energy(base, tuned, CONSTANT_RANK, PROPORTION)
        if s == 0:
            write_rank_energy(rows, ab.out / table.name / t, CONSTANT_RANK, PROPORTION)
            tables[t] = rank_energy_table(rows)
        for strategy in ("constant", "proportional"):
            kept = [e for r in rows if not math.isnan(e := getattr(r, f"{strategy}_energy"))]
            figures.setdefault(f"energy:{strategy}:{t}", []).append(statistics.fmean(kept) if kept else math.nan)
    ab.results.setdefault("analyses", {})[table.name] = tables
    return figures


# the table's summary -----------------------------------------------------------------------------
def summarise_table(ab: Ablation, table: Table, seeds: int, figures: dict[str, list[float]]) -> dict[str, Any]:
    runs = ab.results["runs"]
    arms = {}
    for arm in table.arms:
        records = [runs[f"{arm}/seed{s}"] for s in range(seeds)]
        arms[arm] = {
            "label": ARMS[arm].label,
            "psnr": {t: _mean_sd([r["psnr"][t] for r in records]) for t in TASKS},
            "ssim": {t: statistics.fmean(r["ssim"][t] for r in records) for t in TASKS},
            "steps": [r["steps"] for r in records],
            "parameters": records[0]["parameters"],
        }
    claims = []
    for c in table.claims:
        if isinstance(c, TradeClaim):
            per = {name: {t: figures[f"psnr:{name}:{t}"] for t in TASKS} for name in (c.arm, c.baseline)}
            claims.append({"claim": c.text, "arm": c.arm, "baseline": c.baseline, **trade_verdict(per[c.arm], per[c.baseline])})
        else:
            claims.append({"claim": c.text, "higher": c.higher, "lower": c.lower,
                           **verdict(figures[c.higher], figures[c.lower])})
    return {"title": table.title, "seeds": seeds, "arms": arms, "figures": figures, "claims": claims,
            "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# charts and report -------------------------------------------------------------------------------
def plot_table(name: str, summary: dict[str, Any], path: Path) -> Path:
    """PSNR per arm and task, a bar per arm (error bar: the spread over seeds)."""
    from ..analysis.report import _figure, _save_png

    fig = _figure(7.0, 3.6)
    arms = [a for a in TABLES[name].arms if a in summary["arms"]]  # the table's order (JSON sorts keys)
    for i, task in enumerate(TASKS):
        ax = fig.add_subplot(1, len(TASKS), i + 1)
        means = [summary["arms"][a]["psnr"][task][0] for a in arms]
        sds = [summary["arms"][a]["psnr"][task][1] or 0.0 for a in arms]
        ax.bar(range(len(arms)), means, yerr=sds, capsize=3, color=[f"C{j}" for j in range(len(arms))])
        low, high = min(m - s for m, s in zip(means, sds)), max(m + s for m, s in zip(means, sds))
        pad = max(0.05, 0.3 * (high - low))
        ax.set_ylim(low - pad, high + pad)  # the differences are a fraction of a dB: not from 0
        ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{task}" + (f" (sigma {SIGMA:g})" if task == "denoise" else " (motion)"), fontsize=9)
        ax.set_ylabel("PSNR (dB)" if i == 0 else "")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{name}: mean over {summary['seeds']} seed(s)", fontsize=10)
    return _save_png(fig, path)


def _db(mean_sd: Sequence[float | None]) -> str:
    mean, sd = mean_sd
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def table_markdown(name: str, summary: dict[str, Any], analyses: dict[str, Any]) -> str:
    table = TABLES[name]
    paper = table.paper
    lines = [f"## {summary['title']}", ""]
    columns = ["arm", *(f"{t} PSNR (ours)" for t in TASKS)]
    if paper:
        columns += [f"{t} (paper)" for t in TASKS]
    columns += ["steps", "extra parameters (per task, or shared)"]
    lines += ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for arm in (a for a in table.arms if a in summary["arms"]):  # the table's order (JSON sorts keys)
        a = summary["arms"][arm]
        cells = [_db(a["psnr"][t]) for t in TASKS]
        if paper:
            cells += [f"{paper[arm][t]:.2f}" if arm in paper else "-" for t in TASKS]
        p = a["parameters"]
        if p.get("adaptation"):  # a feature adaptation's parameters serve every task
            extra = f"{p['adaptation']:,} shared ({100 * p['adaptation'] / p['backbone']:.2f}%)"
        else:
            extra = f"{p['per_task']:,} ({100 * p['share']:.2f}%)" if p["per_task"] else "0"
        lines.append(f"| {arm}: {a['label']} | " + " | ".join(cells) + f" | {'/'.join(map(str, a['steps']))} | {extra} |")
    lines.append("")
    if table.paper_note:
        lines += [table.paper_note, ""]
    found = {t: analyses[name][t] for t in TASKS if t in analyses.get(name, {})}  # task order (JSON sorts keys)
    if found and table.analysis == "similarity":
        from ..analysis import similarity_table

        intro = ("Mean cosine similarity of the plain model's weights to each fine-tune's, per layer group "
                 f"(mean over seeds; files in `{name}/`):")
        lines += [intro, "", similarity_table(found), ""]
    if found and table.analysis == "rank-energy":
        for t, md in found.items():
            intro = (f"Energy of the {t} fine-tuning delta at each strategy's rank, per U-Net stage (seed 0; "
                     f"per layer in `{name}/{t}/rank_energy.csv` and the charts beside it):")
            lines += [intro, "", md, ""]
    lines += ["| claim | ours: mean difference | noise (2 s.e.) | verdict |", "|---|---:|---:|---|"]
    for c in summary["claims"]:
        noise = "-" if c["noise"] is None else f"{c['noise']:.3f}"
        diff = c["difference"] if isinstance(c["difference"], str) else _signed(c["difference"])
        lines.append(f"| {c['claim']} | {diff} | {noise} | **{c['verdict']}** |")
    lines += ["", f"![{name}]({name}.png)", ""]
    return "\n".join(lines)


def write_report(ab: Ablation) -> Path:
    """``report.md`` for every table recorded in the folder (in the paper's order), and each
    table's chart."""
    s = ab.settings
    tables = ab.results["tables"]
    analyses = ab.results.get("analyses", {})
    for name, summary in tables.items():
        plot_table(name, summary, ab.out / f"{name}.png")
    budget = f"{s.budget_minutes:g} minutes of training" if s.budget_minutes else f"{s.steps} steps"
    device = s.device if s.device != "cpu" else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    lines = [
        "# Ablation report",
        "",
        (f"Written by `instruct-ipt ablate` (instruct-ipt {__version__}, torch {torch.__version__}). "
        f"Every arm: backbone `{s.size}`, {budget} per arm and seed, on device {device}; training photos "
        f"{', '.join(f'`{t}`' for t in s.train)}; denoise at sigma {SIGMA:g} and motion deblur, drawn with "
        f"equal weight into every batch; evaluated on the photos of `{s.val}`, each degraded once with fixed seeds, "
        "with the eval protocol (PSNR in dB, mean over the photos). ± is the standard deviation over seeds."),
        "",
        ("A claim **holds** when the mean per-seed difference is positive and larger than two standard "
        "errors of the differences, **does not hold** when it is negative and larger, and is **within "
        "noise** otherwise; with one seed only its sign is known."),
        "",
    ]
    for name in TABLES:
        if name in tables:
            lines += [table_markdown(name, tables[name], analyses), f"(run finished {tables[name]['written']})", ""]
    return atomic_write_text(ab.out / "report.md", "\n".join(lines))

"""``instruct-ipt ablate TABLE``: train a table's arms one after another, evaluate, analyse, report.

Everything lives in one output folder::

    OUT/ablation.json            the settings (size, budget or steps, data, device): fixed per folder
    OUT/runs/<arm>/seed<k>/      each arm's training run (config.yaml, checkpoints, model/)
    OUT/results.json             every evaluated run and every finished table
    OUT/report.md, OUT/*.png     the report of every table run in this folder
    OUT/table2/, OUT/fig2/...    a table's analysis files (similarity.*, rank_energy*)

A run is evaluated and recorded as soon as it finishes, so a killed ablation resumes where it
stopped: recorded runs are skipped, a trained model is evaluated, a run with a checkpoint
continues from it (``Trainer(resume=True)``: the same batches as an uninterrupted run). Tables
that share arms (``table2`` and ``fig2``: the same plain and fine-tuned models; ``table3`` and
``table9``/``table10``: the plain model) reuse them when run in the same folder.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data.images import list_images
from ..io import atomic_write_text
from .arms import ARMS, NOMINAL_STEPS, SIGMA, TASKS, base_config
from .tables import TABLES, Table

#: a time budget below this per arm is refused before anything trains: the trainer spends its
#: first seconds measuring the machine, and an arm needs room for real steps after that
MIN_BUDGET_MINUTES = 1.0
SIZES = ("tiny", "small", "base")
SETTINGS_NAME, RESULTS_NAME, REPORT_NAME = "ablation.json", "results.json", "report.md"


class AblationError(ValueError):
    """An ablation that cannot run as asked (the message says why and what to change)."""


@dataclass(frozen=True)
class BaseSettings:
    """What every run of an output folder shares, whatever the table; a folder refuses runs with
    other settings."""

    size: str
    #: minutes of training per arm and seed (a time budget), or None with ``steps``
    budget_minutes: float | None
    #: steps per arm and seed (reproducible on any machine), or None with ``budget_minutes``
    steps: int | None
    train: tuple[str, ...]
    val: str
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = list(self.train)
        return d


@dataclass(frozen=True)
class Settings(BaseSettings):
    """The restoration tables' settings."""

    #: DataLoader worker processes (1 overlaps the degradations with the step on a CPU)
    workers: int = 1


def check_budget(budget_minutes: float | None, steps: int | None, seeds: int) -> None:
    """The rules every table's budget follows (restoration and diffusion alike)."""
    if (budget_minutes is None) == (steps is None):
        raise AblationError("give a time budget (--budget-minutes) or a number of steps (--steps), not both")
    if budget_minutes is not None and budget_minutes < MIN_BUDGET_MINUTES:
        raise AblationError(
            f"--budget-minutes {budget_minutes:g} is too small: every arm needs at least "
            f"{MIN_BUDGET_MINUTES:g} minute(s) to measure this machine and train (it is the budget of one arm and seed)")
    if steps is not None and steps < 1:
        raise AblationError(f"--steps {steps}: every arm needs at least one step")
    if seeds < 1:
        raise AblationError(f"--seeds {seeds}: at least one seed")


def open_folder(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Create an ablation folder, or check that it holds runs of the same ``settings`` (refused,
    naming each difference, otherwise); returns its recorded results, if any."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS_NAME
    if path.exists():
        theirs = _read_object(path, "settings")
        diff = [f"{k}: {theirs.get(k)!r} there, {settings[k]!r} now" for k in settings if theirs.get(k) != settings[k]]
        if diff:
            raise AblationError(f"{out} holds runs made with other settings ({'; '.join(diff)}): "
                                "use the same settings to continue them, or another --out")
    else:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
    results = out / RESULTS_NAME
    if not results.exists():
        return None
    recorded = _read_object(results, "results")
    bad = [k for k in ("runs", "tables") if not isinstance(recorded.get(k), dict)]
    if bad:
        raise AblationError(f"{results}: damaged results (no {' or '.join(repr(k) for k in bad)} mapping): "
                            "remove it to evaluate the runs again")
    return recorded


def _read_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object this folder wrote, or an AblationError naming the file (damaged, or edited by hand)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AblationError(f"{path}: damaged {what} (not JSON: {e})") from None
    if not isinstance(value, dict):
        raise AblationError(f"{path}: damaged {what} (a JSON {type(value).__name__}, not an object)")
    return value


def save_results(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / RESULTS_NAME, json.dumps(results, indent=2, sort_keys=True) + "\n")


def check_settings(settings: Settings, seeds: int) -> None:
    """Refuse, before anything trains, what cannot run."""
    if settings.size not in SIZES:
        raise AblationError(f"--size {settings.size!r}: use one of {', '.join(SIZES)}")
    check_budget(settings.budget_minutes, settings.steps, seeds)
    if settings.workers < 0:
        raise AblationError(f"--workers {settings.workers}: must be >= 0")
    for folder in settings.train:
        if not list_images(folder):  # FileNotFoundError for a missing folder
            raise AblationError(f"--train {folder}: no images in this folder")
    if not list_images(settings.val):
        raise AblationError(f"--val {settings.val}: no images in this folder")


def evaluate_model(model: Any, val: str, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Mean PSNR and SSIM per task on the clean photos of ``val``, each degraded once (denoise at
    sigma 25, motion deblur; fixed seeds), with the eval protocol's channel and border."""
    from ..eval.protocol import default_protocol
    from ..eval.runner import evaluate, synthetic_cases
    from ..inference import pick_device, restore_array

    model = model.to(pick_device(device)).eval()
    out: dict[str, dict[str, float]] = {"psnr": {}, "ssim": {}}
    for task in TASKS:
        ch = default_protocol(task).channels[0]
        cases = synthetic_cases(val, [task], params={"denoise": {"sigma": SIGMA}}, seed=0)
        with model.merged(task):
            records, skipped = evaluate(cases, lambda c: restore_array(model, c.input, None if model.modulated else c.task))
        if not records:
            raise AblationError(f"--val {val}: no image could be evaluated ({'; '.join(map(str, skipped)) or 'none'})")
        out["psnr"][task] = statistics.fmean(r.metrics[f"psnr_{ch}"] for r in records)
        out["ssim"][task] = statistics.fmean(r.metrics[f"ssim_{ch}"] for r in records)
    return out


def trained_steps(run_dir: Path) -> int:
    """Steps the run trained, from the schedule it recorded (a time budget scales the stages)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    if cfg.get("stages"):
        return sum(int(s["iterations"]) for s in cfg["stages"])
    return int(cfg["iterations"])


class Ablation:
    """One output folder of ablation runs (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, settings: Settings, say: Callable[[str], None] = print,
                 progress: bool = True) -> None:
        self.out = Path(out)
        self.settings = settings
        self.say = say
        self.progress = progress
        self.results: dict[str, Any] = {"runs": {}, "tables": {}}

    # the folder ------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder, or check that it holds runs of the same settings; load its results."""
        self.results = open_folder(self.out, self.settings.to_dict()) or self.results

    def save(self) -> None:
        save_results(self.out, self.results)

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}"

    # runs ------------------------------------------------------------------------------------
    def ensure(self, arm_name: str, seed: int, tag: str = "") -> dict[str, Any]:
        """The recorded result of one arm and seed: trained (or resumed) and evaluated if need be."""
        from ..model import InstructIPT
        from ..train import Trainer, config_from_dict

        key = f"{arm_name}/seed{seed}"
        if key in self.results["runs"]:
            return self.results["runs"][key]
        arm = ARMS[arm_name]
        models = {dep: str(self.run_dir(dep, seed) / "model") for dep in arm.needs}
        for dep in arm.needs:
            self.ensure(dep, seed, tag)
        run_dir = self.run_dir(arm_name, seed)
        s = self.settings
        if not (run_dir / "model" / "config.json").exists():
            base = base_config(s.size, list(s.train), seed, str(run_dir), s.steps or NOMINAL_STEPS, s.workers)
            cfg = config_from_dict(arm.build(base, models))
            resume = (run_dir / "checkpoints" / "last.pt").exists()
            self.say(f"{tag}{arm_name}, seed {seed}: " + ("resuming its training" if resume else "training")
                     + (f" ({s.budget_minutes:g} min)" if s.budget_minutes else f" ({s.steps} steps)"))
            Trainer(cfg, resume=resume, device=s.device, progress=self.progress,
                    max_minutes=s.budget_minutes).run()
        self.say(f"{tag}{arm_name}, seed {seed}: evaluating on {s.val}")
        t0 = time.perf_counter()
        model = InstructIPT.from_pretrained(run_dir / "model")
        metrics = evaluate_model(model, s.val, s.device)
        count = model.parameter_count()
        record = {
            "arm": arm_name, "seed": seed, **metrics, "steps": trained_steps(run_dir),
            "parameters": {"backbone": count.backbone, "per_task": count.per_task, "share": count.share,
                           "adaptation": count.adaptation},
            "eval_seconds": round(time.perf_counter() - t0, 1),
        }
        self.results["runs"][key] = record
        self.save()
        return record

    def run_table(self, name: str, seeds: int) -> dict[str, Any]:
        """Train and evaluate every arm of ``name`` for ``seeds`` seeds, run its analysis, record
        its summary and rewrite the report; returns the summary."""
        from . import report

        table = table_named(name)
        check_settings(self.settings, seeds)
        from ..analysis.report import require_matplotlib

        require_matplotlib()  # the report's charts: refuse now, not after the training
        self.open()
        runs = len(table.arms) * seeds
        per = f"{self.settings.budget_minutes:g} min" if self.settings.budget_minutes else f"{self.settings.steps} steps"
        self.say(f"{name}: {len(table.arms)} arms x {seeds} seed(s) = {runs} runs of {per} each, in {self.out}")
        for seed in range(seeds):
            for i, arm in enumerate(table.arms):
                self.ensure(arm, seed, tag=f"[{name} {seed * len(table.arms) + i + 1}/{runs}] ")
        figures = {f"psnr:{arm}:{task}": [self.results["runs"][f"{arm}/seed{s}"]["psnr"][task] for s in range(seeds)]
                   for arm in table.arms for task in TASKS}
        if table.analysis == "similarity":
            figures.update(report.similarity_figures(self, table, seeds))
        elif table.analysis == "rank-energy":
            figures.update(report.rank_energy_figures(self, table, seeds))
        summary = report.summarise_table(self, table, seeds, figures)
        self.results["tables"][name] = summary
        self.save()
        report.write_report(self)
        return summary


def table_named(name: str) -> Table:
    if name not in TABLES:
        raise AblationError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def ablate(table: str, out: str | os.PathLike, settings: Settings, seeds: int = 2,
           say: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run one table into ``out`` (see :class:`Ablation`); returns its summary."""
    return Ablation(out, settings, say=say, progress=progress).run_table(table, seeds)


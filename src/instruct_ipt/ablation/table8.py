"""``instruct-ipt ablate table8``: the paper's Table 8 - task modulation of a diffusion U-Net for
inpainting and outpainting - on this project's masked-image diffusion model.

One output folder::

    OUT/ablation.json                the settings (fixed per folder, like the other tables)
    OUT/runs/base/model/             the base model ("original weights"), trained once on generic masks
    OUT/runs/<arm>/seed<k>/          plain / bias-only / sync, fine-tuned from the base at equal budget
    OUT/runs/<arm>/seed<k>/samples.npz   the arm's evaluation samples (uint8), kept for the metrics
    OUT/results.json, OUT/report.md, OUT/table8-<task>.png (a sheet of samples per task)

Evaluation: every photo of ``val`` gives ``views`` seeded square views at the model's size; each
view gets one seeded mask per task; every arm fills the same masks from the same starting noise
(seed ``k`` for seed ``k``; the original arm is sampled with each seed's noise too). Figures: PSNR
and SSIM inside the mask (what the model made) and outside it (the raw output before the known
pixels are pasted back: how well the model keeps what it was given), and LPIPS, DISTS, FID and IS
on the pasted images when ``metric_weights`` points at the networks' weights (never downloaded;
:mod:`instruct_ipt.eval.perceptual`). A killed run resumes: recorded runs are skipped, a run with
a checkpoint continues from it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write, atomic_write_text
from .report import verdict
from .runner import AblationError, BaseSettings, check_budget, open_folder, save_results

T8_TASKS = ("inpaint", "outpaint")
#: the arms in the paper's order; ``original`` is the base model, not fine-tuned
T8_ARMS = ("original", "plain", "bias-only", "sync")
T8_LABELS = {
    "original": "the base model, not fine-tuned (generic box masks)",
    "plain": "fine-tuned, all weights, mixed inpaint/outpaint batches",
    "bias-only": "base frozen, per-task low-rank biases trained",
    "sync": "base and task biases trained together (synchronous)",
}
#: the base trains this many times an arm's budget: it learns the whole job, the arms adapt it
BASE_FACTOR = 3
#: training seeds: the base's, and the first arm seed (seed k of an ablation trains with ARM_SEED + k)
BASE_SEED, ARM_SEED = 0, 1
#: figures per arm and task; "higher" says which way is better
FIGURES = {"psnr_in": True, "ssim_in": True, "psnr_out": True, "ssim_out": True,
           "lpips": False, "dists": False, "fid": False, "is": True}
SHEET_ROWS = 6


@dataclass(frozen=True)
class DiffusionSettings(BaseSettings):
    """What every run of a Table 8 folder shares (``size`` names a diffusion U-Net size)."""

    sample_size: int = 64
    #: DDIM steps per evaluation sample
    sample_steps: int = 25
    #: seeded views per validation photo
    views: int = 4
    batch_size: int = 16
    kind: str = "diffusion"


def check_diffusion_settings(s: DiffusionSettings, seeds: int) -> None:
    from ..data.images import list_images
    from ..diffusion.model import SIZES

    if s.size not in SIZES:
        raise AblationError(f"--size {s.size!r}: the diffusion model comes in {', '.join(SIZES)}")
    check_budget(s.budget_minutes, s.steps, seeds)
    for name in ("sample_steps", "views", "batch_size", "sample_size"):
        if getattr(s, name) < 1:
            raise AblationError(f"{name} {getattr(s, name)}: must be at least 1")
    for folder in s.train:
        if not list_images(folder):
            raise AblationError(f"--train {folder}: no images in this folder")
    if not list_images(s.val):
        raise AblationError(f"--val {s.val}: no images in this folder")


def evaluation_set(s: DiffusionSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The views ``(N, S, S, 3)`` in [0, 1] and one mask per view and task ``(N, S, S)``: fixed by
    the settings alone, the same for every arm and seed."""
    from ..diffusion.data import load_photos, mask_of, square_view

    photos = load_photos([s.val], False, s.sample_size)
    views, masks = [], {t: [] for t in T8_TASKS}
    for i, photo in enumerate(photos):
        for v in range(s.views):
            rng = np.random.default_rng((8, i, v))
            views.append(square_view(photo, s.sample_size, rng))
            for task in T8_TASKS:
                masks[task].append(mask_of(task, s.sample_size, s.sample_size, rng))
    return np.stack(views), {t: np.stack(m) for t, m in masks.items()}


def generate(model: Any, views: np.ndarray, masks: np.ndarray, task: str, s: DiffusionSettings,
             seed: int) -> np.ndarray:
    """The raw samples (known pixels not pasted back) as uint8 ``(N, S, S, 3)``."""
    import torch

    from ..diffusion.sample import sample_batch
    from ..inference import pick_device

    model = model.to(pick_device(s.device)).eval()
    out = []
    for first in range(0, len(views), s.batch_size):
        x = torch.from_numpy(views[first : first + s.batch_size]).permute(0, 3, 1, 2) * 2.0 - 1.0
        m = torch.from_numpy(masks[first : first + s.batch_size])[:, None]
        y = sample_batch(model, x.contiguous(), m, task, steps=s.sample_steps, seed=seed * 7919 + first)
        out.append(((y.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5 + 0.5).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def pasted(raw: np.ndarray, views: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The final images: generated pixels inside the mask, the known ones outside (float [0, 1])."""
    return np.where(masks[..., None] > 0.5, raw.astype(np.float32) / 255.0, views).astype(np.float32)


def pixel_figures(raw: np.ndarray, views: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from ..eval.metrics import masked_psnr, masked_ssim

    gen = raw.astype(np.float32) / 255.0
    figs: dict[str, list[float]] = {"psnr_in": [], "ssim_in": [], "psnr_out": [], "ssim_out": []}
    for g, v, m in zip(gen, views, masks, strict=True):
        inside = m > 0.5
        figs["psnr_in"].append(masked_psnr(g, v, inside))
        figs["ssim_in"].append(masked_ssim(g, v, inside))
        figs["psnr_out"].append(masked_psnr(g, v, ~inside))
        figs["ssim_out"].append(masked_ssim(g, v, ~inside))
    return {k: statistics.fmean(x) for k, x in figs.items()}


class DiffusionAblation:
    """One Table 8 folder (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, settings: DiffusionSettings, say: Callable[[str], None] = print,
                 progress: bool = True) -> None:
        self.out, self.settings, self.say, self.progress = Path(out), settings, say, progress
        self.results: dict[str, Any] = {"runs": {}, "tables": {}}
        self._eval: tuple[np.ndarray, dict[str, np.ndarray]] | None = None

    def open(self) -> None:
        """The folder rules of every table (:func:`~instruct_ipt.ablation.runner.open_folder`)."""
        self.results = open_folder(self.out, self.settings.to_dict()) or self.results

    def save(self) -> None:
        save_results(self.out, self.results)

    @property
    def eval_set(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._eval is None:
            self._eval = evaluation_set(self.settings)
        return self._eval

    def run_dir(self, arm: str, seed: int) -> Path:
        """Where an arm trained: the original arm is the base model, the same for every seed."""
        return self.out / "runs" / "base" if arm == "original" else self.out / "runs" / arm / f"seed{seed}"

    def _train(self, arm: str, run_dir: Path, seed: int, factor: int = 1) -> None:
        from ..diffusion.train import DiffusionTrainConfig, DiffusionTrainer

        s = self.settings
        if (run_dir / "model" / "config.json").exists():
            return
        cfg = DiffusionTrainConfig(
            out=str(run_dir), arm=arm, init=None if arm == "base" else str(self.run_dir("original", 0) / "model"),
            size=s.size, sample_size=s.sample_size, photos=s.train, steps=(s.steps or 1) * factor,
            batch_size=s.batch_size, seed=seed, warmup=20 if arm != "base" else 100)
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        budget = s.budget_minutes * factor if s.budget_minutes else None
        self.say(f"{arm} ({run_dir.relative_to(self.out)}, training seed {seed}): " + ("resuming" if resume else "training")
                 + (f" ({budget:g} min)" if budget else f" ({cfg.steps} steps)"))
        DiffusionTrainer(cfg, device=s.device, resume=resume, max_minutes=budget, progress=self.progress,
                         say=self.say).run()

    def ensure(self, arm: str, seed: int) -> dict[str, Any]:
        """The recorded figures of one arm and seed: trained and evaluated if need be."""
        from ..diffusion.model import MaskedDiffusion
        from ..diffusion.train import SUMMARY_NAME

        key = f"{arm}/seed{seed}"
        if key in self.results["runs"]:
            return self.results["runs"][key]
        self._train("base", self.run_dir("original", 0), BASE_SEED, factor=BASE_FACTOR)
        run_dir = self.run_dir(arm, seed)
        if arm != "original":
            self._train(arm, run_dir, ARM_SEED + seed)  # not the base's seed: other views, noise, timesteps
        self.say(f"{arm}, seed {seed}: sampling the evaluation set")
        t0 = time.perf_counter()
        model = MaskedDiffusion.from_pretrained(run_dir / "model")
        views, masks = self.eval_set
        record: dict[str, Any] = {"arm": arm, "seed": seed, "figures": {}}
        samples = {}
        for task in T8_TASKS:
            raw = generate(model, views, masks[task], task, self.settings, seed)
            samples[task] = raw
            record["figures"][task] = pixel_figures(raw, views, masks[task])
        npz = self.out / "runs" / arm / f"seed{seed}" / "samples.npz"
        atomic_write(npz, lambda tmp: _savez(tmp, samples))
        steps = json.loads((run_dir / SUMMARY_NAME).read_text(encoding="utf-8"))["steps"]
        params = sum(p.numel() for p in model.parameters())
        per_task = (sum(p[0].numel() for p in model.modulation.task_parameters()) if model.modulation else 0)
        record.update(steps=steps, parameters={"total": params, "per_task": per_task},
                      eval_seconds=round(time.perf_counter() - t0, 1))
        self.results["runs"][key] = record
        self.save()
        return record

    def samples(self, arm: str, seed: int) -> dict[str, np.ndarray]:
        with np.load(self.out / "runs" / arm / f"seed{seed}" / "samples.npz") as f:
            return {k: f[k] for k in f.files}

    def run(self, seeds: int, metric_weights: str | None = None) -> dict[str, Any]:
        from ..eval.perceptual import PerceptualMetrics

        check_diffusion_settings(self.settings, seeds)
        metrics = PerceptualMetrics(metric_weights, device=self.settings.device)
        metrics.load_all()  # a bad folder or file fails now, not after the training
        try:
            self.eval_set  # noqa: B018 - built now: validation photos too small fail before any training
        except ValueError as e:
            raise AblationError(f"--val {self.settings.val}: {e}") from e
        self.open()
        runs = len(T8_ARMS) * seeds
        self.say(f"table8: base ({BASE_FACTOR}x an arm's budget) + {len(T8_ARMS)} arms x {seeds} seed(s) = "
                 f"{runs} evaluations, in {self.out}")
        for seed in range(seeds):
            for arm in T8_ARMS:
                self.ensure(arm, seed)
        summary = self.summarise(seeds, metrics)
        self.results["tables"]["table8"] = summary
        self.save()
        write_sheets(self)
        write_report(self, summary)
        return summary

    def summarise(self, seeds: int, metrics: Any) -> dict[str, Any]:
        views, masks = self.eval_set
        per_seed: dict[str, dict[str, dict[str, list[float]]]] = {}
        for arm in T8_ARMS:
            per_seed[arm] = {t: {k: [] for k in FIGURES} for t in T8_TASKS}
            for seed in range(seeds):
                record = self.results["runs"][f"{arm}/seed{seed}"]
                gen = self.samples(arm, seed)
                for task in T8_TASKS:
                    figs = dict(record["figures"][task])
                    final = pasted(gen[task], views, masks[task])
                    if metrics.available["lpips"]:
                        figs["lpips"] = statistics.fmean(metrics.lpips(p, v) for p, v in zip(final, views, strict=True))
                    if metrics.available["dists"]:
                        figs["dists"] = statistics.fmean(metrics.dists(p, v) for p, v in zip(final, views, strict=True))
                    if metrics.available["fid"] and len(final) > 1:  # FID needs two images or more (see below)
                        figs["fid"] = metrics.fid(list(final), list(views))
                    if metrics.available["is"]:
                        figs["is"] = metrics.inception_score(list(final))[0]
                    for k in FIGURES:
                        per_seed[arm][task][k].append(figs.get(k, math.nan))
        skipped = dict(metrics.skipped)
        if metrics.available["fid"] and len(views) < 2:
            skipped["fid"] = f"one evaluation image ({self.settings.views} view(s) of one photo): FID needs two or more"
        claims = []
        for task in T8_TASKS:
            for other in ("plain", "bias-only", "original"):
                for fig in ("psnr_in", "lpips"):
                    a, b = per_seed["sync"][task][fig], per_seed[other][task][fig]
                    if any(math.isnan(x) for x in a + b):
                        continue
                    sign = 1.0 if FIGURES[fig] else -1.0
                    v = verdict([sign * x for x in a], [sign * x for x in b])
                    claims.append({"claim": f"{task}: synchronous modulation beats {other} ({_NAMES[fig]})", **v})
        runs = self.results["runs"]
        return {
            "seeds": seeds, "figures": per_seed, "claims": claims,
            "skipped": skipped,
            "steps": {arm: [runs[f"{arm}/seed{s}"]["steps"] for s in range(seeds)] for arm in T8_ARMS},
            "parameters": {arm: runs[f"{arm}/seed0"]["parameters"] for arm in T8_ARMS},
            "cases": len(views),
        }


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


_NAMES = {"psnr_in": "PSNR in the mask", "ssim_in": "SSIM in the mask", "psnr_out": "PSNR outside",
          "ssim_out": "SSIM outside", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID", "is": "IS"}


def write_sheets(ab: DiffusionAblation) -> list[Path]:
    """Per task a PNG: a row per evaluation case (the first few), columns masked input, each arm's
    final image (seed 0), the truth; pixels tripled for the eye."""
    from PIL import Image

    views, masks = ab.eval_set
    paths = []
    gens = {arm: ab.samples(arm, 0) for arm in T8_ARMS}
    for task in T8_TASKS:
        rows = []
        for i in range(min(SHEET_ROWS, len(views))):
            m = masks[task][i][..., None]
            shown = views[i] * (1 - m) + 0.5 * m  # unknown pixels grey
            cells = [shown] + [pasted(gens[a][task][i : i + 1], views[i : i + 1], masks[task][i : i + 1])[0]
                               for a in T8_ARMS] + [views[i]]
            rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=1.0) for c in cells], 1))
        sheet = (np.concatenate(rows, 0) * 255 + 0.5).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.Resampling.NEAREST)
        path = ab.out / f"table8-{task}.png"
        atomic_write(path, lambda tmp, im=im: im.save(tmp, format="PNG"))
        paths.append(path)
    return paths


def _cell(values: list[float], digits: int) -> str:
    if any(math.isnan(v) for v in values):
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def write_report(ab: DiffusionAblation, summary: dict[str, Any]) -> Path:
    import platform

    import torch

    from ..version import __version__

    s = ab.settings
    budget = f"{s.budget_minutes:g} minutes" if s.budget_minutes else f"{s.steps} steps"
    device = s.device if s.device != "cpu" else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    lines = [
        "# Table 8: task modulation of a diffusion U-Net (inpainting, outpainting)", "",
        (f"Written by `instruct-ipt ablate table8` (instruct-ipt {__version__}, torch {torch.__version__}). "
         f"U-Net `{s.size}` at {s.sample_size}x{s.sample_size}; the base model trained {BASE_FACTOR}x {budget} on generic "
         f"box masks, each other arm {budget} per seed from it, on device {device}; photos "
         f"{', '.join(f'`{t}`' for t in s.train)} and scikit-image's. Evaluated on {summary['cases']} views of "
         f"`{s.val}` ({s.views} per photo), one seeded mask per view and task, DDIM {s.sample_steps} steps, "
         f"the same masks and starting noise for every arm. ± is the standard deviation over {summary['seeds']} seed(s)."),
        "",
        ("PSNR/SSIM *in* the mask compare the generated pixels with the photo's own (one plausible fill among many: "
         "a low figure is not always a bad fill, so look at the sheets too); *outside* compare the raw output with "
         "the known pixels before they are pasted back. LPIPS and DISTS (lower is better) are measured on the "
         "pasted images against the photos; FID (lower) between the pasted images and the photos; IS (higher) of "
         "the pasted images."),
        "",
    ]
    for task in T8_TASKS:
        header = ("| arm | PSNR in | SSIM in | PSNR out | SSIM out | LPIPS | DISTS | FID | IS | steps | "
                  "extra parameters per task |")
        lines += [f"## {task}", "", header, "|---|" + "---:|" * 10]
        for arm in T8_ARMS:
            f = summary["figures"][arm][task]
            steps = "/".join(str(x) for x in summary["steps"][arm]) if arm != "original" else "(base)"
            lines.append(f"| {arm}: {T8_LABELS[arm]} | {_cell(f['psnr_in'], 2)} | {_cell(f['ssim_in'], 3)} | "
                         f"{_cell(f['psnr_out'], 2)} | {_cell(f['ssim_out'], 3)} | {_cell(f['lpips'], 3)} | "
                         f"{_cell(f['dists'], 3)} | {_cell(f['fid'], 1)} | {_cell(f['is'], 2)} | {steps} | "
                         f"{summary['parameters'][arm]['per_task']:,} |")
        lines += ["", f"![{task} samples](table8-{task}.png)", "",
                  "Columns of the sheet: masked input (grey = to fill), " + ", ".join(T8_ARMS) + " (seed 0), the photo.", ""]
    if summary["skipped"]:
        lines += ["Skipped metrics:", ""] + [f"- {k.upper()}: {why}" for k, why in summary["skipped"].items()] + [""]
    lines += ["| claim | mean difference | noise (2 s.e.) | verdict |", "|---|---:|---:|---|"]
    for c in summary["claims"]:
        noise = "-" if c["noise"] is None else f"{c['noise']:.3f}"
        lines.append(f"| {c['claim']} | {c['difference']:+.3f} | {noise} | **{c['verdict']}** |")
    rule = ("A claim **holds** when the mean per-seed difference (sign turned for lower-is-better figures) is "
            "positive and larger than two standard errors, **does not hold** when negative and larger, and is "
            "**within noise** otherwise.")
    lines += ["", rule, ""]
    return atomic_write_text(ab.out / "report.md", "\n".join(lines))


def ablate_table8(out: str | os.PathLike, settings: DiffusionSettings, seeds: int = 2,
                  metric_weights: str | None = None, say: Callable[[str], None] = print,
                  progress: bool = True) -> dict[str, Any]:
    """Run Table 8 into ``out`` (see the module docstring); returns its summary."""
    return DiffusionAblation(out, settings, say=say, progress=progress).run(seeds, metric_weights)

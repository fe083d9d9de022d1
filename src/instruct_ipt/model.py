"""``InstructIPT``: the backbone, its task modulation and the ordered task names, with save/load."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .adaptation import AdaptationConfig, TaskAdaptation, adapt, is_adaptation_key
from .io import atomic_write, atomic_write_text, load_safetensors, load_tagged, save_tagged
from .models import CONFIGURED_SPAN, IPTV2, IPTConfig
from .models.ipt import ConfiguredSpan
from .modulation import ModulatedLayer, ModulationConfig, ParameterCount, ReplacedLayer, TaskModulation, modulate
from .modulation.modulate import TaskSpec, task_index
from .version import __version__

DEFAULT_TASKS: tuple[str, ...] = ("denoise", "deblur", "derain", "dehaze", "desnow")
#: low-rank task biases at rank 8 with the same rank in every layer (the paper's constant-rank setting)
DEFAULT_MODULATION = ModulationConfig()
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "instruct-ipt"
ADAPTER_FORMAT = "instruct-ipt-adapter"
#: state-dict suffixes of per-task parameters (low-rank biases, replaced weights): not backbone
TASK_PARAMETER_SUFFIXES = tuple(f".{n}" for kind in (ModulatedLayer, ReplacedLayer) for n in kind.task_parameter_names)


def default_model_dir() -> Path:
    """Where the package keeps its shipped model."""
    from importlib import resources

    return Path(str(resources.files("instruct_ipt"))) / "weights" / "default"


#: the name every ``--model`` and ``from_pretrained`` accept for the shipped model
DEFAULT_MODEL_NAME = "default"


def resolve_model_dir(directory: str | os.PathLike | None) -> Path:
    """The folder a model name means: a folder that exists, else ``default`` (or None) for the
    shipped model. A folder named ``default`` in the working directory wins over the shipped one."""
    if directory is None or (str(directory) == DEFAULT_MODEL_NAME and not Path(directory).is_dir()):
        return default_model_dir()
    return Path(directory)


class CheckpointError(ValueError):
    """A saved model or adapter does not fit: the message names what differs."""


def _diff(ours: dict[str, Any], theirs: dict[str, Any], what: str) -> list[str]:
    keys = sorted(set(ours) | set(theirs))
    return [f"{what}.{k}: {theirs.get(k)!r} in the file, {ours.get(k)!r} in the model" for k in keys if ours.get(k) != theirs.get(k)]


class InstructIPT(nn.Module):
    """All-in-one restoration model: an :class:`IPTV2` backbone whose task-sensitive weights are
    modulated per task (``W + B1[t] @ B2[t]``).

    ``modulation=None`` builds the plain backbone (one shared model for all tasks): the baseline
    the paper compares against, with the same save/load and forward signature.

    ``adaptation`` (with ``modulation=None``) builds one of the feature-adaptation baselines of the
    paper's Table 1 instead (:mod:`instruct_ipt.adaptation`): the same backbone, conditioned through
    its features rather than its weights. ``encode_text=False`` skips encoding the tasks' phrasings
    for a text-conditioned adaptation (the saved weights about to be loaded hold them).

    ``task_grid_spans`` overrides the backbone's ``grid_span`` for single-task inference, e.g.
    ``{"dehaze": None}`` keeps image-wide grid attention for dehazing while the others use the
    training patch size (chosen by ``scripts/choose_grid_spans.py``, see MODEL.md).
    """

    def __init__(
        self,
        config: IPTConfig | str = "small",
        tasks: Sequence[str] = DEFAULT_TASKS,
        modulation: ModulationConfig | None = DEFAULT_MODULATION,
        task_grid_spans: Mapping[str, int | None] | None = None,
        adaptation: AdaptationConfig | None = None,
        encode_text: bool = True,
    ) -> None:
        super().__init__()
        if adaptation is not None and modulation is not None:
            raise ValueError(f"a model takes weight modulation or a feature adaptation ({adaptation.kind}), not both: "
                             "pass modulation=None with an adaptation")
        self.backbone = IPTV2(IPTConfig.named(config) if isinstance(config, str) else config)
        self.task_grid_spans: dict[str, int | None] = {}
        self.modulation_config = modulation
        self.modulation: TaskModulation | None = None
        self.adaptation_config = adaptation
        self.adaptation: TaskAdaptation | None = None
        if modulation is not None:
            self.modulation = modulate(
                self.backbone,
                tasks,
                rank=modulation.rank,
                targets=modulation.targets,
                strategy=modulation.strategy,
                proportion=modulation.proportion,
                kind=modulation.kind,
            )
            self._tasks = self.modulation.tasks  # shared list: add_task updates both
        else:
            self._tasks = list(tasks)
            if len(set(self._tasks)) != len(self._tasks) or not self._tasks:
                raise ValueError(f"task names must be unique and non-empty, got {list(tasks)}")
            if adaptation is not None:
                self.adaptation = adapt(self.backbone, self._tasks, adaptation, encode_text=encode_text)
        for task, span in (task_grid_spans or {}).items():
            self.set_task_grid_span(task, span)

    @property
    def config(self) -> IPTConfig:
        return self.backbone.config

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    @property
    def modulated(self) -> bool:
        return self.modulation is not None

    def task_index(self, task: str | int) -> int:
        return task_index(self._tasks, task)

    def forward(
        self, x: torch.Tensor, tasks: TaskSpec | None = None, grid_span: int | None | ConfiguredSpan = CONFIGURED_SPAN
    ) -> torch.Tensor:
        """Restore ``x`` (``(B, 3, H, W)`` in [0, 1]).

        ``tasks``: one task name/index for the batch, or one per sample (list or 1-D tensor).
        It may be omitted only inside :meth:`merged` (or after :meth:`merge`).
        ``grid_span``: by default the task's own span (:attr:`task_grid_spans`) for a single-task
        batch, else the backbone's; an explicit value (None: image-wide) overrides both.
        """
        handle = self.modulation if self.modulation is not None else self.adaptation  # what reads the tasks
        if handle is None:
            if tasks is not None:
                self._check_tasks(tasks)
        elif tasks is None and not self._runs_without_task():
            raise ValueError(f"say which task to run: one of {', '.join(self._tasks)} (or one per sample)")
        elif tasks is not None and not isinstance(tasks, (str, int)) and len(tasks) != x.shape[0]:
            raise ValueError(f"got {len(tasks)} tasks for a batch of {x.shape[0]} images")
        if isinstance(grid_span, ConfiguredSpan):
            grid_span = self.grid_span_for(tasks, x)
        if handle is None or (tasks is None and self.modulation is not None):  # plain, or merged weights
            return self.backbone(x, grid_span)
        with handle.select(tasks):  # an adaptation's select(None) keeps the task fixed by merged()
            return self.backbone(x, grid_span)

    def _runs_without_task(self) -> bool:
        """Whether a call without tasks is defined: merged (modulation), a task fixed by
        :meth:`merged` or an adaptation that does not read the task (adaptation)."""
        if self.adaptation is not None:
            return self.adaptation.fixed_task is not None or not self.adaptation.config.conditioned
        return self.modulation.merged_task is not None

    def set_task_grid_span(self, task: str, span: int | None) -> None:
        """Run ``task`` with grid-attention groups bounded to ``span`` pixels (None: image-wide)."""
        self.task_index(task)
        dataclasses.replace(self.config, grid_span=span)  # validates the span
        self.task_grid_spans[task] = span

    def grid_span_for(self, tasks: TaskSpec | None, x: torch.Tensor) -> int | None:
        """The grid span a batch of ``tasks`` runs with: the task's own for a one-task batch (or the
        merged task's), else the backbone's.

        Inputs no larger than every span in play (training patches) are grouped the same by all of
        them, so they skip the look-up, which for a task tensor would cost a device sync per step.
        """
        default = self.config.grid_span
        size = max(x.shape[-2:])
        if not self.task_grid_spans or all(s is None or s >= size for s in {default, *self.task_grid_spans.values()}):
            return default
        if tasks is None and self.modulation is not None:
            tasks = self.modulation.merged_task
        elif tasks is None and self.adaptation is not None:
            tasks = self.adaptation.fixed_task
        names: set[str] = set()
        if isinstance(tasks, (str, int)):
            names = {self._tasks[self.task_index(tasks)]}
        elif isinstance(tasks, torch.Tensor):
            names = {self._tasks[int(i)] for i in tasks.unique().tolist()}
        elif tasks is not None:
            names = {self._tasks[self.task_index(t)] for t in tasks}
        task = names.pop() if len(names) == 1 else None
        return self.task_grid_spans.get(task, default) if task is not None else default

    def _check_tasks(self, tasks: TaskSpec) -> None:
        if isinstance(tasks, (str, int)):
            self.task_index(tasks)
        elif not isinstance(tasks, torch.Tensor):
            for t in tasks:
                self.task_index(t)

    # single-task inference ----------------------------------------------------------
    def merge(self, task: str | int) -> InstructIPT:
        """Fold ``task``'s biases into the weights: forward then costs exactly the backbone."""
        if self.modulation is not None:
            self.modulation.merge(task)
        return self

    def unmerge(self) -> InstructIPT:
        if self.modulation is not None:
            self.modulation.unmerge()
        return self

    @contextlib.contextmanager
    def merged(self, task: str | int) -> Iterator[InstructIPT]:
        """``with model.merged(task):`` runs ``task`` at the backbone's cost and leaves the model as
        it found it, also when the block raises: unmerged stays unmerged, and a model the user
        merged (for this task or another) is merged for that task again afterwards.

        A plain model has nothing to merge: it only checks the task name.
        """
        index = self.task_index(task)
        if self.adaptation is not None:  # nothing to fold: the task is given to every call
            before, self.adaptation.fixed_task = self.adaptation.fixed_task, index
            try:
                yield self
            finally:
                self.adaptation.fixed_task = before
            return
        if self.modulation is None:
            yield self
            return
        mod = self.modulation
        name = self._tasks[self.task_index(task)]
        before, selection = mod.merged_task, (mod.selection.index, mod.selection.ids)
        if before != name:
            mod.unmerge()
            mod.merge(name)
        try:
            yield self
        finally:
            if before != name:
                mod.unmerge()
                if before is not None:
                    mod.merge(before)
                mod.selection.set(*selection)

    def export_merged(self, task: str | int) -> nn.Module:
        """A plain :class:`IPTV2` for one task (no modulation code needed to run it), with the
        task's grid span."""
        name = self._tasks[self.task_index(task)]  # an unknown task: a clear error before any copying
        if self.adaptation is not None:
            raise ValueError(f"a model with a feature adaptation ({self.adaptation.config.kind}) cannot be exported as "
                             "a plain network: its adapters run beside the backbone (restore and eval work)")
        if self.modulation is None:
            import copy

            plain = copy.deepcopy(self.backbone)
        else:
            plain = self.modulation.export_merged(task)
        if name in self.task_grid_spans:
            plain.set_grid_span(self.task_grid_spans[name])  # the copy's own config: what it runs with
        return plain

    def add_task(self, name: str) -> int:
        """Add a downstream task; its biases start at zero effect (the backbone's output).

        A plain model only records the name: it runs every task with the same weights.
        """
        self._refuse_task_changes()
        if self.modulation is None:
            if name in self._tasks:
                raise ValueError(f"task {name!r} already exists")
            self._tasks.append(name)
            return len(self._tasks) - 1
        return self.modulation.add_task(name)

    def remove_task(self, task: str | int) -> None:
        """Drop a task (its biases and its grid span); later tasks' indices shift down by one."""
        name = self._tasks[self.task_index(task)]
        self._refuse_task_changes()
        if self.modulation is None:
            if len(self._tasks) == 1:
                raise ValueError(f"cannot remove {name!r}: it is the model's only task")
            self._tasks.remove(name)
        else:
            self.modulation.remove_task(name)
        self.task_grid_spans.pop(name, None)

    def _refuse_task_changes(self) -> None:
        if self.adaptation is not None:
            raise ValueError(f"a model with a feature adaptation ({self.adaptation.config.kind}) keeps the tasks it was "
                             "built with")

    # backbone weights under canonical names -------------------------------------------
    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights keyed as in a plain :class:`IPTV2` (no ``base_layer``, no task biases).

        The same keys for a plain and a modulated model: the bridge for two-stage training
        (a plain model's weights become a modulated model's frozen backbone).
        A replaced layer (``kind: replace``) has no shared weight, so its ``weight`` is absent.
        """
        return {
            k.replace(".base_layer.", "."): v
            for k, v in self.backbone.state_dict().items()
            if not k.endswith(TASK_PARAMETER_SUFFIXES) and not is_adaptation_key(k)
        }

    @torch.no_grad()
    def load_backbone_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load backbone weights saved by :meth:`backbone_state_dict` of a plain or modulated model.

        Into a model with replaced layers, a plain model's weight of such a layer starts every
        task's own weight (so plain -> replacement works like plain -> modulation)."""
        own = {k.replace(".base_layer.", "."): k for k in self.backbone.state_dict()
               if not k.endswith(TASK_PARAMETER_SUFFIXES) and not is_adaptation_key(k)}
        replaced = {f"{n}.weight": layer for n, layer in (self.modulation.layers() if self.modulation else ())
                    if isinstance(layer, ReplacedLayer)}
        seeded = {k: state[k] for k in replaced if k in state}
        state = {k: v for k, v in state.items() if k not in seeded}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"backbone weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        target = self.backbone.state_dict()
        for k, full in own.items():
            if target[full].shape != state[k].shape:
                raise CheckpointError(f"backbone weight {k}: shape {tuple(state[k].shape)} vs {tuple(target[full].shape)}")
            target[full].copy_(state[k])
        for k, weight in seeded.items():
            try:
                replaced[k].load_shared_weight(weight)
            except ValueError as e:
                raise CheckpointError(f"backbone weight {k}: {e}") from e
        if self.adaptation is not None and self.adaptation.config.kind == "external":
            self.backbone.adaptation_control.copy_encoder(self.backbone)  # ControlNet: the branch starts as the encoder

    # accounting ---------------------------------------------------------------------
    def parameter_count(self) -> ParameterCount:
        if self.modulation is None:
            extra = sum(p.numel() for p in self.adaptation.parameters()) if self.adaptation else 0
            n = sum(p.numel() for p in self.parameters()) - extra
            return ParameterCount(backbone=n, per_task=0, tasks=len(self._tasks), layers=0, adaptation=extra)
        return self.modulation.parameter_count()

    def backbone_fingerprint(self) -> str:
        """SHA-256 of the backbone weights: an adapter only makes sense on the backbone it was trained on."""
        h = hashlib.sha256()
        params = self.modulation.backbone_parameters() if self.modulation else list(self.parameters())
        names = {id(p): n for n, p in self.named_parameters()}
        for p in sorted(params, key=lambda p: names[id(p)]):
            h.update(names[id(p)].encode())
            h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()

    # save / load --------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": __version__,
            "backbone": self.config.to_dict(),
            "tasks": self.tasks,
            "modulation": None if self.modulation_config is None else self.modulation_config.to_dict(),
            "adaptation": None if self.adaptation_config is None else self.adaptation_config.to_dict(),
            "task_grid_spans": dict(self.task_grid_spans),
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically)."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
        atomic_write_text(directory / CONFIG_NAME, json.dumps(self.config_dict(), indent=2) + "\n")
        return directory

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> InstructIPT:
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
            raise CheckpointError(f"not an instruct-ipt model config (format={found!r})")
        try:
            backbone = IPTConfig.from_dict(cfg["backbone"])
            mod = None if cfg.get("modulation") is None else ModulationConfig.from_dict(cfg["modulation"])
            ad = None if cfg.get("adaptation") is None else AdaptationConfig.from_dict(cfg["adaptation"])
            return cls(backbone, cfg["tasks"], mod, cfg.get("task_grid_spans"), adaptation=ad, encode_text=False)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # (AttributeError: a list where a mapping goes)
            raise CheckpointError(f"invalid model config: {e}") from e

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"
    ) -> InstructIPT:
        """Load a model written by :meth:`save_pretrained`; with no folder, or ``"default"``, the
        model shipped in the package (``instruct_ipt/weights/default``)."""
        directory = resolve_model_dir(directory)
        if directory == default_model_dir() and not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                "no default model is shipped with this version yet: pass a model folder "
                "(instruct-ipt train configs/cpu-small.yaml writes runs/cpu-small/model)"
            )
        cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: a saved model folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
        try:
            model = cls.from_config_dict(cfg)
        except CheckpointError as e:
            raise CheckpointError(f"{cfg_path}: {e}") from e
        try:
            state = load_safetensors(weights_path, device=str(device))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        model._load_checked(state, str(weights_path))
        return model.to(device)

    def _load_checked(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            for k in sorted(set(own) & set(state))
            if state[k].shape != own[k].shape
        ]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            problems.append(f"shape mismatch in {len(shapes)} tensors: " + "; ".join(shapes[:3]))
        if problems:
            raise CheckpointError(f"{source} does not match its config: " + " | ".join(problems))
        self.load_state_dict(state)

    # adapters: one task's biases alone ------------------------------------------------
    def save_adapter(self, path: str | os.PathLike, task: str) -> Path:
        """Save one task's biases (a few percent of the model) to a ``.safetensors`` file."""
        if self.modulation is None:
            raise ValueError("a model without weight modulation (plain, or with a feature adaptation) has no task biases")
        state = self.modulation.task_state_dict(task)
        meta = {
            "format": ADAPTER_FORMAT,
            "version": __version__,
            "task": self.tasks[self.task_index(task)],
            "backbone": json.dumps(self.config.to_dict(), sort_keys=True),
            "modulation": json.dumps(self.modulation_config.to_dict(), sort_keys=True),
            "backbone_sha256": self.backbone_fingerprint(),
        }
        return save_tagged(path, state, meta)

    def load_adapter(
        self, path: str | os.PathLike, task: str | None = None, replace: bool = False, check_backbone: bool = True
    ) -> str:
        """Attach a task saved by :meth:`save_adapter`; returns the task name.

        A new task name is added to the model; an existing one is overwritten only with
        ``replace=True``. The adapter must come from the same backbone config, modulation
        config and (unless ``check_backbone=False``) the same backbone weights.
        """
        if self.modulation is None:
            raise ValueError("a model without weight modulation (plain, or with a feature adaptation) cannot take task biases")
        try:
            state, meta = load_tagged(path, ADAPTER_FORMAT, "an instruct-ipt adapter")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        try:
            backbone, modulation = json.loads(meta["backbone"]), json.loads(meta["modulation"])
            theirs = ModulationConfig.from_dict(modulation).to_dict()  # older files lack newer fields
        except (KeyError, TypeError, ValueError) as e:  # metadata edited by hand or damaged
            raise CheckpointError(f"{path}: an adapter whose metadata is incomplete or malformed ({e!r})") from None
        problems = _diff(self.config.to_dict(), backbone, "backbone")
        problems += _diff(self.modulation_config.to_dict(), theirs, "modulation")
        if problems:
            raise CheckpointError(f"{path} was made for another model: " + "; ".join(problems))
        if check_backbone and meta.get("backbone_sha256") != self.backbone_fingerprint():
            raise CheckpointError(
                f"{path} was trained on different backbone weights (checksum differs); "
                "pass check_backbone=False to attach it anyway"
            )
        name = task or meta["task"]
        if name in self._tasks and not replace:
            raise ValueError(f"task {name!r} already exists; pass replace=True to overwrite its biases")
        added = name not in self._tasks
        if added:
            self.add_task(name)
        try:
            self.modulation.load_task_state_dict(name, state)
        except ValueError as e:
            if added:  # leave the model as it was
                self.remove_task(name)
            raise CheckpointError(f"{path}: {e}") from e
        return name

    def summary(self, macs: int | None = None) -> dict[str, Any]:
        """Tasks, modulation and parameter counts, as ``instruct-ipt info --json`` prints them.

        With ``macs``, also ``gmacs_at_<macs>``: billions of multiply-accumulates of one forward on a
        ``macs x macs`` image, counted merged for the first task (a task's cost, exactly the backbone's).
        The model is left merged, or not, as it was.
        """
        from .models.complexity import count_macs

        count = self.parameter_count()
        info: dict[str, Any] = {
            "tasks": self.tasks,
            "modulation": None if self.modulation_config is None else self.modulation_config.to_dict(),
            "adaptation": None if self.adaptation_config is None else self.adaptation_config.to_dict(),
            "adaptation_parameters": count.adaptation,
            "grid_span": self.config.grid_span,
            "task_grid_spans": dict(self.task_grid_spans),
            "modulated_layers": count.layers,
            "backbone_parameters": count.backbone,
            "extra_parameters_per_task": count.per_task,
            "extra_share_per_task": round(count.share, 6),
            "extra_parameters_all_tasks": count.per_task * count.tasks,
        }
        if macs:
            with self.merged(self.tasks[0]):
                n = count_macs(self, macs)
            info[f"gmacs_at_{macs}"] = round(n / 1e9, 3)
        return info

    def extra_repr(self) -> str:
        if self.adaptation_config is not None:
            return f"tasks={self.tasks}, adaptation={self.adaptation_config}"
        return f"tasks={self.tasks}, modulation={self.modulation_config}"

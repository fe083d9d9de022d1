"""Typed training configuration, loaded from YAML; an unknown key is an error naming it."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data.degradations import DEGRADATIONS

Mode = Literal["sync", "plain", "single", "two-stage", "bias-only"]
MODES = ("sync", "plain", "single", "two-stage", "bias-only")


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the key."""


@dataclass
class TaskConfig:
    #: sampling weight in mixed-task batches
    weight: float = 1.0
    #: parameters of the task's degradation operator (instruct_ipt.data.degradations)
    degradation: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    #: tiny | small | base, or a dict of IPTConfig fields
    size: str | dict[str, Any] = "small"
    rank: int = 8
    strategy: Literal["constant", "proportional"] = "constant"
    proportion: float = 0.05
    #: fnmatch patterns of modulated layers; None: the paper's task-sensitive groups
    targets: list[str] | None = None
    #: ``low-rank``: per-task biases W + B1 @ B2 (the method); ``replace``: the paper's weight
    #: replacement (Table 9), a full weight per task on the targeted layers and no shared one
    modulation_kind: Literal["low-rank", "replace"] = "low-rank"
    #: a feature adaptation instead of weight modulation (the paper's Table 1 baselines), trained
    #: with ``mode: plain``: ``prompt`` (PromptIR), ``gating`` (InstructIR), ``external`` (ControlNet-style)
    adaptation: Literal["prompt", "gating", "external"] | None = None
    #: the task vector of ``gating``/``external``: ``text`` (each task's phrasings through the packaged
    #: MiniLM encoder) or ``learned`` (a learned vector per task)
    adaptation_instruction: Literal["text", "learned"] = "text"
    #: a saved model folder to start from (bias-only: the model that gains tasks)
    init: str | None = None


@dataclass
class DataConfig:
    #: folders of clean training photos
    train: list[str] = field(default_factory=list)
    #: also train on scikit-image's bundled colour photos
    skimage_photos: bool = False
    #: folders of clean validation photos (degraded once, cached)
    val: list[str] = field(default_factory=list)
    val_crop: int = 256
    #: seed of the validation degradations; fixed, not the run's ``seed``, so that runs with other
    #: seeds and warm restarts are validated on the same degraded images
    val_seed: int = 0
    #: where the degraded validation set is cached (default: <out>/val-cache)
    val_cache: str | None = None
    patch_size: int = 64
    #: global batch size (split over DDP processes)
    batch_size: int = 8
    workers: int = 0
    #: where degradations are made: ``device`` - in batches on the training device (the workers
    #: only cut clean patches and draw parameters); ``workers`` - per sample in NumPy in the
    #: DataLoader workers (the operators of instruct_ipt.data.degradations, as validation uses);
    #: ``auto`` - ``device`` on a GPU, ``workers`` on a CPU (where a worker process overlaps the
    #: synthesis with the step: measured faster, docs/training.md)
    synthesis: Literal["auto", "device", "workers"] = "auto"
    #: share of training samples made grey (luma in every channel, the same degradation in each)
    grey_share: float = 0.0
    #: share of training samples that carry a second degradation (another task's), kept in the
    #: target, so each task learns to remove only its own (issue 23); ``synthesis: workers`` only
    composite: float = 0.0
    #: share of training samples left without their task's degradation (input = target), so each
    #: task learns to leave such a photo alone: blind mode's wrong guesses then cost less
    identity: float = 0.0
    #: real degraded/clean pairs per task, ``{task: [folders]}``, in the layouts ``eval`` detects
    #: (GoPro, Rain100L/H, SOTS, CSD, ``input/`` + ``target/``); a task listed here needs no
    #: synthetic degradation (a task of your own). ``synthesis: workers`` (``auto`` picks it).
    paired: dict[str, list[str]] = field(default_factory=dict)
    #: share of a task's samples drawn from its pairs when it also has a synthetic degradation:
    #: one share for every paired task, or ``{task: share}`` (others 0.5)
    paired_share: float | dict[str, float] = 0.5


@dataclass
class OptimConfig:
    lr: float = 2e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    #: max gradient norm; 0 disables clipping
    grad_clip: float = 0.0


@dataclass
class StageConfig:
    """One phase of a multi-stage schedule; unset fields inherit the top-level values."""

    name: str = ""
    mode: Mode | None = None
    #: tasks trained in this stage (bias-only: the tasks that gain or retrain biases)
    tasks: list[str] | None = None
    iterations: int | None = None
    lr: float | None = None
    #: linear warm-up steps of this stage's learning rate (default: optim.warmup)
    warmup: int | None = None
    #: share of grey training samples in this stage (default: data.grey_share)
    grey_share: float | None = None


@dataclass
class GridSpanConfig:
    """The run's last step: choose per task image-wide or patch-sized grid attention on whole
    photos (instruct_ipt.eval.grid_span) and record the choice in the saved model."""

    #: folders of clean selection photos (not the photos results are reported on)
    photos: list[str] = field(default_factory=list)
    #: candidate span in input pixels (default: data.patch_size)
    span: int | None = None
    #: use this many photos, evenly spaced in name order (0: all)
    limit: int = 3
    #: denoise noise level of the selection images (0-255)
    sigma: float = 25.0
    seed: int = 1


@dataclass
class TrainConfig:
    mode: Mode = "sync"
    #: every task the run knows, in model order, with its sampling weight and degradation
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    #: tasks trained (default: all of ``tasks``; bias-only: those the init model lacks)
    train_tasks: list[str] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    iterations: int = 1000
    loss: Literal["l1", "charbonnier"] = "l1"
    #: EMA decay of the weights (e.g. 0.999); None disables
    ema: float | None = None
    #: bfloat16 autocast on CUDA (ignored on CPU)
    amp: bool = True
    #: run the model in channels-last memory layout (faster convolutions on CPU and GPU)
    channels_last: bool = True
    #: torch.compile the training forward/backward with this mode (None: eager). On CUDA:
    #: ``default``, ``reduce-overhead`` (adds CUDA graphs) or ``max-autotune``; a compile that
    #: fails falls back to eager with a warning. Slower on CPU (measured: docs/training.md).
    compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    #: share of iterations for the plain phase of two-stage mode
    two_stage_split: float = 0.5
    stages: list[StageConfig] | None = None
    #: choose the grid span per task after the last stage (None: keep the model's)
    grid_spans: GridSpanConfig | None = None
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 100
    out: str = "runs/default"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# loading ---------------------------------------------------------------------------
def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        number = _yaml_number(value)
        if isinstance(number, float):
            return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown config key '{where}' (known here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    cfg = _from_dict(TrainConfig, data, "")
    validate(cfg)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with ``KEY=VALUE`` overrides applied: a dotted key (``data.train``, ``optim.lr``) and a
    YAML value (``[photos/train]``, ``1e-3``, ``null``). Unknown keys are refused when the config loads."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.train=[photos/train]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from e
        *parents, leaf = key.strip().split(".")
        node = data
        for i, name in enumerate(parents):
            where = ".".join(parents[: i + 1])
            if name in node and node[name] is None:  # switched off in the config: not switched on by a detail
                raise ConfigError(f"--set {item!r}: {where} is null in the config; set it whole, e.g. --set '{where}={{...}}'")
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {where} is not a mapping")
            node = child
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A YAML config file, with optional ``KEY=VALUE`` overrides (see :func:`apply_overrides`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return config_from_dict(apply_overrides(data or {}, overrides or []))


def _check_degradation(task: str, params: dict[str, Any]) -> None:
    """A task's degradation parameters: each must be a field of its operator, and the operator's
    constructor must accept the values (each operator checks its ranges: a sigma >= 0, an opacity in
    [0, 1], ...) - a ConfigError naming the key now, not an error from inside the trainer's workers."""
    op = DEGRADATIONS[task]
    known = [f.name for f in dataclasses.fields(op) if f.init and f.name != "task"]  # (the task is the key itself)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key 'tasks.{task}.degradation.{unknown[0]}' "
                          f"(known here: {', '.join(sorted(known))})")
    for key, value in params.items():  # (in place: the trainer builds its operators from these)
        params[key] = [_yaml_number(v) for v in value] if isinstance(value, list) else _yaml_number(value)
    try:
        op(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"tasks.{task}.degradation: {e}") from None


def _yaml_number(value: Any) -> Any:
    """A number YAML 1.1 left as a string ("1e-3", no dot) as a float; anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def validate(cfg: TrainConfig) -> None:
    if not cfg.tasks:
        raise ConfigError("tasks: list at least one task")
    for name in cfg.train_tasks or []:
        if name not in cfg.tasks:
            raise ConfigError(f"train_tasks: {name!r} is not in tasks ({', '.join(cfg.tasks)})")
    if cfg.mode == "single" and len(cfg.train_tasks or cfg.tasks) != 1:
        raise ConfigError("mode single trains one task: give exactly one in tasks or train_tasks")
    if cfg.mode == "bias-only" and not cfg.model.init:
        raise ConfigError("mode bias-only needs model.init: the saved model whose backbone stays frozen")
    for i, st in enumerate(cfg.stages or []):
        for t in st.tasks or []:
            if t not in cfg.tasks:
                raise ConfigError(f"stages[{i}].tasks: {t!r} is not in tasks ({', '.join(cfg.tasks)})")
        if st.mode == "two-stage":
            raise ConfigError(f"stages[{i}].mode: two-stage is itself a schedule; use plain then bias-only stages")
        if st.iterations is not None and st.iterations < 1:
            raise ConfigError(f"stages[{i}].iterations: must be at least 1")
        if st.warmup is not None and st.warmup < 0:
            raise ConfigError(f"stages[{i}].warmup: must be >= 0")
        if st.grey_share is not None and not 0 <= st.grey_share <= 1:
            raise ConfigError(f"stages[{i}].grey_share: a share in [0, 1], got {st.grey_share}")
    if cfg.model.adaptation is not None:
        modes = {st.mode or cfg.mode for st in cfg.stages} if cfg.stages else {cfg.mode}
        if modes - {"plain", "single"}:
            raise ConfigError(f"model.adaptation: a feature adaptation ({cfg.model.adaptation}) trains with mode plain; "
                              f"it cannot be combined with weight modulation (mode {', '.join(sorted(modes - {'plain', 'single'}))})")
    if cfg.stages and cfg.stages[0].mode == "bias-only" and not cfg.model.init:
        raise ConfigError("stages[0]: a bias-only first stage needs model.init")
    for key in ("iterations", "log_every", "val_every", "ckpt_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be at least 1")
    if cfg.data.batch_size < 1 or cfg.data.patch_size < 8:
        raise ConfigError("data.batch_size must be >= 1 and data.patch_size >= 8")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise ConfigError("ema: a decay in (0, 1), e.g. 0.999")
    if not 0 < cfg.two_stage_split < 1:
        raise ConfigError("two_stage_split: a share in (0, 1)")
    if not 0 <= cfg.data.grey_share <= 1:
        raise ConfigError(f"data.grey_share: a share in [0, 1], got {cfg.data.grey_share}")
    if not 0 <= cfg.data.composite <= 1:
        raise ConfigError(f"data.composite: a share in [0, 1], got {cfg.data.composite}")
    if not 0 <= cfg.data.identity <= 1:
        raise ConfigError(f"data.identity: a share in [0, 1], got {cfg.data.identity}")
    if cfg.data.composite > 0 and cfg.data.synthesis == "device":
        raise ConfigError("data.composite: composite samples are made in the workers; set data.synthesis: workers")
    d = cfg.data
    for task, folders in d.paired.items():
        if task not in cfg.tasks:
            raise ConfigError(f"data.paired: {task!r} is not in tasks ({', '.join(cfg.tasks)})")
        if not folders:
            raise ConfigError(f"data.paired.{task}: list at least one folder of pairs")
    for task, tc in cfg.tasks.items():
        if task not in DEGRADATIONS and task not in d.paired:
            raise ConfigError(f"tasks.{task}: no synthetic degradation is known for {task!r} "
                              f"(known: {', '.join(DEGRADATIONS)}); give its pairs in data.paired.{task}")
        if task not in DEGRADATIONS and tc.degradation:
            raise ConfigError(f"tasks.{task}.degradation: {task!r} has no synthetic degradation to configure")
        if task in DEGRADATIONS:
            _check_degradation(task, tc.degradation)
    shares = d.paired_share if isinstance(d.paired_share, dict) else {"": d.paired_share}
    for task, share in shares.items():
        if task and task not in d.paired:
            raise ConfigError(f"data.paired_share: {task!r} has no pairs in data.paired")
        if not 0 <= share <= 1:
            raise ConfigError(f"data.paired_share{'.' + task if task else ''}: a share in [0, 1], got {share}")
    if d.paired and d.synthesis == "device":
        raise ConfigError("data.paired: paired samples are cut in the workers; set data.synthesis: workers (or auto)")
    if cfg.optim.warmup < 0:
        raise ConfigError("optim.warmup: must be >= 0")
    g = cfg.grid_spans
    if g is not None:
        if not g.photos:
            raise ConfigError("grid_spans.photos: give folders of clean selection photos (or drop grid_spans)")
        span = g.span if g.span is not None else cfg.data.patch_size
        if span < 8:
            raise ConfigError(f"grid_spans.span: {span} is too small")
        if g.limit < 0:
            raise ConfigError("grid_spans.limit: must be >= 0 (0: every photo)")

"""Command-line interface: ``instruct-ipt <command>``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from . import __version__


def _device_line() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return "cpu (CUDA not available)"


def cmd_info(args: argparse.Namespace) -> int:
    from .model import InstructIPT
    from .models import IPTConfig
    from .models.complexity import count_macs
    from .modulation import ModulationConfig

    if args.model:
        model = InstructIPT.from_pretrained(args.model)
        source = f"saved model {args.model}"
    else:
        tasks = args.tasks.split(",") if args.tasks else None
        mod = None if args.plain else ModulationConfig(rank=args.rank, strategy=args.strategy, proportion=args.proportion)
        kwargs = {} if tasks is None else {"tasks": tasks}
        model = InstructIPT(IPTConfig.named(args.size), modulation=mod, **kwargs)
        source = f"config '{args.size}' (untrained)"
    count = model.parameter_count()
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "device": _device_line(),
        "model": source,
        "tasks": model.tasks,
        "modulation": None if model.modulation_config is None else model.modulation_config.to_dict(),
        "modulated_layers": count.layers,
        "backbone_parameters": count.backbone,
        "extra_parameters_per_task": count.per_task,
        "extra_share_per_task": round(count.share, 6),
        "extra_parameters_all_tasks": count.per_task * count.tasks,
    }
    if args.macs:
        if model.modulation is not None:
            model.merge(model.tasks[0])  # merged: exactly the backbone's cost
        info[f"gmacs_at_{args.macs}"] = round(count_macs(model, args.macs) / 1e9, 3)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"instruct-ipt {__version__} | torch {torch.__version__} | device: {info['device']}")
    print(f"model: {source}")
    print(f"tasks ({len(model.tasks)}): {', '.join(model.tasks)}")
    if model.modulation_config is None:
        print("modulation: none (plain backbone shared by all tasks)")
    else:
        m = model.modulation_config
        rank = f"rank {m.rank}" if m.strategy == "constant" else f"proportion {m.proportion}"
        print(f"modulation: {m.strategy} {rank} on {count.layers} layers")
    print(f"backbone parameters:       {count.backbone:,}")
    print(f"extra parameters per task: {count.per_task:,} ({100 * count.share:.2f}% of the backbone)")
    print(f"extra parameters, all {count.tasks} tasks: {count.per_task * count.tasks:,}")
    if args.macs:
        print(f"MACs at {args.macs}x{args.macs}: {info[f'gmacs_at_{args.macs}']} G (merged: same as the backbone)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .models import SIZES

    parser = argparse.ArgumentParser(
        prog="instruct-ipt",
        description="All-in-one image restoration with task-modulated weights (Instruct-IPT).",
    )
    parser.add_argument("--version", action="version", version=f"instruct-ipt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device and a model summary (parameters per task, MACs)")
    p.add_argument("--model", metavar="DIR", help="a saved model folder (config.json + model.safetensors)")
    p.add_argument("--size", choices=SIZES, default="small", help="named config to describe when no --model")
    p.add_argument("--tasks", help="comma-separated task names (default: the five standard tasks)")
    p.add_argument("--rank", type=int, default=8, help="modulation rank (constant strategy)")
    p.add_argument("--strategy", choices=("constant", "proportional"), default="constant")
    p.add_argument("--proportion", type=float, default=0.05, help="rank share for the proportional strategy")
    p.add_argument("--plain", action="store_true", help="describe the unmodulated backbone")
    p.add_argument("--macs", type=int, nargs="?", const=128, metavar="SIZE", help="also count MACs at SIZE x SIZE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"instruct-ipt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

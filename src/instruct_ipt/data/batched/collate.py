"""From device-synthesis samples to training batches: the collate function and the device step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import BatchedDegradation


def collate_device(samples: Sequence[Mapping]) -> dict:
    """DataLoader ``collate_fn`` for ``SyntheticDataset(synthesis="device")`` samples.

    Returns ``clean`` (B, 3, S, S) uint8, ``task`` and ``seed`` (B,) int64, the flags ``grey`` and
    ``identity`` (B,) bool and ``draws``:
    ``{task_name: {"index": rows of that task in the batch, key: stacked draws}}``: draws stack
    within a task only (their shapes are fixed by the task's operator). All tensors, so
    ``pin_memory`` works.
    """
    rows: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        rows.setdefault(s["task_name"], []).append(i)
    draws = {
        name: {
            "index": torch.tensor(idx, dtype=torch.long),
            **{k: torch.from_numpy(np.stack([samples[i]["draws"][k] for i in idx])) for k in samples[idx[0]]["draws"]},
        }
        for name, idx in rows.items()
    }
    return {
        "clean": torch.stack([s["clean"] for s in samples]),
        "task": torch.tensor([s["task"] for s in samples], dtype=torch.long),
        "seed": torch.tensor([s["seed"] for s in samples], dtype=torch.long),
        "grey": torch.tensor([bool(s.get("grey", False)) for s in samples]),
        "identity": torch.tensor([bool(s.get("identity", False)) for s in samples]),
        "draws": draws,
    }


class BatchDegrader:
    """``degrader(batch, device) -> (input, target, task_ids)``, all (B, 3, P, P) float32 on ``device``.

    The batch's clean canvases are (B, 3, P + 2M, P + 2M), each task's crop (P + 2m) centred in
    it; each task's rows go through its operator's ``apply`` in one call, on their own margin's
    window, and the centre patch is kept, as the worker path keeps it. Only the per-sample seeds
    (host ints already) are read on the host: nothing waits for the device.
    """

    def __init__(self, ops: Mapping[str, BatchedDegradation], patch_size: int, margin: int) -> None:
        wide = {t: op.margin for t, op in ops.items() if op.margin > margin}
        if wide:
            raise ValueError(f"operators need more margin than {margin}: {wide}")
        self.ops = dict(ops)
        self.patch_size = patch_size
        self.margin = margin

    @torch.no_grad()
    def __call__(self, batch: Mapping, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, big = self.patch_size, self.margin
        clean = batch["clean"].to(device, non_blocking=True).float() / 255.0
        if clean.shape[-2:] != (p + 2 * big, p + 2 * big):
            raise ValueError(f"clean canvases are {tuple(clean.shape[-2:])}, expected {p + 2 * big} px square")
        target = clean[..., big : big + p, big : big + p].contiguous()
        degraded = torch.empty_like(target)
        for name, group in batch["draws"].items():
            op, m = self.ops[name], self.ops[name].margin
            rows = group["index"].to(device, non_blocking=True)
            window = clean.index_select(0, rows)[..., big - m : big + p + m, big - m : big + p + m]
            draws = {k: v.to(device, non_blocking=True) for k, v in group.items() if k != "index"}
            out = op.apply(window, draws, batch["seed"][group["index"]])
            degraded.index_copy_(0, rows, out[..., m : m + p, m : m + p])
        grey = batch.get("grey")
        if grey is not None and bool(grey.any()):  # host flags: grey samples get channel 0's degradation everywhere
            rows = grey.nonzero().flatten().to(device, non_blocking=True)
            degraded.index_copy_(0, rows, degraded.index_select(0, rows)[:, :1].expand(-1, 3, -1, -1).contiguous())
        identity = batch.get("identity")
        if identity is not None and bool(identity.any()):  # host flags: samples left clean (input = target)
            rows = identity.nonzero().flatten().to(device, non_blocking=True)
            degraded.index_copy_(0, rows, target.index_select(0, rows))
        return degraded, target, batch["task"].to(device, non_blocking=True)

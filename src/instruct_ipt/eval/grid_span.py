"""Per task, should grid attention span the whole image or only the training patch size?

A model trained on P x P patches has only seen grid groups spread over P pixels. On a whole
photo an image-wide grid puts the tokens of a group far further apart than in training, which
helps some tasks (dehazing uses the image-wide view) and hurts others. This measures both on
whole photos of a *selection* set (keep the photos you report on out of it) and picks, per task,
the grouping with the higher mean PSNR.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from statistics import mean

import torch

from ..inference import restore_array
from ..model import InstructIPT
from .protocol import default_protocol
from .runner import Case


@dataclass(frozen=True)
class SpanChoice:
    task: str
    images: int
    #: mean PSNR (the task's protocol channel) with image-wide groups and with ``span``-bounded ones
    psnr_image_wide: float
    psnr_span: float
    span: int

    @property
    def best(self) -> int | None:
        """The chosen span; a tie keeps the grouping the model was trained with."""
        return None if self.psnr_image_wide > self.psnr_span else self.span


@torch.no_grad()
def compare_grid_spans(model: InstructIPT, cases: Iterable[Case], span: int) -> list[SpanChoice]:
    """Restore every case with image-wide and with ``span``-bounded grid groups (whole images, no tiling)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[tuple[float, float]]] = {}  # per task: (image-wide, span) per image
    try:
        for case in cases:
            protocol = default_protocol(case.task)
            pair = []
            for s in (None, span):
                y = restore_array(model, case.input, case.task, tile=0, grid_span=s)
                pair.append(protocol.measure(y, case.target)[f"psnr_{protocol.channels[0]}"])
            scores.setdefault(case.task, []).append((pair[0], pair[1]))
    finally:
        model.train(was_training)
    return [SpanChoice(t, len(v), mean(p[0] for p in v), mean(p[1] for p in v), span) for t, v in scores.items()]


def apply_choices(model: InstructIPT, choices: Iterable[SpanChoice]) -> None:
    """Bound grid groups to the span by default and keep image-wide groups for the tasks that chose them."""
    choices = list(choices)
    spans = {c.span for c in choices}
    if len(spans) != 1:
        raise ValueError(f"choices compare different spans: {sorted(spans)}")
    model.backbone.set_grid_span(spans.pop())
    model.task_grid_spans.clear()
    for c in choices:
        if c.best is None:
            model.set_task_grid_span(c.task, None)

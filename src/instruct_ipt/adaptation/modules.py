"""The three feature adaptations of the paper's Table 1, as wrappers around the backbone's stages.

Each wrapper keeps the stage it wraps as ``base_layer`` (untouched, so the backbone's weights keep
their canonical names) and adds its own parameters under ``adapter``. Every adapter's last layer
starts at zero, so a freshly adapted backbone computes exactly the backbone: the comparison with
weight modulation (whose biases also start at zero effect) starts from the same function.

- :class:`GatedStage` (InstructIR): after a stage, per-channel affine gates from the task vector,
  ``x * (1 + gamma(e)) + beta(e)``.
- :class:`PromptedStage` (PromptIR): before a decoder stage, a prompt generated from learned
  prompt components weighted by the features themselves (blind: no task input), fused back into
  the features by a prompt-interaction block.
- :class:`ControlledEmbed` / :class:`ControlledStage` with :class:`ExternalControl`
  (ControlNet-style): a parallel copy of the encoder, fed the input and the task vector, adds its
  features to each encoder level through zero-initialised 1x1 convolutions.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .condition import TaskCondition


class GatedStage(nn.Module):
    """A stage followed by task-conditioned per-channel affine gates (InstructIR's conditioning)."""

    def __init__(self, stage: nn.Module, width: int, dim: int, condition: TaskCondition) -> None:
        super().__init__()
        self.base_layer = stage
        self.adapter = nn.Linear(dim, 2 * width)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        self.condition = condition

    def forward(self, x: torch.Tensor, grid_span: int | None = None) -> torch.Tensor:
        y = self.base_layer(x, grid_span)
        gamma, beta = self.adapter(self.condition.vectors(y.shape[0], y.device)).to(y.dtype).chunk(2, dim=1)
        return y * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class PromptBlock(nn.Module):
    """PromptIR's prompt generation (``components`` learned prompts, mixed by softmax weights from
    the pooled features, resized to the features and convolved) and prompt interaction (the prompt
    concatenated with the features, fused by a conv back to the features' width)."""

    def __init__(self, width: int, components: int = 5, size: int = 16) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(components, width, size, size) * 0.02)
        self.weights = nn.Linear(width, components)
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.fuse = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, width, 1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.weights(x.mean(dim=(2, 3))), dim=1)  # (B, N)
        prompt = torch.einsum("bn,nchw->bchw", w, self.prompts.to(x.dtype))
        prompt = self.conv(F.interpolate(prompt, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return x + self.fuse(torch.cat([x, prompt], dim=1))


class PromptedStage(nn.Module):
    """A decoder stage whose input first passes a :class:`PromptBlock` (PromptIR injects its
    prompts at each decoder level)."""

    def __init__(self, stage: nn.Module, width: int, size: int) -> None:
        super().__init__()
        self.base_layer = stage
        self.adapter = PromptBlock(width, size=size)

    def forward(self, x: torch.Tensor, grid_span: int | None = None) -> torch.Tensor:
        return self.base_layer(self.adapter(x), grid_span)


class ExternalControl(nn.Module):
    """ControlNet-style control branch: copies of the backbone's embedding, encoder stages and
    down-samplings (starting from the backbone's weights), the task vector added to its embedded
    input, and one zero-initialised 1x1 conv per encoder level."""

    def __init__(self, backbone: nn.Module, widths: list[int], dim: int, condition: TaskCondition) -> None:
        super().__init__()
        self.embed = copy.deepcopy(backbone.embed)
        self.encoders = copy.deepcopy(backbone.encoders)
        self.downsamples = copy.deepcopy(backbone.downsamples)
        self.task = nn.Linear(dim, widths[0])
        self.zero_convs = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths[: len(self.encoders)])
        for conv in self.zero_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.condition = condition
        self._input: torch.Tensor | None = None
        self._features: list[torch.Tensor] = []

    @torch.no_grad()
    def copy_encoder(self, backbone: nn.Module) -> None:
        """Make the branch a copy of ``backbone``'s (wrapped) embedding, encoders and down-samplings."""
        def unwrapped(m: nn.Module) -> nn.Module:
            return m.base_layer if hasattr(m, "base_layer") else m

        self.embed.load_state_dict(unwrapped(backbone.embed).state_dict())
        for mine, theirs in zip(self.encoders, backbone.encoders):
            mine.load_state_dict(unwrapped(theirs).state_dict())
        self.downsamples.load_state_dict(backbone.downsamples.state_dict())

    def remember(self, xp: torch.Tensor) -> None:
        self._input, self._features = xp, []

    def level(self, i: int, grid_span: int | None) -> torch.Tensor:
        """The control features added to encoder level ``i`` (the branch runs at level 0)."""
        if i == 0:
            if self._input is None:
                raise RuntimeError("the control branch saw no input: run the whole backbone")
            xp, self._input = self._input, None
            c = self.embed(xp) + self.task(self.condition.vectors(xp.shape[0], xp.device)).to(xp.dtype)[:, :, None, None]
            span = grid_span
            feats = []
            for level, (encoder, down) in enumerate(zip(self.encoders, self.downsamples)):
                c = encoder(c, None if span is None else span >> level)
                feats.append(self.zero_convs[level](c))
                c = down(c)
            self._features = feats
        feat = self._features[i]
        if i == len(self._features) - 1:  # the last level: hold no tensors (and no graph) between forwards
            self._features = []
        return feat


class ControlledEmbed(nn.Module):
    """The backbone's embedding; hands the (padded) input to the control branch on the way."""

    def __init__(self, embed: nn.Module, control: ExternalControl) -> None:
        super().__init__()
        self.base_layer = embed
        self._control = [control]  # a list: the control branch is registered once, on the backbone

    def forward(self, xp: torch.Tensor) -> torch.Tensor:
        self._control[0].remember(xp)
        return self.base_layer(xp)


class ControlledStage(nn.Module):
    """An encoder stage plus the control branch's (zero-conv) features of its level."""

    def __init__(self, stage: nn.Module, level: int, control: ExternalControl) -> None:
        super().__init__()
        self.base_layer = stage
        self.level = level
        self._control = [control]

    def forward(self, x: torch.Tensor, grid_span: int | None = None) -> torch.Tensor:
        return self.base_layer(x, grid_span) + self._control[0].level(self.level, grid_span)

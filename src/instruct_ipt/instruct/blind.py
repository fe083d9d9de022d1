"""Blind mode: a light CNN that tells which degradation an image has, when no task is given."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.degradations import Degradation
from ..data.synthetic import TaskSampler, augment, random_crop, to_tensor
from ..io import load_tagged, save_tagged

BLIND_FORMAT = "instruct-ipt-degradation-classifier"
BLIND_FILE = "degradation_classifier.safetensors"


class DegradationClassifier(nn.Module):
    """Full-resolution convs (noise and JPEG live in single pixels), then strided ones; the mean and
    standard deviation of the last features over the image feed a linear layer over the tasks."""

    def __init__(self, tasks: Sequence[str], width: int = 32) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.width = width
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),
        )
        self.classifier = nn.Linear(8 * w, len(self.tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x - 0.5)
        return self.classifier(torch.cat([f.mean((2, 3)), f.std((2, 3))], dim=1))

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, crop: int = 128, max_crops: int = 16) -> dict[str, float]:
        """Task probabilities for a float (H, W, 3) image: logits averaged over a grid of crops."""
        self.eval()
        p = next(self.parameters())
        h, w = rgb.shape[:2]
        crop = min(crop, min(h, w))
        rows = np.linspace(0, h - crop, max(1, min(4, h // crop))).astype(int)
        cols = np.linspace(0, w - crop, max(1, min(4, w // crop))).astype(int)
        tiles = [rgb[r : r + crop, c : c + crop] for r in rows for c in cols][:max_crops]
        x = torch.from_numpy(np.stack(tiles).transpose(0, 3, 1, 2).copy()).to(p.device, p.dtype)
        probs = self(x).softmax(-1).mean(0)
        return {t: float(v) for t, v in zip(self.tasks, probs)}

    def save(self, path: str | Path) -> Path:
        meta = {"format": BLIND_FORMAT, "tasks": json.dumps(self.tasks), "width": str(self.width)}
        return save_tagged(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | Path) -> DegradationClassifier:
        state, meta = load_tagged(path, BLIND_FORMAT, "an instruct-ipt degradation classifier")
        model = cls(json.loads(meta["tasks"]), width=int(meta["width"]))
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def default(cls) -> DegradationClassifier:
        """The shipped model's classifier (in its folder, ``weights/default``)."""
        return cls.load(Path(str(resources.files("instruct_ipt") / "weights" / "default" / BLIND_FILE)))


class BlindDataset(Dataset):
    """Training samples for the classifier: degraded crops of photos at varied scale and sharpness.

    A random photo is rescaled (``scale``: users' photos come at any resolution), a ``context``
    square of it is degraded as a whole, and a random ``patch`` square of that is the sample.
    ``context > patch`` mimics crops of a whole degraded photo (haze thinning towards the near
    edge); the shipped classifier uses ``context == patch``, since a trial at 192 px (with blur
    samples softened too) scored worse on held-out photos: 88.9% against 95.1%. With probability
    ``soften`` the clean square is first blurred a little (Gaussian, sigma 0.4-1.2): many real
    photos are slightly soft, and softness alone must not read as motion blur (so tasks in
    ``keep_sharp``, whose label is the blur, are never softened).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        degradations: Mapping[str, Degradation],
        length: int,
        patch: int = 96,
        context: int = 96,
        scale: tuple[float, float] = (0.5, 1.0),
        soften: float = 0.3,
        keep_sharp: Sequence[str] = ("deblur",),
        seed: int = 0,
    ) -> None:
        if not images:
            raise ValueError("no clean images")
        if patch > context:
            raise ValueError(f"patch {patch} is larger than the context {context}")
        self.images, self.degradations = list(images), dict(degradations)
        self.tasks = list(self.degradations)
        self.sampler = TaskSampler(self.tasks)
        self.length, self.patch, self.context = length, patch, context
        self.scale, self.soften, self.keep_sharp, self.seed = scale, soften, set(keep_sharp), seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        task = self.sampler(rng)
        img = self.images[int(rng.integers(len(self.images)))]
        side = min(round(self.context / rng.uniform(*self.scale)), *img.shape[:2])
        square = random_crop(img, max(side, self.context), rng)
        if square.shape[0] != self.context:
            square = np.asarray(Image.fromarray(square).resize((self.context,) * 2, Image.Resampling.BICUBIC))
        clean = augment(square, rng).astype(np.float32) / 255.0
        if rng.random() < self.soften and self.tasks[task] not in self.keep_sharp:
            sigma = rng.uniform(0.4, 1.2)
            clean = gaussian_filter(clean, (sigma, sigma, 0))
        degraded = self.degradations[self.tasks[task]](clean, rng).image
        top, left = rng.integers(0, self.context - self.patch + 1, size=2)
        crop = degraded[top : top + self.patch, left : left + self.patch]
        return {"input": to_tensor(crop), "task": task}


def train_classifier(
    images: Sequence[np.ndarray],
    degradations: Mapping[str, Degradation],
    steps: int = 1500,
    batch_size: int = 32,
    patch_size: int = 96,
    context: int = 96,
    soften: float = 0.3,
    lr: float = 2e-3,
    seed: int = 0,
    workers: int = 0,
    log=None,
    init: DegradationClassifier | None = None,
) -> DegradationClassifier:
    """Train on synthetic degradations of clean photos (see :class:`BlindDataset`); ``init``
    continues from an existing classifier of the same tasks."""
    tasks = list(degradations)
    ds = BlindDataset(images, degradations, steps * batch_size, patch=patch_size, context=context, soften=soften, seed=seed)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DegradationClassifier(tasks)
    if init is not None:
        if init.tasks != tasks:
            raise ValueError(f"init classifier knows {init.tasks}, training for {tasks}")
        model.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step, batch in enumerate(loader):
        loss = F.cross_entropy(model(batch["input"]), batch["task"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    return model.eval()

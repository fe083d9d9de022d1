"""Photos every install has: scikit-image's bundled ones that the shipped model never trained on.

The training photos were ``../shared/photos/train`` plus astronaut, chelsea, coffee and rocket
(MODEL.md); these three are none of them. They make a check anyone can rerun without a download:
MODEL.md's "Bundled photos" figures come from them and a test recomputes those figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .images import save_image

#: colour photographs in scikit-image's data folder, unseen in training (microscopy, a deep-sky
#: image, a fundus photograph: other textures than the training photos, on purpose)
BUNDLED_PHOTOS = ("immunohistochemistry", "hubble_deep_field", "retina")


def write_bundled_photos(folder: str | os.PathLike) -> list[Path]:
    """Write :data:`BUNDLED_PHOTOS` as PNG files into ``folder``; returns their paths."""
    from skimage import data

    folder = Path(folder)
    paths = []
    for name in BUNDLED_PHOTOS:
        rgb = np.asarray(getattr(data, name)())[..., :3].astype(np.float32) / 255.0
        paths.append(save_image(folder / f"{name}.png", rgb))
    return paths

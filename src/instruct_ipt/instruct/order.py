"""In which order several tasks run on one photo: the reverse of how the degradations arose,
amended pair by pair where measurement found the other order better.

Restoring undoes the last degradation first (:data:`PIPELINE_ORDER`): a scene's weather (haze far
away, rain or snow in front of it) is photographed through a shaking camera whose sensor adds
noise, and the file is then JPEG-compressed. Measured with the shipped model
(``benchmarks/composite_order.py``: every pair of degradations, both orders, on tiles of 9
photos, noise sigma 15), that rule loses clearly for four pairs - rain and snow come out better removed *before*
noise or JPEG artifacts (undoing noise or compression first smooths away the streaks and flakes
the derain and desnow biases were trained to find) - holds for nine (blur before rain or snow,
for one) and is within noise for two. One of the nine turns with the noise level: noise + JPEG,
JPEG first by 0.06 dB at sigma 15, is denoise first over all levels (the table holds that). The
measured pairs form a cycle (denoise before deblur, deblur before derain, derain before denoise),
so no single ranking satisfies them all.
:func:`order_tasks` therefore orders each request on its own: the permutation of its tasks that
keeps the most measured gain (:data:`MEASURED_GAINS`), the physical rule deciding between equals
and for tasks the table does not know (another model's own tasks). Checked against every order of
five composites of three degradations (rain + blur + noise, haze + blur + noise, haze + rain + noise,
rain + noise + JPEG, blur + noise + JPEG; noise level drawn per tile; docs/instructions.md): the
best order measured for four, within noise of it for the fifth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

from ..data.degradations import PHYSICAL_ORDER

#: The rule: the reverse of how the degradations arise (jpeg, denoise, deblur, derain, desnow, dehaze).
PIPELINE_ORDER: tuple[str, ...] = tuple(reversed(PHYSICAL_ORDER))

#: ``(first, second) -> dB``: mean PSNR gain of running ``first`` before ``second`` over the other
#: order on a photo carrying both degradations (noise sigma 15), for the pairs where the gain was
#: beyond two standard errors over the tiles *and* held on most photos: 111 tiles of 192 px from 9
#: photos (the 4 validation photos, unseen in training, and 5 training photos - seen with one
#: degradation at a time, never two). The other two pairs (blur + jpeg, haze + jpeg) were within
#: noise and keep the rule's order. Noise + JPEG is the one pair whose verdict turns with the noise
#: level (JPEG first by 0.057 dB at sigma 15, denoise first at 5, 25 and 50), so it was measured
#: with each tile's level drawn as the default noise operator draws it (0-50): denoise first by
#: 1.293 dB. Shipped model; ``python benchmarks/composite_order.py`` made it (docs/instructions.md,
#: "The measured order", has the commands and the table).
MEASURED_GAINS: dict[tuple[str, str], float] = {
    ("denoise", "jpeg"): 1.293,
    ("derain", "jpeg"): 1.956,
    ("desnow", "jpeg"): 0.564,
    ("denoise", "deblur"): 1.344,
    ("derain", "denoise"): 2.662,
    ("desnow", "denoise"): 0.659,
    ("denoise", "dehaze"): 0.427,
    ("deblur", "derain"): 2.524,
    ("deblur", "desnow"): 0.403,
    ("deblur", "dehaze"): 0.037,
    ("derain", "desnow"): 1.427,
    ("derain", "dehaze"): 0.874,
    ("desnow", "dehaze"): 0.465,
}

#: above this many tasks in one request, the rule's order alone (the search is over permutations)
MAX_SEARCHED = 8


def order_tasks(tasks: Sequence[str], gains: Mapping[tuple[str, str], float] = MEASURED_GAINS) -> list[str]:
    """``tasks`` without repeats, in the order to run them: the permutation with the largest sum of
    ``gains`` over its ordered pairs; among equals, :data:`PIPELINE_ORDER`'s own order if it is one,
    else the first in lexicographic order of its positions (unknown tasks rank after the known
    ones, by name)."""
    rank = {t: i for i, t in enumerate(PIPELINE_ORDER)}
    base = sorted(dict.fromkeys(tasks), key=lambda t: (rank.get(t, len(rank)), t))
    if len(base) > MAX_SEARCHED or not any(a in base and b in base for a, b in gains):
        return base

    def kept(order: tuple[str, ...]) -> float:
        return sum(gains.get((a, b), 0.0) for i, a in enumerate(order) for b in order[i + 1:])

    # permutations() yields the base order first, then in lexicographic order of positions, and
    # max() keeps the first of equals
    return list(max(permutations(base), key=kept))

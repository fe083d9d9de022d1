"""Weight analyses of the Instruct-IPT paper, for choosing what to modulate and at which rank.

- :func:`similarity` (Table 2): how similar each layer group of a fine-tuned model stays to its base.
- :func:`rank_energy` (Fig. 2): how much of each modulated layer's fine-tuning delta a given rank holds.

One concept per module: ``groups`` (the paper's layer groups), ``unet`` (stage and forward order of
a layer), ``compare`` (pairing two models' weights), ``similarity``, ``rank_energy``, and ``report``
(tables, CSV, charts, and the runs behind ``instruct-ipt analyze``).
"""

from .compare import config_differences, paired_weights
from .groups import GROUP_PATTERNS, GROUPS, OTHER, group_of, weight_groups
from .rank_energy import RankEnergyRow, as_matrix, cumulative_energy, modulated_layers, rank_energy
from .report import (
    MATPLOTLIB_MISSING,
    analyze_rank_energy,
    analyze_similarity,
    default_names,
    plot_rank_energy,
    plot_similarity,
    rank_energy_csv,
    rank_energy_table,
    require_matplotlib,
    similarity_table,
    write_rank_energy,
    write_similarity,
)
from .similarity import cosine, similarity, weight_similarity
from .unet import UNetPart, locate, network_order, unet_parts

__all__ = [
    "GROUPS",
    "GROUP_PATTERNS",
    "MATPLOTLIB_MISSING",
    "OTHER",
    "RankEnergyRow",
    "UNetPart",
    "analyze_rank_energy",
    "analyze_similarity",
    "as_matrix",
    "config_differences",
    "cosine",
    "cumulative_energy",
    "default_names",
    "group_of",
    "locate",
    "modulated_layers",
    "network_order",
    "paired_weights",
    "plot_rank_energy",
    "plot_similarity",
    "rank_energy",
    "rank_energy_csv",
    "rank_energy_table",
    "require_matplotlib",
    "similarity",
    "similarity_table",
    "unet_parts",
    "weight_groups",
    "weight_similarity",
    "write_rank_energy",
    "write_similarity",
]

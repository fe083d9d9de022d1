"""The paper's weight analyses (``instruct_ipt.analysis``, ``instruct-ipt analyze``) on tiny models,
with expectations that are exact: constructed deltas and changes whose answer is known."""

from __future__ import annotations

import copy
import csv
import dataclasses
import fnmatch
import math
import sys

import numpy as np
import pytest
import torch

from instruct_ipt import InstructIPT
from instruct_ipt.analysis import (
    GROUP_PATTERNS,
    GROUPS,
    MATPLOTLIB_MISSING,
    OTHER,
    as_matrix,
    cosine,
    default_names,
    group_of,
    modulated_layers,
    rank_energy,
    require_matplotlib,
    similarity,
    weight_groups,
    weight_similarity,
)
from instruct_ipt.cli import main
from instruct_ipt.models import IPTConfig
from instruct_ipt.modulation import TARGET_GROUPS, ModulationConfig

TASKS = ["denoise", "deblur"]
ALL_GROUPS = [*GROUPS, OTHER]
#: which of the paper's groups each of the modulation's target groups falls in
TARGET_TO_GROUPS = {
    "sampling": {"up-sampling", "down-sampling"},
    "reduction": {"channel reduction"},
    "output": {"output layer"},
    "qkv": {"QKV"},
    "projection": {"after-attention projection"},
    "ffn": {"FFN"},
}
STAGES = ["encoder 1", "encoder 2", "encoder 3", "bottleneck", "decoder 3", "decoder 2", "decoder 1", "refine", "output"]


def tiny(tasks: list[str] = TASKS, seed: int = 0) -> InstructIPT:
    """A plain tiny model whose every backbone weight is non-zero (random normal), so a negated
    weight differs from the original."""
    torch.manual_seed(seed)
    model = InstructIPT("tiny", tasks=tasks, modulation=None)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def perturbed(model: InstructIPT, seed: int, scale: float = 0.1) -> InstructIPT:
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


# groups --------------------------------------------------------------------------------------------
def test_every_backbone_weight_lands_in_exactly_one_group():
    model = tiny()
    groups = weight_groups(model)
    names = list(model.backbone_state_dict())
    assert list(groups) == ALL_GROUPS
    placed = [n for members in groups.values() for n in members]
    assert sorted(placed) == sorted(names) and len(placed) == len(set(placed))
    for name in names:  # the patterns themselves never overlap
        assert sum(any(fnmatch.fnmatchcase(name, p) for p in pats) for pats in GROUP_PATTERNS.values()) <= 1, name
    assert all(groups[g] for g in GROUPS), [g for g in GROUPS if not groups[g]]
    # what is left over: exactly the channel attention's temperatures
    assert groups[OTHER] and all(n.endswith(".attn.temperature") for n in groups[OTHER])
    assert groups[OTHER] == [n for n in placed if n.endswith(".attn.temperature")]
    assert groups["image embedder"] == ["embed.weight", "embed.bias"]
    assert groups["output layer"] == ["output.weight", "output.bias"]
    assert "refine.blocks.0.ffn.dwconv.weight" in groups["FFN"]  # by function, wherever it sits
    assert "encoders.0.blocks.0.attn.qkv_dw.weight" in groups["QKV"]
    # a modulated model has the same backbone weights under the same names
    assert weight_groups(InstructIPT("tiny", tasks=TASKS)) == groups


def test_every_modulation_target_falls_in_its_paper_group():
    for target, patterns in TARGET_GROUPS.items():
        for name, _ in modulated_layers(IPTConfig.tiny(), patterns):
            assert group_of(f"{name}.weight") in TARGET_TO_GROUPS[target], name


def test_modulated_layers_are_in_network_order_with_their_stage():
    rows = rank_energy(tiny(), perturbed(tiny(), 1))
    names = [r.layer for r in rows]
    assert set(names) == {n for n, _ in InstructIPT("tiny", tasks=TASKS).modulation.layers()}
    runs = [s for i, s in enumerate(r.stage for r in rows) if i == 0 or rows[i - 1].stage != s]
    assert runs == STAGES  # each stage one contiguous run, in forward order
    # forward order, not registration order: down-sampling 0 between encoder 0 and encoder 1 ...
    assert names.index("encoders.0.blocks.0.ffn.reduce") < names.index("downsamples.0.conv") < names.index(
        "encoders.1.blocks.0.attn.qkv")
    # ... and up-sampling, reduction, decoder of each level together
    assert names.index("upsamples.2.conv") < names.index("reduces.2") < names.index("decoders.2.blocks.0.attn.qkv") \
        < names.index("upsamples.1.conv")
    by_name = {r.layer: r for r in rows}
    assert (by_name["downsamples.1.conv"].stage, by_name["downsamples.1.conv"].level) == ("encoder 2", 1)
    assert (by_name["upsamples.1.conv"].stage, by_name["upsamples.1.conv"].level) == ("decoder 2", 1)
    assert (by_name["bottleneck.blocks.0.grid.qkv"].stage, by_name["bottleneck.blocks.0.grid.qkv"].level) == (
        "bottleneck", 3)


# similarity ----------------------------------------------------------------------------------------
def test_identical_models_are_similar_one_in_every_group():
    base = tiny()
    assert similarity(base, copy.deepcopy(base)) == {g: 1.0 for g in ALL_GROUPS}
    untouched = InstructIPT("tiny", tasks=TASKS, modulation=None)  # zero norm biases: equal, so 1.0 too
    assert similarity(untouched, copy.deepcopy(untouched)) == {g: 1.0 for g in ALL_GROUPS}


def test_a_modulated_model_is_compared_by_its_backbone_only():
    base = tiny()
    modulated = InstructIPT("tiny", tasks=TASKS)
    modulated.load_backbone_state_dict(base.backbone_state_dict())
    with torch.no_grad():
        for p in modulated.modulation.task_parameters():
            p.normal_()
    assert similarity(base, modulated) == {g: 1.0 for g in ALL_GROUPS}
    assert similarity(modulated, base) == {g: 1.0 for g in ALL_GROUPS}
    assert all(math.isnan(r.constant_energy) and r.delta_norm == 0 for r in rank_energy(base, modulated))


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_negating_one_group_gives_minus_one_there_and_one_elsewhere(group):
    base = tiny()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for name in weight_groups(ft)[group]:
            ft.backbone.get_parameter(name).neg_()
    result = similarity(base, ft)
    assert result[group] == pytest.approx(-1.0, abs=1e-12)
    assert {g: v for g, v in result.items() if g != group} == {g: 1.0 for g in ALL_GROUPS if g != group}


def test_similarity_is_the_mean_cosine_over_the_group():
    base = tiny()
    ft = copy.deepcopy(base)
    w = base.backbone.embed.weight.detach().double().flatten()
    v = torch.randn(w.shape, dtype=torch.float64)
    v = v - (v @ w) / (w @ w) * w  # orthogonal to w, as long: cos(w, w + v) = 1/sqrt(2)
    v = v * w.norm() / v.norm()
    with torch.no_grad():
        ft.backbone.embed.weight.copy_((w + v).view_as(ft.backbone.embed.weight))
    assert weight_similarity(base, ft)["embed.weight"] == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert similarity(base, ft)["image embedder"] == pytest.approx((1 / math.sqrt(2) + 1.0) / 2, rel=1e-6)  # + bias
    assert cosine(torch.zeros(3), torch.zeros(3)) == 1.0 and cosine(torch.zeros(3), torch.ones(3)) == 0.0
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.0


# refusals ------------------------------------------------------------------------------------------
def test_different_architectures_are_refused_field_by_field():
    base = tiny()
    other = InstructIPT(dataclasses.replace(IPTConfig.tiny(), dim=16, ffn_expansion=3.0), tasks=TASKS, modulation=None)
    for analysis in (similarity, rank_energy):
        with pytest.raises(ValueError, match="different architectures") as e:
            analysis(base, other)
        assert "dim: 8 (base) vs 16 (fine-tuned)" in str(e.value)
        assert "ffn_expansion: 2.0 (base) vs 3.0 (fine-tuned)" in str(e.value)
        assert "heads" not in str(e.value)  # only the fields that differ


def test_different_task_lists_are_refused():
    with pytest.raises(ValueError, match=r"different tasks: \['denoise', 'deblur'\] \(base\) vs \['denoise'\]"):
        similarity(tiny(), tiny(["denoise"]))
    with pytest.raises(ValueError, match="different tasks"):
        rank_energy(tiny(), tiny(["deblur", "denoise"]))


def test_missing_weights_are_refused_by_name():
    ft = tiny()
    ft.backbone.encoders[0].blocks[0].grid = None
    with pytest.raises(ValueError, match="missing from the fine-tuned model: encoders.0.blocks.0.grid.qkv.weight"):
        similarity(tiny(), ft)
    with pytest.raises(ValueError, match="only in the fine-tuned model: encoders.0.blocks.0.grid.qkv.weight"):
        similarity(ft, tiny())


def test_a_different_grid_span_is_no_architecture_change():
    base = tiny()
    ft = copy.deepcopy(base)
    ft.backbone.set_grid_span(32)
    assert similarity(base, ft) == {g: 1.0 for g in ALL_GROUPS}


# rank energy ---------------------------------------------------------------------------------------
def _exact_rank_delta(base: InstructIPT, ft: InstructIPT, layer: str, rank: int, seed: int) -> np.ndarray:
    """Make ``W_ft - W_base`` of ``layer`` exactly rank ``rank``: the base weight zero, the fine-tuned
    one a product of small integer matrices (exact in float32)."""
    w = base.backbone.get_submodule(layer).weight
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-3, 4, (w.shape[0], rank), generator=g).float()
    b = torch.randint(-3, 4, (rank, w[0].numel()), generator=g).float()
    with torch.no_grad():
        base.backbone.get_submodule(layer).weight.zero_()
        ft.backbone.get_submodule(layer).weight.copy_((a @ b).view_as(w))
    delta = (a @ b).double().numpy()
    assert np.linalg.matrix_rank(delta) == rank
    return delta


def _energy(delta: np.ndarray, k: int) -> float:
    s = np.linalg.svd(delta, compute_uv=False)
    return float((s[:k] ** 2).sum() / (s**2).sum())


def test_energy_of_an_exact_rank_delta():
    base = tiny()
    ft = copy.deepcopy(base)
    expand = _exact_rank_delta(base, ft, "bottleneck.blocks.0.ffn.expand", 5, seed=1)  # (256, 64)
    down = _exact_rank_delta(base, ft, "downsamples.1.conv", 2, seed=2)  # 3x3 conv: (8, 16 * 9)
    rows = {r.layer: r for r in rank_energy(base, ft, constant=8, proportional=0.05)}

    r = rows["bottleneck.blocks.0.ffn.expand"]
    assert (r.shape, r.matrix, r.full_rank) == ((256, 64, 1, 1), (256, 64), 64)
    assert (r.constant_rank, r.proportional_rank) == (8, 3)  # round(0.05 * 64)
    assert r.constant_energy == pytest.approx(1.0, abs=1e-12)  # rank 8 >= 5 holds it all
    assert r.proportional_energy == pytest.approx(_energy(expand, 3), rel=1e-10)
    assert r.proportional_energy < 0.999
    assert np.allclose(r.singular_values, np.linalg.svd(expand, compute_uv=False), rtol=1e-10, atol=1e-9)
    assert r.delta_norm == pytest.approx(np.linalg.norm(expand), rel=1e-12)

    d = rows["downsamples.1.conv"]
    assert (d.shape, d.matrix, d.full_rank) == ((8, 16, 3, 3), (8, 144), 8)
    assert (d.constant_rank, d.proportional_rank) == (8, 1)  # max(1, round(0.05 * 8))
    assert d.constant_energy == pytest.approx(1.0, abs=1e-12)
    assert d.proportional_energy == pytest.approx(_energy(down, 1), rel=1e-10)

    unchanged = [row for name, row in rows.items() if name not in ("bottleneck.blocks.0.ffn.expand", "downsamples.1.conv")]
    assert unchanged and all(math.isnan(u.constant_energy) and u.delta_norm == 0 for u in unchanged)
    assert rows["output"].constant_rank == 3  # min(8, full rank 3)

    for constant in (1, 4, 5, 64, 100):  # below the delta's rank: the numpy share; from 5 on: all of it
        r = next(x for x in rank_energy(base, ft, constant=constant) if x.layer == "bottleneck.blocks.0.ffn.expand")
        assert r.constant_rank == min(constant, 64)
        if constant < 5:
            assert r.constant_energy == pytest.approx(_energy(expand, constant), rel=1e-10) and r.constant_energy < 1
        else:
            assert r.constant_energy == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("proportion", [0.05, 0.1, 0.3])
def test_ranks_are_the_modulations_own(proportion):
    rows = rank_energy(tiny(), perturbed(tiny(), 3), constant=8, proportional=proportion)
    model = InstructIPT("tiny", tasks=TASKS, modulation=ModulationConfig(strategy="proportional", proportion=proportion))
    assert {r.layer: r.proportional_rank for r in rows} == {n: layer.rank for n, layer in model.modulation.layers()}
    constant = InstructIPT("tiny", tasks=TASKS, modulation=ModulationConfig(rank=8))
    full = {n: min(layer.weight.shape[0], layer.weight[0].numel()) for n, layer in constant.modulation.layers()}
    assert {r.layer: r.full_rank for r in rows} == full
    assert {r.layer: r.constant_rank for r in rows} == {n: min(layer.rank, full[n]) for n, layer in constant.modulation.layers()}


def test_the_matrix_is_the_modulations_layout():
    model = InstructIPT("tiny", tasks=TASKS)
    for name in ("downsamples.1.conv", "bottleneck.blocks.0.attn.qkv", "output"):
        layer = model.backbone.get_submodule(name)
        with torch.no_grad():
            layer.task_B1.normal_()
        assert torch.equal(as_matrix(layer.delta_weight(0)), layer.task_B1[0] @ layer.task_B2[0])


def test_bad_ranks_are_refused_by_the_modulations_rules():
    with pytest.raises(ValueError, match="rank must be at least 1"):
        rank_energy(tiny(), tiny(), constant=0)
    with pytest.raises(ValueError, match=r"proportion must be in \(0, 1\]"):
        rank_energy(tiny(), tiny(), proportional=0.0)


# the CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def family(tmp_path):
    """A saved plain base and two models "fine-tuned" from it (perturbed copies)."""
    base = tiny()
    base.save_pretrained(tmp_path / "plain")
    for i, task in enumerate(TASKS):
        perturbed(base, seed=10 + i, scale=0.05 * (i + 1)).save_pretrained(tmp_path / task)
    return tmp_path


def test_cli_similarity_writes_table_csv_and_chart(family, capsys):
    out = family / "out"
    argv = ["analyze", "similarity", "--base", str(family / "plain"),
            "--finetuned", str(family / "denoise"), str(family / "deblur"), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| group | denoise | deblur |" in printed and "| FFN |" in printed
    for name in ("similarity.md", "similarity.csv", "similarity.png"):
        assert f"wrote {out / name}" in printed
    assert "| after-attention projection |" in (out / "similarity.md").read_text()
    with open(out / "similarity.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["group", "denoise", "deblur"] and [row[0] for row in table[1:]] == ALL_GROUPS
    base = InstructIPT.from_pretrained(family / "plain")
    expected = similarity(base, InstructIPT.from_pretrained(family / "deblur"))
    assert {row[0]: float(row[2]) for row in table[1:]} == pytest.approx(expected, rel=1e-9)
    assert all(v < 1 for v in expected.values())
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main([*argv[:-2], "--names", "a", "b", "--out", str(family / "named")]) == 0
    assert (family / "named" / "similarity.csv").read_text().startswith("group,a,b\n")


def test_cli_rank_energy_writes_csv_and_a_chart_per_strategy(family, capsys):
    out = family / "rank"
    assert main(["analyze", "rank-energy", "--base", str(family / "plain"), "--finetuned", str(family / "denoise"),
                 "--constant", "4", "--proportional", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stage | layers | constant rank | energy | proportional rank | energy |" in printed
    assert "| bottleneck |" in printed and "| all |" in printed
    for name in ("rank_energy.csv", "rank_energy_constant.png", "rank_energy_proportional.png"):
        assert f"wrote {out / name}" in printed
        assert (out / name).stat().st_size > 0
    with open(out / "rank_energy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == [n for n, _ in modulated_layers(IPTConfig.tiny())]
    assert {int(r["constant_rank"]) for r in rows} == {3, 4}  # the output layer has full rank 3
    assert all(0 < float(r["constant_energy"]) <= 1 + 1e-12 for r in rows)


def test_cli_errors_are_one_line(family, capsys):
    plain, ft = str(family / "plain"), str(family / "denoise")
    assert main(["analyze", "similarity", "--base", plain, "--finetuned", ft, "--names", "a", "b",
                 "--out", str(family / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "instruct-ipt analyze: error: 2 names for 1 fine-tuned models: give one name per model"
    InstructIPT(dataclasses.replace(IPTConfig.tiny(), dim=16), tasks=TASKS, modulation=None).save_pretrained(
        family / "wide")
    assert main(["analyze", "rank-energy", "--base", plain, "--finetuned", str(family / "wide"),
                 "--out", str(family / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dim: 8 (base) vs 16 (fine-tuned)" in err
    assert not (family / "x").exists()


def test_missing_matplotlib_is_one_line_naming_the_extra(family, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"instruct-ipt\[analysis\]"):
        require_matplotlib()
    assert main(["analyze", "similarity", "--base", str(family / "plain"), "--finetuned", str(family / "denoise"),
                 "--out", str(family / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"instruct-ipt analyze: error: {MATPLOTLIB_MISSING}"
    assert not (family / "x").exists()


def test_default_names_are_the_folder_names():
    assert default_names(["runs/denoise/", "deblur"]) == ["denoise", "deblur"]

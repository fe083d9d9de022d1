"""LPIPS / DISTS / FID / IS from local weight files (instruct_ipt.eval.perceptual).

No real weights here (nothing may be downloaded): the tests write random-weight files with exactly the
reference files' keys and shapes, then check the properties that hold for any weights (identity,
symmetry, closed forms) and hand computations of the parts whose constants matter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instruct_ipt.eval.perceptual import (
    DISTS_CHANNELS,
    LPIPS_CHANNELS,
    WEIGHT_FILES,
    FIDInceptionV3,
    PerceptualMetrics,
    VGG16Features,
    _L2Pool,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score_from_logits,
)

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features conv indices


def _perturb(net: nn.Module, seed: int) -> nn.Module:
    """He-normal convolutions and jittered BatchNorm statistics, so activations keep their scale through depth."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.05, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.8, 1.2, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.8, 1.2, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.05, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return net


def _lpips_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(LPIPS_CHANNELS)}


def _dists_state(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(DISTS_CHANNELS)
    return {"alpha": 0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=g),
            "beta": 0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=g)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module's convolutions: on a small shared machine two threads that
    wait on each other are many times slower (the numbers do not depend on it); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    return _perturb(FIDInceptionV3(), 3).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, inception: FIDInceptionV3) -> Path:
    """A complete weights folder in the reference formats (random values)."""
    d = tmp_path_factory.mktemp("metric-weights")
    vgg = _perturb(VGG16Features(), 0).state_dict()
    vgg["classifier.6.bias"] = torch.zeros(1000)  # torchvision's file carries the classifier too: ignored
    torch.save(vgg, d / "vgg16.pth")
    torch.save(_lpips_state(), d / "lpips_vgg.pth")
    torch.save(_dists_state(), d / "dists.pt")
    # an old-style checkpoint without the BatchNorm counters must load too
    state = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, d / "pt_inception-2015-12-05.pth")
    return d


@pytest.fixture(scope="module")
def metrics(weights: Path) -> PerceptualMetrics:
    return PerceptualMetrics(weights)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.random((32, 32, 3)).astype(np.float32)
    return [base, np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1).astype(np.float32),
            rng.random((32, 32, 3)).astype(np.float32), rng.random((40, 36, 3)).astype(np.float32)]


def _copy_folder(src: Path, dst: Path, skip: str = "") -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != skip:
            os.symlink(f, dst / f.name)
    return dst


# -- availability -------------------------------------------------------------------------------------


def test_without_a_folder_every_metric_is_skipped_and_raises():
    m = PerceptualMetrics(None)
    assert m.available == {"lpips": False, "dists": False, "fid": False, "is": False}
    assert set(m.skipped) == set(WEIGHT_FILES)
    assert all("no --metric-weights folder given" in why for why in m.skipped.values())
    img = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="no --metric-weights folder"):
        m.lpips(img, img)
    with pytest.raises(ValueError, match="FID is not available"):
        m.fid([img, img], [img, img])


def test_a_missing_file_is_named_and_only_its_metrics_are_skipped(tmp_path, weights):
    empty = PerceptualMetrics(tmp_path)
    assert not any(empty.available.values())
    assert "vgg16.pth" in empty.skipped["lpips"] and "lpips_vgg.pth" in empty.skipped["lpips"]
    assert "pt_inception-2015-12-05.pth" in empty.skipped["is"]

    m = PerceptualMetrics(_copy_folder(weights, tmp_path / "w", skip="dists.pt"))
    assert m.available == {"lpips": True, "dists": False, "fid": True, "is": True}
    assert set(m.skipped) == {"dists"}
    assert m.skipped["dists"].startswith("no dists.pt in ") and "vgg16.pth" not in m.skipped["dists"]
    img = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="dists.pt"):
        m.dists(img, img)

    with pytest.raises(ValueError, match="not a directory"):
        PerceptualMetrics(tmp_path / "nowhere")


def test_the_release_file_names_are_found_too(tmp_path):
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"")
    (tmp_path / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    m = PerceptualMetrics(tmp_path)
    assert m.available["fid"] and m.available["is"]
    assert not m.available["lpips"] and "lpips_vgg.pth" in m.skipped["lpips"]


# -- architecture ------------------------------------------------------------------------------------


def test_vgg_keys_and_lpips_cut_points():
    vgg = VGG16Features()
    assert set(vgg.state_dict()) == {f"features.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}
    with torch.no_grad():
        feats = vgg.stages(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    assert [f.shape[2] for f in feats] == [32, 16, 8, 4, 2]
    assert all((f >= 0).all() for f in feats)  # taken after the ReLUs


# Written from pytorch-fid's fid_inception_v3 (torchvision Inception3, num_classes=1008, aux_logits=False,
# Mixed_5b..7c patched): block -> its BasicConv2d names.
_A = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool")
_B = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
_C = ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
      "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool")
_D = ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4")
_E = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
      "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")
_INCEPTION_UNITS = (
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    + [f"{b}.{u}" for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d") for u in _A]
    + [f"Mixed_6a.{u}" for u in _B]
    + [f"{b}.{u}" for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e") for u in _C]
    + [f"Mixed_7a.{u}" for u in _D]
    + [f"{b}.{u}" for b in ("Mixed_7b", "Mixed_7c") for u in _E]
)


def test_inception_state_dict_keys_equal_pytorch_fid():
    expected = {"fc.weight", "fc.bias"}
    for unit in _INCEPTION_UNITS:
        expected |= {f"{unit}.conv.weight"}
        expected |= {f"{unit}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    state = FIDInceptionV3().state_dict()
    assert set(state) == expected
    for key in ("Mixed_7c.branch3x3dbl_3b.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.running_var", "fc.bias"):
        assert key in state
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert FIDInceptionV3().Conv2d_1a_3x3.bn.eps == 0.001


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


@pytest.mark.parametrize(("block", "cin", "pool"), [
    ("Mixed_5b", 192, _tf_avg_pool), ("Mixed_6e", 768, _tf_avg_pool),
    ("Mixed_7b", 1280, _tf_avg_pool), ("Mixed_7c", 2048, _max_pool),
])
def test_inception_pool_branches_follow_pytorch_fid(inception, block, cin, pool):
    """The FID patches: average pools that ignore the zero padding, and a max pool in Mixed_7c."""
    net = getattr(inception, block)
    x = torch.rand(1, cin, 5, 5, generator=torch.Generator().manual_seed(0)) + 1
    with torch.no_grad():
        out = net(x)
        want = net.branch_pool(pool(x))
    torch.testing.assert_close(out[:, -want.shape[1]:], want)


def test_inception_resize_is_bilinear_without_aligned_corners():
    x = torch.rand(2, 3, 32, 40)
    torch.testing.assert_close(FIDInceptionV3.resize(x),
                               F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
    assert not torch.allclose(FIDInceptionV3.resize(x),
                              F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True))
    y = torch.rand(1, 3, 299, 299)
    assert torch.equal(FIDInceptionV3.resize(y), F.interpolate(y, size=(299, 299), mode="bilinear"))


class _Stop(Exception):
    pass


def test_inception_sees_the_resized_image_scaled_to_minus_one_one(inception):
    seen = []

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].clone())
        raise _Stop  # the rest of the network is not needed

    x = torch.rand(1, 3, 20, 24)
    handle = inception.Conv2d_1a_3x3.register_forward_pre_hook(grab)
    try:
        with pytest.raises(_Stop):
            inception(x)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], 2 * F.interpolate(x, size=(299, 299), mode="bilinear") - 1)


def test_l2_pool_is_the_normalised_hann_window():
    pool = _L2Pool(2)
    a = np.array([0.5, 1.0, 0.5])
    np.testing.assert_allclose(pool.filter[1, 0].numpy(), np.outer(a, a) / 4)
    out = pool(torch.full((1, 2, 8, 8), 3.0))
    assert out.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(out[0, :, 1:, 1:].numpy(), 3.0, rtol=1e-6)  # interior: a weighted RMS of 3s


# -- LPIPS / DISTS ------------------------------------------------------------------------------------


def test_lpips_zero_for_identical_positive_and_symmetric_otherwise(metrics, images):
    a, b, c = images[0], images[1], images[2]
    assert metrics.lpips(a, a) == 0.0
    ab, ba = metrics.lpips(a, b), metrics.lpips(b, a)
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-6)
    assert metrics.lpips(a, c) > ab  # a fresh random image is further than a noisy copy
    assert metrics.lpips((a * 255).round().astype(np.uint8), a) == pytest.approx(
        metrics.lpips(np.round(a * 255) / 255, a), abs=1e-6)
    with pytest.raises(ValueError, match="size mismatch"):
        metrics.lpips(a, images[3])


def _vgg_by_hand(vgg: dict[str, torch.Tensor], x: torch.Tensor, pool) -> list[torch.Tensor]:
    """relu1_2 and relu2_2 of torchvision's VGG16 from its state dict (features 0, 2, pool, 5, 7)."""
    def conv(h: torch.Tensor, i: int) -> torch.Tensor:
        return F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))

    r12 = conv(conv(x, 0), 2)
    return [r12, conv(conv(pool(r12), 5), 7)]


def test_lpips_first_two_layers_by_hand(tmp_path, weights, images):
    """Only lin0 and lin1 non-zero: LPIPS = sum over relu1_2, relu2_2 of the spatial mean of
    w . (n(f_x) - n(f_y))^2, computed here from the files with lpips's constants, so a wrong scaling,
    layer cut or normalisation shows."""
    folder = _copy_folder(weights, tmp_path / "w", skip="lpips_vgg.pth")
    g = torch.Generator().manual_seed(5)
    lins = {k: torch.zeros_like(v) for k, v in _lpips_state().items()}
    lins["lin0.model.1.weight"] = torch.rand(1, 64, 1, 1, generator=g)
    lins["lin1.model.1.weight"] = torch.rand(1, 128, 1, 1, generator=g)
    torch.save(lins, folder / "lpips_vgg.pth")
    got = PerceptualMetrics(folder).lpips(images[0], images[2])

    vgg = torch.load(weights / "vgg16.pth", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img: np.ndarray) -> list[torch.Tensor]:
        x = (2 * torch.from_numpy(img).permute(2, 0, 1)[None] - 1 - shift) / scale
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                for f in _vgg_by_hand(vgg, x, lambda h: F.max_pool2d(h, 2, 2))]

    want = sum(float(((a - b) ** 2 * w).sum(1).mean())
               for a, b, w in zip(feats(images[0]), feats(images[2]), (lins["lin0.model.1.weight"],
                                                                       lins["lin1.model.1.weight"]), strict=True))
    assert got == pytest.approx(want, rel=1e-5)


def test_dists_near_zero_for_identical_positive_otherwise(metrics, images):
    a, b, c = images[0], images[1], images[2]
    assert abs(metrics.dists(a, a)) < 1e-5
    ab = metrics.dists(a, b)
    assert ab > 1e-4
    assert metrics.dists(a, c) > ab
    assert metrics.dists(b, a) == pytest.approx(ab, rel=1e-6)


def _l2pool_by_hand(h: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16  # hanning(5)[1:-1] outer, normalised
    c = h.shape[1]
    return (F.conv2d(h**2, w.expand(c, 1, 3, 3), stride=2, padding=1, groups=c) + 1e-12).sqrt()


@pytest.mark.parametrize("stage", [0, 2])
def test_dists_one_stage_by_hand(tmp_path, weights, images, stage):
    """alpha/beta non-zero only on one stage (0: the raw image; 2: relu2_2, behind an L2 pool):
    DISTS = 1 - sum_c (a_c S1_c + b_c S2_c) / sum(a + b) with c1 = c2 = 1e-6 - checks the stage list,
    the ImageNet normalisation, the L2 pool, the weight normalisation and both terms."""
    folder = _copy_folder(weights, tmp_path / "w", skip="dists.pt")
    n, lo = sum(DISTS_CHANNELS), sum(DISTS_CHANNELS[:stage])
    width = DISTS_CHANNELS[stage]
    g = torch.Generator().manual_seed(stage)
    alpha, beta = torch.zeros(1, n, 1, 1), torch.zeros(1, n, 1, 1)
    alpha[0, lo:lo + width, 0, 0] = torch.rand(width, generator=g)
    beta[0, lo:lo + width, 0, 0] = torch.rand(width, generator=g)
    torch.save({"alpha": alpha, "beta": beta}, folder / "dists.pt")

    vgg = torch.load(weights / "vgg16.pth", weights_only=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feature(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        f = x if stage == 0 else _vgg_by_hand(vgg, (x - mean) / std, _l2pool_by_hand)[stage - 1]
        return f[0].double().numpy().reshape(width, -1)

    x, y = feature(images[0]), feature(images[1])
    mx, my = x.mean(1), y.mean(1)
    vx, vy = x.var(1), y.var(1)
    cov = (x * y).mean(1) - mx * my
    s1 = (2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6)
    s2 = (2 * cov + 1e-6) / (vx + vy + 1e-6)
    a, b = alpha[0, lo:lo + width, 0, 0].double().numpy(), beta[0, lo:lo + width, 0, 0].double().numpy()
    want = 1 - (a @ s1 + b @ s2) / (a.sum() + b.sum())
    assert PerceptualMetrics(folder).dists(images[0], images[1]) == pytest.approx(want, abs=1e-5)


# -- bad files ------------------------------------------------------------------------------------------


class _NotWeights:
    pass


@pytest.mark.parametrize(("name", "edit", "key"), [
    ("lpips_vgg.pth", lambda s: {("lin2.weight" if k == "lin2.model.1.weight" else k): v for k, v in s.items()},
     "lin2.model.1.weight"),
    ("dists.pt", lambda s: {**s, "alpha": torch.zeros(1, 1474, 1, 1)}, "alpha"),
    ("vgg16.pth", lambda s: {k: v for k, v in s.items() if k != "features.28.bias"}, "features.28.bias"),
    ("pt_inception-2015-12-05.pth", lambda s: {**s, "AuxLogits.fc.bias": torch.zeros(1008)}, "AuxLogits.fc.bias"),
])
def test_a_bad_key_is_a_value_error_naming_file_and_key(tmp_path, weights, images, name, edit, key):
    folder = _copy_folder(weights, tmp_path / "w", skip=name)
    torch.save(edit(torch.load(weights / name, weights_only=True)), folder / name)
    m = PerceptualMetrics(folder)  # lazily: the file is read when its metric first runs
    assert all(m.available.values())
    with pytest.raises(ValueError, match=rf"{name}.*{key}"):
        m.load_all()
    call = {"lpips_vgg.pth": lambda: m.lpips(images[0], images[1]), "dists.pt": lambda: m.dists(images[0], images[1]),
            "vgg16.pth": lambda: m.dists(images[0], images[1]),
            "pt_inception-2015-12-05.pth": lambda: m.inception_score(images[:2])}[name]
    with pytest.raises(ValueError, match=rf"{name}.*{key}"):
        call()


def test_a_file_with_code_or_non_tensors_is_refused(tmp_path, weights, images):
    folder = _copy_folder(weights, tmp_path / "w", skip="dists.pt")
    torch.save({"alpha": _NotWeights(), "beta": torch.zeros(1)}, folder / "dists.pt")
    with pytest.raises(ValueError, match="dists.pt.*cannot be read"):  # weights_only=True refuses the object
        PerceptualMetrics(folder).dists(images[0], images[1])
    torch.save({"alpha": "text", "beta": torch.zeros(1)}, folder / "dists.pt")
    with pytest.raises(ValueError, match="'alpha' is a str"):
        PerceptualMetrics(folder).dists(images[0], images[1])


# -- FID ----------------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # ||mu1-mu2||^2 = 1 + 0 + 6.25; per axis v1 + v2 - 2 sqrt(v1 v2): 10-6, 5-4, 0.5-0.5
    want = 7.25 + 4 + 1 + 0
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, abs=1e-10)


def test_fid_of_samples_from_known_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s1 = q @ np.diag([2.0, 1.0, 0.5, 0.25]) @ q.T
    s2 = 2.25 * s1  # commuting: Tr sqrt(S1 S2) = 1.5 Tr S1
    mu1, mu2 = np.zeros(4), np.array([1.0, -1.0, 0.5, 0.0])
    want = 2.25 + (1 + 2.25 - 2 * 1.5) * np.trace(s1)
    n = 40000
    x1 = rng.multivariate_normal(mu1, s1, size=n)
    x2 = rng.multivariate_normal(mu2, s2, size=n)
    assert fid_from_features(x1, x2) == pytest.approx(want, rel=0.03)
    m1, c1 = feature_statistics(x1)
    m2, c2 = feature_statistics(x2)
    assert fid_from_features(x1, x2) == pytest.approx(frechet_distance(m1, c1, m2, c2), rel=1e-10)


def test_fid_with_fewer_images_than_dimensions_equals_the_full_square_root():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(6, 40)), rng.normal(0.3, 1.5, size=(9, 40))
    full = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    # exact: Tr sqrt(S1 S2) = nuclear norm of X1c X2c^T / sqrt((n1 - 1)(n2 - 1))
    c1, c2 = f1 - f1.mean(0), f2 - f2.mean(0)
    nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt(5 * 8)
    d = f1.mean(0) - f2.mean(0)
    exact = d @ d + np.trace(np.cov(f1, rowvar=False)) + np.trace(np.cov(f2, rowvar=False)) - 2 * nuclear
    assert fid_from_features(f1, f2) == pytest.approx(exact, rel=1e-7)
    assert full == pytest.approx(exact, rel=1e-5)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(f1[:1], f2)


def _inception_sets(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    # Inception at 299x299 is the slow part on a CPU: two sets of two images (one of them 40x36, one set a
    # repeated image), shared by the FID and IS tests through the metrics' feature cache
    return [images[0], images[3]], [images[0], images[0].copy()]


def test_fid_through_the_network(metrics, images):
    a, same = _inception_sets(images)
    assert abs(metrics.fid(a, list(a))) < 1e-3
    d = metrics.fid(a, same)
    assert d > 0
    assert metrics.fid(same, a) == pytest.approx(d, rel=1e-6)  # sqrtm of a singular product: ~1e-9 noise
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.fid(images[:1], images)


# -- IS -----------------------------------------------------------------------------------------------


def test_inception_score_from_logits():
    logits = np.tile(np.random.default_rng(3).normal(size=(1, 1008)), (5, 1))
    assert inception_score_from_logits(logits) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert inception_score_from_logits(logits, splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)
    sure = np.array([[60.0, 0.0], [0.0, 60.0]])  # two confident, different classes: IS -> 2
    assert inception_score_from_logits(sure)[0] == pytest.approx(2.0, rel=1e-9)
    # half-sure rows p = (3/4, 1/4) and (1/4, 3/4): exp(KL to the uniform marginal) = exp(log 2 - H(p))
    half = np.log(np.array([[3.0, 1.0], [1.0, 3.0]]))
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert inception_score_from_logits(half)[0] == pytest.approx(np.exp(np.log(2) - h), rel=1e-12)
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_logits(logits, splits=6)


def test_inception_score_through_the_network(metrics, weights, images):
    a, same = _inception_sets(images)
    mean, std = metrics.inception_score(same)
    assert mean == pytest.approx(1.0, abs=1e-9) and std == 0.0
    assert metrics.inception_score(a)[0] > 1.0
    # IS reads torch-fidelity's logits_unbiased: the pool features times fc.weight, without fc.bias
    pool, logits = metrics._outputs(a, "generated")  # cached by the call above
    fc = torch.load(weights / "pt_inception-2015-12-05.pth", weights_only=True)
    assert fc["fc.bias"].abs().max() > 0.01
    np.testing.assert_allclose(logits, pool @ fc["fc.weight"].double().numpy().T, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(a, splits=3)

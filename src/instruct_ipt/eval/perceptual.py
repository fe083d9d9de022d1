"""LPIPS (VGG), DISTS, FID and Inception Score from metric-network weights the user keeps locally.

The diffusion ablation (the paper's Table 8) reports LPIPS, DISTS, FID and IS. Each needs a network
trained elsewhere; this module never downloads anything: it reads the weights from one folder the
user fills themselves (``--metric-weights DIR``) on a machine with internet, and a metric whose files
are absent is *skipped* with a one-line reason instead of failing the run.

Files in the weights folder (the name in the first column, or one of the alternatives in brackets):

``vgg16.pth`` (``vgg16-397923af.pth``, ``vgg16.safetensors``)
    torchvision's VGG16 ImageNet weights (``VGG16_Weights.IMAGENET1K_V1``), the file
    https://download.pytorch.org/models/vgg16-397923af.pth. Keys ``features.0.weight`` ..
    ``features.28.bias``; the ``classifier.*`` keys are ignored. Needed by LPIPS and DISTS, which
    both load exactly this file through torchvision.
``lpips_vgg.pth`` (``lpips_vgg.safetensors``)
    The linear calibration of LPIPS v0.1 for VGG: ``lpips/weights/v0.1/vgg.pth`` of the ``lpips``
    package (pip ``lpips``, or github.com/richzhang/PerceptualSimilarity), renamed. Keys
    ``lin0.model.1.weight`` .. ``lin4.model.1.weight``, 1x1 convolutions without bias of shapes
    ``(1, C, 1, 1)`` for C = 64, 128, 256, 512, 512.
``dists.pt`` (``dists.safetensors``)
    DISTS's learned weights: ``DISTS_pytorch/weights.pt`` of the ``DISTS_pytorch`` package (pip
    ``DISTS-pytorch``, or github.com/dingkeyan93/DISTS), renamed. Keys ``alpha`` and ``beta``, each
    ``(1, 1475, 1, 1)`` (1475 = 3 + 64 + 128 + 256 + 512 + 512 channels).
``pt_inception-2015-12-05.pth`` (``pt_inception-2015-12-05-6726825d.pth``, ``.safetensors``)
    The FID Inception-v3 (TensorFlow's 2015-12-05 graph ported to PyTorch) from pytorch-fid's release
    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth.
    Keys like ``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_var``, ``fc.weight``
    ``(1008, 2048)``; the BatchNorm ``num_batches_tracked`` entries may be present or not.
    torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` has the same keys. Used by FID
    and IS.

Every file is read with ``torch.load(..., weights_only=True)`` (or safetensors), so a file can carry
tensors only, never code; a missing, unexpected or wrongly shaped key is a ``ValueError`` naming the
file and the key, raised when the metric's network is first built (lazily, on first use; call
:meth:`PerceptualMetrics.load_all` to check every file up front).

What each metric computes (and which reference it reproduces, given the same weights):

* LPIPS-VGG v0.1 (``lpips.LPIPS(net="vgg")(x, y, normalize=True)``): [0, 1] -> [-1, 1], the
  ScalingLayer ``(x - shift) / scale`` with shift (-.030, -.088, -.188) and scale (.458, .448,
  .450), VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each unit-normalised
  along channels (``x / (||x|| + 1e-10)``), squared difference, the 1x1 linear layer, spatial mean,
  summed over the five layers. Lower is better; identical images give exactly 0.
* DISTS (``DISTS_pytorch.DISTS()``): ImageNet mean/std normalisation, VGG16 with its four inner max pools
  replaced by an L2 pool (a 3x3 Hann window ``hanning(5)[1:-1]`` outer product, normalised; stride
  2, padding 1, ``sqrt(conv(x^2) + 1e-12)``), six stages (the raw [0, 1] image and the five relu
  outputs), alpha and beta divided by their joint sum, structure ``(2 mu_x mu_y + c1) / (mu_x^2 +
  mu_y^2 + c1)`` and texture ``(2 cov + c2) / (var_x + var_y + c2)`` with c1 = c2 = 1e-6, score
  ``1 - sum``. The per-channel statistics and the weights are taken in float64 (the reference uses float32; the
  difference is float32 rounding). The reference's demo script resizes images whose short side
  exceeds 256 px to 256 before scoring; that is its preprocessing, not part of the metric, and is
  not done here. Lower is better.
* FID (pytorch-fid): the FID variant of Inception-v3 (FIDInceptionA/C/E_1 with
  ``count_include_pad=False`` average pools, FIDInceptionE_2 with a max pool), bilinear resize to
  299x299 (``align_corners=False``), [0, 1] -> [-1, 1], BatchNorm eps 0.001, the 2048-d final
  average-pool features in float64, ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` with
  ``scipy.linalg.sqrtm`` (real part; 1e-6 added to the covariance diagonals if the product's root is
  not finite; an imaginary diagonal above 1e-3 is an error), covariances with ``np.cov`` (N - 1).
  See :func:`fid_from_features` for how the square root is taken when there are fewer images than
  feature dimensions (mathematically identical, far faster).
* IS (torch-fidelity's ``isc`` with the same network): softmax of the *unbiased* logits (the 2048-d
  pool features times ``fc.weight``, without ``fc.bias``, as torch-fidelity's ``logits_unbiased``),
  in float64, ``exp(mean KL(p(y|x) || p(y)))`` per split, mean and population std over splits, the
  samples shuffled with ``RandomState(2020)`` first as torch-fidelity does (irrelevant for one
  split). The images go through pytorch-fid's preprocessing above; torch-fidelity instead feeds
  uint8 images through a TensorFlow-1-style resize and ``(x - 128) / 128``, so IS agrees with
  torch-fidelity up to that input difference (exactly at 299x299 apart from the 128-vs-127.5 scale).

Images are ``(H, W, 3)`` RGB arrays, float in [0, 1] (uint8 is accepted and divided by 255).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

__all__ = [
    "DISTS_CHANNELS",
    "LPIPS_CHANNELS",
    "WEIGHT_FILES",
    "FIDInceptionV3",
    "PerceptualMetrics",
    "VGG16Features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_score_from_logits",
]

VGG_FILE = "vgg16.pth"
LPIPS_FILE = "lpips_vgg.pth"
DISTS_FILE = "dists.pt"
INCEPTION_FILE = "pt_inception-2015-12-05.pth"

WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "lpips": (VGG_FILE, LPIPS_FILE),
    "dists": (VGG_FILE, DISTS_FILE),
    "fid": (INCEPTION_FILE,),
    "is": (INCEPTION_FILE,),
}

# The release files keep their upstream names, so a user who copies them without renaming is found too.
_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    VGG_FILE: ("vgg16-397923af.pth", "vgg16.safetensors"),
    LPIPS_FILE: ("lpips_vgg.safetensors",),
    DISTS_FILE: ("dists.safetensors",),
    INCEPTION_FILE: ("pt_inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05.safetensors"),
}

_WHAT: dict[str, str] = {
    VGG_FILE: "torchvision's VGG16 ImageNet weights, vgg16-397923af.pth",
    LPIPS_FILE: "the lpips package's weights/v0.1/vgg.pth",
    DISTS_FILE: "DISTS_pytorch's weights.pt",
    INCEPTION_FILE: "pytorch-fid's FID Inception weights, pt_inception-2015-12-05-6726825d.pth",
}

METRICS = ("lpips", "dists", "fid", "is")

# Channels of the VGG16 features LPIPS compares (relu1_2 .. relu5_3); DISTS adds the raw image first.
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
DISTS_CHANNELS: tuple[int, ...] = (3, *LPIPS_CHANNELS)

# lpips.pretrained_networks.vgg16 slices torchvision's ``features`` at these indices (after each ReLU).
_VGG_CUTS = (3, 8, 15, 22, 29)
_VGG_POOLS = (4, 9, 16, 23)
_VGG_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_EPS = 1e-10
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_DISTS_C1 = 1e-6
_DISTS_C2 = 1e-6

_INCEPTION_SIZE = 299
_INCEPTION_BATCH = 16
_IS_SHUFFLE_SEED = 2020  # torch-fidelity's default rng_seed


# ---------------------------------------------------------------------------------------------------
# Networks: plain modules whose state-dict keys equal the reference files', so the files load as they are.


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (indices 0..30), so ``features.N.*`` keys load unchanged."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(v)
        self.features = nn.Sequential(*layers)

    def stages(self, x: torch.Tensor, pools: Sequence[nn.Module] | None = None) -> list[torch.Tensor]:
        """relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; ``pools`` replace the four inner max pools (DISTS)."""
        out = []
        for idx in range(_VGG_CUTS[-1] + 1):
            layer = self.features[idx]
            if pools is not None and idx in _VGG_POOLS:
                layer = pools[_VGG_POOLS.index(idx)]
            x = layer(x)
            if idx in _VGG_CUTS:
                out.append(x)
        return out


class _L2Pool(nn.Module):
    """DISTS's L2 pooling: a normalised 3x3 Hann window over squared activations, stride 2.

    It replaces max pooling because it is shift-tolerant (antialiased), which DISTS's texture term needs.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class _BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001, TensorFlow's), ReLU: Inception's unit."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool does not count the zero padding (pytorch-fid's FID patch)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """pytorch-fid's FIDInceptionA."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = _BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = _BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b5, b3, bp], 1)


class _InceptionB(nn.Module):
    """torchvision's InceptionB (Mixed_6a), unchanged in pytorch-fid."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class _InceptionC(nn.Module):
    """pytorch-fid's FIDInceptionC."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b7, bd, bp], 1)


class _InceptionD(nn.Module):
    """torchvision's InceptionD (Mixed_7a), unchanged in pytorch-fid."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = _BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class _InceptionE(nn.Module):
    """pytorch-fid's FIDInceptionE_1 (``max_pool=False``) and FIDInceptionE_2 (``max_pool=True``).

    The FID graph pools with a max in its last block (Mixed_7c) where Inception-v3 averages; FID is
    defined by that graph, so the quirk is kept.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = _BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``fid_inception_v3()`` (1008 classes, no aux head) as used by ``InceptionV3([3])``.

    :meth:`forward` takes [0, 1] images and returns the 2048-d pool features (FID) and the unbiased
    1008-way logits (IS, torch-fidelity's ``logits_unbiased``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    @staticmethod
    def resize(x: torch.Tensor) -> torch.Tensor:
        """pytorch-fid's bilinear resize to 299x299 (``align_corners=False``); a no-op at 299x299 already."""
        if tuple(x.shape[2:]) == (_INCEPTION_SIZE, _INCEPTION_SIZE):
            return x  # what interpolate returns there anyway (scale 1: every weight is 1 or 0)
        return F.interpolate(x, size=(_INCEPTION_SIZE, _INCEPTION_SIZE), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (N, 3, H, W) in [0, 1] -> (pool features (N, 2048), unbiased logits (N, 1008))."""
        x = 2 * self.resize(x) - 1  # resize first, then [0, 1] -> [-1, 1], in pytorch-fid's order
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return pool, pool.mm(self.fc.weight.T)


# ---------------------------------------------------------------------------------------------------
# Loading: tensors only, every key checked, so a wrong file fails loudly instead of scoring garbage.


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is reported the same way: a bad weights file
        raise ValueError(f"{path}: cannot be read as a tensor file ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        # a wrong file is a bad value of the folder, reported like every other bad file (ValueError)
        raise ValueError(  # noqa: TRY004
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: key {key!r} is a {type(value).__name__}, not a tensor")  # noqa: TRY004
        out[str(key)] = value
    return out


def _checked(path: Path, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
             optional: frozenset[str] = frozenset(), ignored_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The expected keys of ``tensors``, or a ValueError naming the first missing, misshapen or unknown key."""
    for key, shape in expected.items():
        if key not in tensors:
            if key in optional:
                continue
            raise ValueError(f"{path}: missing key {key!r} (is this the right file?)")
        if tensors[key].shape != shape:
            raise ValueError(f"{path}: key {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}")
    for key in tensors:
        if key not in expected and not key.startswith(ignored_prefixes):
            raise ValueError(f"{path}: unexpected key {key!r} (is this the right file?)")
    return {k: v for k, v in tensors.items() if k in expected}


def _load_module(module: nn.Module, path: Path, ignored_prefixes: tuple[str, ...] = ()) -> None:
    state = module.state_dict()
    expected = {k: v.shape for k, v in state.items()}
    optional = frozenset(k for k in state if k.endswith("num_batches_tracked"))
    tensors = _checked(path, _load_tensors(path), expected, optional, ignored_prefixes)
    for key in optional - tensors.keys():
        tensors[key] = state[key]
    module.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=True)


# ---------------------------------------------------------------------------------------------------
# FID and IS from features: plain numpy, testable without any network.


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, N - 1) of (N, D) features, in float64, as pytorch-fid."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got an array of shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """``Tr sqrtm(S1 S2)`` exactly as pytorch-fid's calculate_frechet_distance takes it."""
    with warnings.catch_warnings():
        # the product is singular whenever a set has fewer images than dimensions; that is expected and
        # handled below (pytorch-fid calls sqrtm with disp=False, which is silent too)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(S1 S2)")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))``: pytorch-fid's ``calculate_frechet_distance``.

    Kept literal (the full D x D square root) for statistics that come without their features.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID: statistics of different sizes ({mu1.shape} vs {mu2.shape})")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2, eps))


def fid_from_features(features1: np.ndarray, features2: np.ndarray, eps: float = 1e-6) -> float:
    """FID of two (N, D) feature sets, equal to :func:`frechet_distance` of their statistics.

    With fewer images than dimensions (N1 + N2 - 2 < D, the usual case for an ablation: D = 2048),
    both covariances live in the span of the centred features, and ``Tr sqrtm(S1 S2)`` is invariant
    under an orthonormal change of basis, so the square root is taken (with ``scipy.linalg.sqrtm``,
    same eps fallback and imaginary-part check) on the two covariances restricted to that span: a
    K x K problem instead of 2048 x 2048 (a minute of CPU per call). The result is the same number up
    to rounding (in fact closer to the exact value: the full root of a singular product is noisy).
    """
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"FID: feature sets of different widths ({mu1.shape[0]} vs {mu2.shape[0]})")
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    n1, n2, dims = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 + n2 - 2 >= dims:
        return frechet_distance(mu1, sigma1, mu2, sigma2, eps)
    centred = np.concatenate([f1 - mu1, f2 - mu2])
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    tol = (s.max() if s.size else 0.0) * max(centred.shape) * np.finfo(np.float64).eps
    basis = vt[s > tol].T  # (D, K), orthonormal columns spanning both covariances' ranges
    diff = mu1 - mu2
    trace = np.trace(sigma1) + np.trace(sigma2)
    if basis.shape[1] == 0:
        return float(diff @ diff + trace)
    a1, a2 = basis.T @ sigma1 @ basis, basis.T @ sigma2 @ basis
    return float(diff @ diff + trace - 2 * _trace_sqrt_product(a1, a2, eps))


def inception_score_from_logits(logits: np.ndarray | torch.Tensor, splits: int = 1,
                                shuffle_seed: int | None = _IS_SHUFFLE_SEED) -> tuple[float, float]:
    """torch-fidelity's ``isc_features_to_metric``: (mean, std) of ``exp E[KL(p(y|x) || p(y))]`` over splits."""
    z = torch.as_tensor(np.asarray(logits)).double()
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"IS needs (N, classes) logits, got shape {tuple(z.shape)}")
    n = z.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"IS: splits must be between 1 and the number of images ({n}), got {splits}")
    if shuffle_seed is not None:
        z = z[np.random.RandomState(shuffle_seed).permutation(n), :]
    p, log_p = z.softmax(dim=1), z.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------------


def _as_image(img: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: expected float images in [0, 1] (or uint8), got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: the image has NaN or infinite values")
    if a.size and a.max() > 2.0:
        raise ValueError(f"{what}: values up to {a.max():.1f}; expected [0, 1] (a 0-255 image?)")
    return a


class PerceptualMetrics:
    """LPIPS, DISTS, FID and IS from the weights in ``weights_dir`` (see the module docstring).

    A metric whose files are not in the folder is not available: ``available[m]`` is False and
    ``skipped[m]`` says which file is missing; calling it raises ValueError with that reason.
    Networks are built on first use, in eval mode, and run under ``torch.no_grad()``.
    """

    def __init__(self, weights_dir: str | os.PathLike | None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            raise ValueError(f"the metric-weights folder {self.weights_dir} is not a directory")
        self.available: dict[str, bool] = {}
        self.skipped: dict[str, str] = {}
        self._paths: dict[str, Path] = {}
        for metric in METRICS:
            missing = []
            for name in WEIGHT_FILES[metric]:
                path = self._find(name)
                if path is None:
                    missing.append(name)
                else:
                    self._paths[name] = path
            self.available[metric] = not missing
            if self.weights_dir is None:
                self.skipped[metric] = "no --metric-weights folder given"
            elif missing:
                self.skipped[metric] = "; ".join(f"no {n} in {self.weights_dir} ({_WHAT[n]})" for n in missing)
        self._vgg: VGG16Features | None = None
        self._lpips_lins: list[torch.Tensor] | None = None
        self._dists_weights: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._l2pools: nn.ModuleList | None = None
        self._inception: FIDInceptionV3 | None = None
        self._feature_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _find(self, name: str) -> Path | None:
        if self.weights_dir is None:
            return None
        for candidate in (name, *_ALTERNATIVES.get(name, ())):
            path = self.weights_dir / candidate
            if path.is_file():
                return path
        return None

    def _require(self, metric: str) -> None:
        if not self.available[metric]:
            raise ValueError(f"{metric.upper()} is not available: {self.skipped[metric]}")

    def load_all(self) -> None:
        """Build every available network now, so a bad file fails before a long run rather than after."""
        if self.available["lpips"]:
            self._lpips_net()
        if self.available["dists"]:
            self._dists_net()
        if self.available["fid"] or self.available["is"]:
            self._inception_net()

    # -- networks (lazy) ---------------------------------------------------------------------------

    def _vgg_net(self) -> VGG16Features:
        if self._vgg is None:
            vgg = VGG16Features()
            _load_module(vgg, self._paths[VGG_FILE], ignored_prefixes=("classifier.",))
            self._vgg = vgg.to(self.device).eval().requires_grad_(False)
        return self._vgg

    def _lpips_net(self) -> tuple[VGG16Features, list[torch.Tensor]]:
        vgg = self._vgg_net()
        if self._lpips_lins is None:
            path = self._paths[LPIPS_FILE]
            expected = {f"lin{i}.model.1.weight": torch.Size((1, c, 1, 1)) for i, c in enumerate(LPIPS_CHANNELS)}
            tensors = _checked(path, _load_tensors(path), expected)
            self._lpips_lins = [tensors[k].float().to(self.device) for k in expected]
        return vgg, self._lpips_lins

    def _dists_net(self) -> tuple[VGG16Features, nn.ModuleList, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        vgg = self._vgg_net()
        if self._dists_weights is None or self._l2pools is None:
            path = self._paths[DISTS_FILE]
            shape = torch.Size((1, sum(DISTS_CHANNELS), 1, 1))
            tensors = _checked(path, _load_tensors(path), {"alpha": shape, "beta": shape})
            alpha, beta = tensors["alpha"].double(), tensors["beta"].double()
            total = alpha.sum() + beta.sum()  # DISTS normalises both weight sets by their joint sum
            split = list(DISTS_CHANNELS)
            self._dists_weights = ([a.to(self.device) for a in torch.split(alpha / total, split, dim=1)],
                                   [b.to(self.device) for b in torch.split(beta / total, split, dim=1)])
            self._l2pools = nn.ModuleList(_L2Pool(c) for c in LPIPS_CHANNELS[:4]).to(self.device)
        return vgg, self._l2pools, self._dists_weights

    def _inception_net(self) -> FIDInceptionV3:
        if self._inception is None:
            net = FIDInceptionV3()
            _load_module(net, self._paths[INCEPTION_FILE])
            self._inception = net.to(self.device).eval().requires_grad_(False)
        return self._inception

    def _tensor(self, img: np.ndarray, what: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(_as_image(img, what))).permute(2, 0, 1)[None].to(self.device)

    def _pair(self, pred: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._tensor(pred, "prediction"), self._tensor(target, "target")
        if x.shape != y.shape:
            raise ValueError(f"size mismatch: prediction {tuple(x.shape[2:])} vs target {tuple(y.shape[2:])}")
        if min(x.shape[2:]) < 16:
            raise ValueError(f"images of {tuple(x.shape[2:])} px are too small for VGG16's five stages (16 px minimum)")
        return x, y

    # -- metrics ------------------------------------------------------------------------------------

    @torch.no_grad()
    def lpips(self, pred: np.ndarray, target: np.ndarray) -> float:
        """LPIPS-VGG v0.1 distance of two (H, W, 3) images in [0, 1]; lower is better, 0 for identical."""
        self._require("lpips")
        vgg, lins = self._lpips_net()
        x, y = self._pair(pred, target)
        shift = torch.tensor(_LPIPS_SHIFT, device=self.device).view(1, 3, 1, 1)
        scale = torch.tensor(_LPIPS_SCALE, device=self.device).view(1, 3, 1, 1)
        # one image at a time, as lpips does: features of identical images are then bit-identical
        fx = vgg.stages(((2 * x - 1) - shift) / scale)
        fy = vgg.stages(((2 * y - 1) - shift) / scale)
        total = torch.zeros((), device=self.device)
        for a, b, w in zip(fx, fy, lins, strict=True):
            a = a / (torch.sqrt(torch.sum(a**2, dim=1, keepdim=True)) + _LPIPS_EPS)
            b = b / (torch.sqrt(torch.sum(b**2, dim=1, keepdim=True)) + _LPIPS_EPS)
            total = total + F.conv2d((a - b) ** 2, w).mean()
        return float(total)

    @torch.no_grad()
    def dists(self, pred: np.ndarray, target: np.ndarray) -> float:
        """DISTS of two (H, W, 3) images in [0, 1]; lower is better, ~0 for identical."""
        self._require("dists")
        vgg, pools, (alphas, betas) = self._dists_net()
        x, y = self._pair(pred, target)
        mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        fx = [x, *vgg.stages((x - mean) / std, pools)]
        fy = [y, *vgg.stages((y - mean) / std, pools)]
        structure = texture = torch.zeros((), dtype=torch.float64, device=self.device)
        for a, b, alpha, beta in zip(fx, fy, alphas, betas, strict=True):
            a, b = a.double(), b.double()
            ma, mb = a.mean([2, 3], keepdim=True), b.mean([2, 3], keepdim=True)
            s1 = (2 * ma * mb + _DISTS_C1) / (ma**2 + mb**2 + _DISTS_C1)
            va, vb = ((a - ma) ** 2).mean([2, 3], keepdim=True), ((b - mb) ** 2).mean([2, 3], keepdim=True)
            cov = (a * b).mean([2, 3], keepdim=True) - ma * mb
            s2 = (2 * cov + _DISTS_C2) / (va + vb + _DISTS_C2)
            structure = structure + (alpha * s1).sum()
            texture = texture + (beta * s2).sum()
        return float(1 - (structure + texture))

    @torch.no_grad()
    def _inception_outputs(self, images: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2048) pool features and (N, 1008) unbiased logits, float64."""
        net = self._inception_net()
        pools, logits, batch = [], [], []

        def flush() -> None:
            p, z = net(torch.cat(batch))
            pools.append(p.double().cpu().numpy())
            logits.append(z.double().cpu().numpy())
            batch.clear()

        for i, img in enumerate(images):
            t = self._tensor(img, f"{what} image {i}")
            # resize one by one, so images of different sizes can share a batch (bilinear is per-image)
            batch.append(FIDInceptionV3.resize(t))
            if len(batch) == _INCEPTION_BATCH:
                flush()
        if batch:
            flush()
        if not pools:
            return np.zeros((0, 2048)), np.zeros((0, 1008))
        return np.concatenate(pools), np.concatenate(logits)

    def _outputs(self, images: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_inception_outputs`, remembered for the last few sets: the real set is usually the same
        across calls (every arm against the same views), and FID and IS read the same generated set."""
        digest = hashlib.sha256()
        for img in images:
            a = np.ascontiguousarray(img)
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(a.tobytes())
        key = digest.hexdigest()
        if key not in self._feature_cache:
            if len(self._feature_cache) >= 4:
                self._feature_cache.pop(next(iter(self._feature_cache)))
            self._feature_cache[key] = self._inception_outputs(images, what)
        return self._feature_cache[key]

    def fid(self, generated: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> float:
        """FID between two image sets (pytorch-fid's network and formula); lower is better."""
        self._require("fid")
        for what, images in (("generated", generated), ("real", real)):
            if len(images) < 2:
                raise ValueError(f"FID needs at least 2 images per set; the {what} set has {len(images)}")
        return fid_from_features(self._outputs(generated, "generated")[0], self._outputs(real, "real")[0])

    def inception_score(self, generated: Sequence[np.ndarray], splits: int = 1) -> tuple[float, float]:
        """Inception Score (mean, std over ``splits``) of the generated images; higher is better."""
        self._require("is")
        if len(generated) < 1:
            raise ValueError("IS needs at least one image")
        if not 1 <= splits <= len(generated):
            raise ValueError(f"IS: splits must be between 1 and the number of images ({len(generated)}), got {splits}")
        _, logits = self._outputs(generated, "generated")
        return inception_score_from_logits(logits, splits)

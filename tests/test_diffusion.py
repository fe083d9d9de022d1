"""The diffusion extension (issue 20): masked views, training arms with exact resume, DDIM sampling,
the CLI, and ``ablate table8`` on a very small U-Net."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from instruct_ipt.cli import main
from instruct_ipt.data.images import load_image, save_image
from instruct_ipt.diffusion.data import PRETRAIN, MaskedViews, load_photos, pretrain_mask
from instruct_ipt.diffusion.masks import MaskError, draw_mask
from instruct_ipt.diffusion.model import DiffusionConfig, MaskedDiffusion
from instruct_ipt.diffusion.sample import ImageSizeError, inpaint
from instruct_ipt.diffusion.train import DiffusionConfigError, DiffusionTrainConfig, DiffusionTrainer, train

SMALL = {"block_out_channels": [16, 32], "attention": [False, True], "norm_num_groups": 8, "attention_head_dim": 16}


def photos(folder, n=2, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.5, 3, 3)
        img = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], axis=2) * 0.4 + 0.5
        save_image(folder / f"p{i}.png", img.astype(np.float32))
    return folder


def config(tmp_path, arm="base", **kw):
    folder = tmp_path / "photos"
    if not folder.exists():
        folder.mkdir()
        photos(folder)
    fields = {"out": str(tmp_path / arm), "arm": arm, "model": SMALL if arm == "base" else None, "sample_size": 16,
              "photos": (str(folder),), "skimage_photos": False, "steps": 4, "batch_size": 4, "checkpoint_every": 2,
              "log_every": 1, "warmup": 2}
    if arm != "base":
        fields["init"] = str(tmp_path / "base" / "model")
    fields.update(kw)
    return DiffusionTrainConfig(**fields)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base model and its three arms, each a few steps."""
    root = tmp_path_factory.mktemp("diffusion")
    train(config(root), progress=False, say=lambda _: None)
    for arm in ("plain", "bias-only", "sync"):
        train(config(root, arm), progress=False, say=lambda _: None)
    return root


def models(root):
    return {arm: MaskedDiffusion.from_pretrained(root / arm / "model") for arm in ("base", "plain", "bias-only", "sync")}


def test_views_are_seeded_and_alternate_the_mask_kinds():
    rng = np.random.default_rng(0)
    data = MaskedViews([rng.random((80, 100, 3), dtype=np.float32)], 32, ["inpaint", "outpaint"], seed=3)
    a, b = data.batch(10, 4), data.batch(10, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2] == ["inpaint", "outpaint", "inpaint", "outpaint"]
    assert a[0].shape == (4, 3, 32, 32) and a[0].min() >= -1 and a[0].max() <= 1
    assert set(np.unique(a[1].numpy())) <= {0.0, 1.0}
    assert not torch.equal(data.batch(14, 4)[0], a[0])  # other indices, other views
    for seed in range(50):  # the generic masks always leave something known and something to fill
        m = pretrain_mask(16, 16, np.random.default_rng(seed))
        assert 0 < m.sum() < m.size
    with pytest.raises(ValueError, match="pretrain"):
        MaskedViews([rng.random((40, 40, 3))], 32, ["smudge"], 0)


def test_arms_train_what_they_should(trained):
    m = models(trained)
    base = m["base"].state_dict()
    assert m["base"].modulation is None and m["plain"].modulation is None
    assert m["sync"].tasks == ("inpaint", "outpaint") and m["bias-only"].tasks == ("inpaint", "outpaint")
    # plain moved the shared weights; bias-only kept every backbone weight bit-identical; sync moved both
    moved = lambda sd, key: not torch.equal(sd[key], base[key])
    key = "unet.conv_in.weight"
    assert moved(m["plain"].state_dict(), key) and moved(m["sync"].state_dict(), key)
    bias_only = m["bias-only"]
    backbone = {id(p) for p in bias_only.modulation.backbone_parameters()}
    names = {n for n, p in bias_only.named_parameters() if id(p) in backbone}
    plain_names = {n.replace(".base_layer", "").replace(".base", "") for n in names}
    assert len(plain_names) == len(base)  # every base tensor is in the backbone, nothing else
    for n, p in bias_only.named_parameters():
        if id(p) in backbone:
            base_key = next(k for k in base if k == n or k == n.replace(".base_layer", "").replace(".base", ""))
            assert torch.equal(p.detach(), base[base_key]), n
    assert any(p.abs().sum() > 0 for p in bias_only.modulation.task_parameters())
    log = [json.loads(line) for line in (trained / "sync" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)


@pytest.mark.parametrize("arm", ["base", "sync"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, trained, monkeypatch, arm):
    cfg = config(trained, arm, out=str(tmp_path / "again"))  # the recipe again, interrupted after step 3
    calls = {"n": 0}
    real = DiffusionTrainer._step

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(DiffusionTrainer, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        DiffusionTrainer(cfg, progress=False, say=lambda _: None).run()
    monkeypatch.setattr(DiffusionTrainer, "_step", real)
    with pytest.raises(DiffusionConfigError, match="--resume"):
        DiffusionTrainer(cfg, progress=False, say=lambda _: None).run()
    DiffusionTrainer(cfg, resume=True, progress=False, say=lambda _: None).run()
    again = MaskedDiffusion.from_pretrained(tmp_path / "again" / "model").state_dict()
    first = MaskedDiffusion.from_pretrained(trained / arm / "model").state_dict()
    assert all(torch.equal(again[k], first[k]) for k in first)
    log = [json.loads(line)["step"] for line in (tmp_path / "again" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]  # no step logged twice


def test_a_time_budget_fixes_the_steps_and_a_finished_run_checks_its_config(tmp_path):
    cfg = config(tmp_path, out=str(tmp_path / "budget"), steps=10_000)
    said = []
    DiffusionTrainer(cfg, max_minutes=0.001, progress=False, say=said.append).run()  # 0.06 s: the timed steps only
    summary = json.loads((tmp_path / "budget" / "train-summary.json").read_text())
    assert summary["steps"] == 7 and any("s/step measured -> 7 steps" in m for m in said)
    other = config(tmp_path, out=str(tmp_path / "budget"), steps=3)
    with pytest.raises(DiffusionConfigError, match="another config"):
        DiffusionTrainer(other, progress=False).run()
    own = config(tmp_path, "sync", out=str(tmp_path / "budget"), init=str(tmp_path / "budget" / "model"))
    with pytest.raises(DiffusionConfigError, match="own output"):
        DiffusionTrainer(own, progress=False).run()


def test_config_errors_come_before_training(tmp_path):
    with pytest.raises(DiffusionConfigError, match="known: .*batch_size"):
        DiffusionTrainConfig.from_dict({"out": "x", "batchsize": 3})
    with pytest.raises(DiffusionConfigError, match="init"):
        DiffusionTrainConfig(out="x", arm="sync")
    with pytest.raises(DiffusionConfigError, match="inpaint"):
        DiffusionTrainConfig(out="x", tasks=("deblur",))
    with pytest.raises(DiffusionConfigError, match="model: unknown"):
        DiffusionTrainConfig(out="x", model={"channels": 3})
    with pytest.raises(ValueError, match="v_prediction or epsilon"):
        DiffusionConfig(prediction_type="sample")


def test_the_training_target_follows_the_prediction_type(tmp_path, monkeypatch):
    """v = sqrt(a) eps - sqrt(1 - a) x0 for v-prediction, the noise itself for epsilon."""
    import torch.nn.functional as F

    seen = {}
    real = F.mse_loss

    def spy(pred, target):
        seen["target"] = target.clone()
        return real(pred, target)

    for prediction in ("v_prediction", "epsilon"):
        cfg = config(tmp_path, out=str(tmp_path / prediction), steps=1, model={**SMALL, "prediction_type": prediction})
        trainer = DiffusionTrainer(cfg, progress=False, say=lambda _: None)
        monkeypatch.setattr(torch.nn.functional, "mse_loss", spy)
        trainer.run()
        monkeypatch.setattr(torch.nn.functional, "mse_loss", real)
        data = MaskedViews(load_photos(cfg.photos, False, 16), 16, [PRETRAIN], cfg.seed)
        x0 = data.batch(0, cfg.batch_size)[0]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        a = MaskedDiffusion.from_pretrained(tmp_path / prediction / "model").training_scheduler().alphas_cumprod[t]
        a = a[:, None, None, None]
        expected = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction == "v_prediction" else noise
        torch.testing.assert_close(seen["target"], expected)


def test_sampling_is_seeded_keeps_known_pixels_and_refuses_bad_input(trained):
    model = models(trained)["sync"]
    rng = np.random.default_rng(1)
    image = rng.random((20, 27, 3), dtype=np.float32)  # not a multiple of the stride: padded, cropped
    mask = draw_mask("inpaint", 20, 27, np.random.default_rng(2))
    a = inpaint(model, image, mask, "inpaint", steps=3, seed=5)
    assert a.shape == image.shape
    np.testing.assert_array_equal(a[mask < 0.5], image[mask < 0.5])  # known pixels pasted back exactly
    np.testing.assert_array_equal(a, inpaint(model, image, mask, "inpaint", steps=3, seed=5))
    assert not np.array_equal(a, inpaint(model, image, mask, "inpaint", steps=3, seed=6))
    # what is under the mask never reaches the model, also where the edges are padded
    edge = np.zeros((20, 27), np.float32)
    edge[14:, 20:] = 1.0  # a hole in the bottom-right corner, next to the padding
    hidden = image.copy()
    hidden[edge > 0.5] = 1.0 - hidden[edge > 0.5]
    np.testing.assert_array_equal(inpaint(model, image, edge, "inpaint", steps=2, seed=1, paste=False),
                                  inpaint(model, hidden, edge, "inpaint", steps=2, seed=1, paste=False))
    with pytest.raises(ImageSizeError, match="16x16"):
        inpaint(model, image[:12], mask[:12], "inpaint")
    with pytest.raises(MaskError, match="same size"):
        inpaint(model, image, mask[:, :20], "inpaint")
    with pytest.raises(ValueError, match="inpaint, outpaint"):
        inpaint(model, image, mask, "deblur")


def test_a_modulated_model_round_trips_and_per_sample_tasks_match(trained, tmp_path):
    model = models(trained)["sync"]
    model.save_pretrained(tmp_path / "copy")
    again = MaskedDiffusion.from_pretrained(tmp_path / "copy")
    x, cond, t = torch.randn(2, 3, 16, 16), torch.rand(2, 4, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        mixed = again(x, t, cond, ["inpaint", "outpaint"])
        one = torch.cat([model(x[:1], t[:1], cond[:1], "inpaint"), model(x[1:], t[1:], cond[1:], "outpaint")])
    torch.testing.assert_close(mixed, one, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="name the task"):
        model(x, t, cond)
    with pytest.raises(ValueError, match="format"):
        DiffusionConfig.from_dict({"sample_size": 16})


def test_cli_sample_writes_and_refuses(trained, tmp_path):
    image = np.random.default_rng(0).random((24, 24, 3), dtype=np.float32)
    save_image(tmp_path / "in.png", image)
    before = (tmp_path / "in.png").read_bytes()
    mask = draw_mask("outpaint", 24, 24, np.random.default_rng(0))
    save_image(tmp_path / "mask.png", np.repeat(mask[..., None], 3, 2))
    model = str(trained / "sync" / "model")
    args = ["diffusion", "sample", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--model", model,
            "--task", "outpaint", "--steps", "2", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "out.png")]) == 0
    out = load_image(tmp_path / "out.png").rgb
    np.testing.assert_allclose(out[mask < 0.5], image[mask < 0.5], atol=1 / 255)
    save_image(tmp_path / "small.png", np.ones((24, 20, 3), np.float32) * 0.5)
    bad = [*args[:4], str(tmp_path / "small.png"), *args[5:]]
    assert main([*bad, "-o", str(tmp_path / "never.png")]) == 2  # mask of another size
    assert main([*args, "-o", str(tmp_path / "in.png")]) == 2  # the input itself
    for name, value in (("allzero", 0.0), ("allone", 1.0)):
        save_image(tmp_path / f"{name}.png", np.full((24, 24, 3), value, np.float32))
        assert main([*args[:4], str(tmp_path / f"{name}.png"), *args[5:], "-o", str(tmp_path / "never.png")]) == 2
    small = ["diffusion", "sample", str(tmp_path / "small.png"), "--mask", str(tmp_path / "smallmask.png"),
             *args[5:]]
    save_image(tmp_path / "small.png", np.full((12, 12, 3), 0.5, np.float32))
    save_image(tmp_path / "smallmask.png", np.repeat(draw_mask("inpaint", 12, 12, np.random.default_rng(0))[..., None], 3, 2))
    assert main([*small, "-o", str(tmp_path / "never.png")]) == 2  # smaller than the model's 16x16
    assert main([*args, "-o", str(tmp_path / "never.xyz")]) == 2  # unknown format: refused before sampling
    assert not (tmp_path / "never.png").exists() and not (tmp_path / "never.xyz").exists()
    assert (tmp_path / "in.png").read_bytes() == before  # the input untouched by the refused overwrite


def test_cli_train_from_yaml(tmp_path):
    cfg = config(tmp_path, steps=2)
    (tmp_path / "base.yaml").write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    assert main(["diffusion", "train", str(tmp_path / "base.yaml"), "--quiet", "--device", "cpu"]) == 0
    assert (tmp_path / "base" / "model" / "model.safetensors").exists()
    (tmp_path / "bad.yaml").write_text("out: x\nsteps: 0\n")
    assert main(["diffusion", "train", str(tmp_path / "bad.yaml")]) == 2


def test_a_pretrain_mask_is_not_a_task():
    with pytest.raises(ValueError):
        draw_mask(PRETRAIN, 8, 8, np.random.default_rng(0))


def test_the_shipped_configs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "diffusion"
    arms = {DiffusionTrainConfig.from_yaml(p).arm for p in folder.glob("*.yaml")}
    assert arms == {"base", "plain", "bias-only", "sync"}


def test_masked_metrics_see_only_their_region():
    from instruct_ipt.eval.metrics import masked_psnr, masked_ssim

    rng = np.random.default_rng(0)
    a = rng.random((40, 40, 3))
    b = a.copy()
    b[:, 30:] = rng.random((40, 10, 3))  # differs only on the right
    left = np.zeros((40, 40), bool)
    left[:, :15] = True  # more than half a window (5 px) away from the change
    assert masked_psnr(b, a, left) == float("inf") and masked_ssim(b, a, left) == 1.0
    right = ~left
    expected = 10 * np.log10(1 / np.mean((b[:, 15:] - a[:, 15:]) ** 2))
    assert masked_psnr(b, a, right) == pytest.approx(expected)
    assert masked_ssim(b, a, right) < 0.9
    band = np.zeros((40, 40), bool)
    band[:2] = True  # thinner than half a window: still measured
    assert masked_ssim(a, a, band) == 1.0
    with pytest.raises(ValueError, match="empty"):
        masked_psnr(a, b, np.zeros((40, 40), bool))


def test_ablate_table8_end_to_end(tmp_path):
    from instruct_ipt.ablation.table8 import T8_ARMS, DiffusionSettings, ablate_table8

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    photos(tmp_path / "train")
    photos(tmp_path / "val", n=1, size=40, seed=1)
    settings = DiffusionSettings(size="tiny", budget_minutes=None, steps=1, train=(str(tmp_path / "train"),),
                                 val=str(tmp_path / "val"), sample_size=32, sample_steps=2, views=2, batch_size=4)
    said = []
    summary = ablate_table8(tmp_path / "out", settings, seeds=2, say=said.append, progress=False)
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    for arm in T8_ARMS:
        assert f"| {arm}: " in report
        assert len(summary["figures"][arm]["inpaint"]["psnr_in"]) == 2
    assert summary["steps"]["sync"] == [1, 1] and summary["cases"] == 2
    assert set(summary["skipped"]) == {"lpips", "dists", "fid", "is"} and "Skipped metrics" in report
    claims = {c["claim"] for c in summary["claims"]}
    assert "inpaint: synchronous modulation beats plain (PSNR in the mask)" in claims
    # the original arm is the base model, sampled with each seed's noise: figures differ per seed
    assert len(set(summary["figures"]["original"]["outpaint"]["psnr_in"])) == 2
    sheet = load_image(out / "table8-inpaint.png").rgb
    assert sheet.shape == (3 * 2 * 36, 3 * 6 * 36, 3)  # 2 rows; input, 4 arms, truth; 32 px + 2+2 border, x3
    # rerun with LPIPS/DISTS weights (random values, the reference formats): nothing trains or samples
    # again, the saved samples are scored, FID and IS stay skipped (no Inception file)
    from instruct_ipt.eval.perceptual import DISTS_CHANNELS, LPIPS_CHANNELS, VGG16Features

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(VGG16Features().state_dict(), weights / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)},
               weights / "lpips_vgg.pth")
    n = sum(DISTS_CHANNELS)
    torch.save({"alpha": torch.full((1, n, 1, 1), 0.1), "beta": torch.full((1, n, 1, 1), 0.1)}, weights / "dists.pt")
    said.clear()
    scored = ablate_table8(tmp_path / "out", settings, seeds=2, metric_weights=str(weights), say=said.append,
                           progress=False)
    assert not any("training" in s or "sampling" in s for s in said)
    assert set(scored["skipped"]) == {"fid", "is"} and "pt_inception" in scored["skipped"]["fid"]
    lpips = scored["figures"]["sync"]["inpaint"]["lpips"]
    assert len(lpips) == 2 and all(0 < v < float("inf") for v in lpips)
    assert "inpaint: synchronous modulation beats plain (LPIPS)" in {c["claim"] for c in scored["claims"]}
    other = DiffusionSettings(**{**settings.to_dict(), "train": settings.train, "sample_steps": 3})
    with pytest.raises(ValueError, match="sample_steps"):
        ablate_table8(tmp_path / "out", other, seeds=2, say=said.append, progress=False)


def test_a_damaged_diffusion_model_folder_is_one_value_error_naming_the_file(trained, tmp_path):
    folder = models(trained)["base"].save_pretrained(tmp_path / "copy")
    config, weights = folder / "config.json", folder / "model.safetensors"
    good, whole = config.read_text(), weights.read_bytes()
    for text, says in (("[1]", "not a diffusion model config"), ("{", "Expecting")):
        config.write_text(text)
        with pytest.raises(ValueError, match=f"^{config}: .*{says}"):
            MaskedDiffusion.from_pretrained(folder)
    config.write_text(good)
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"^{weights}: not a readable .safetensors file"):
        MaskedDiffusion.from_pretrained(folder)
    weights.write_bytes(whole)
    MaskedDiffusion.from_pretrained(folder)  # as written, it loads

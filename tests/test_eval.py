import csv
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from instruct_ipt import InstructIPT
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import Haze, Noise
from instruct_ipt.eval.metrics import psnr
from instruct_ipt.eval.peers import bm3d_peer, dark_channel_prior, nlm_peer


@pytest.fixture
def setup(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[:48, :64]).save(photos / "astronaut.png")
    Image.fromarray(data.coffee()[:40, :40]).save(photos / "coffee.png")
    InstructIPT("tiny", tasks=["denoise", "dehaze"]).save_pretrained(tmp_path / "model")
    return tmp_path


def test_eval_synthetic_end_to_end(setup, capsys, monkeypatch):
    import hashlib

    from instruct_ipt import inference

    out = setup / "out"
    real, before_dehaze = inference.restore_array, []

    def watched(model, rgb, task=None, *a, **k):  # what was printed when dehazing began
        if model.modulation.merged_task == "dehaze" and not before_dehaze:
            before_dehaze.append(capsys.readouterr().out)
        return real(model, rgb, task, *a, **k)

    monkeypatch.setattr(inference, "restore_array", watched)
    rc = main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--sigma", "25",
               "--peers", "--save", "--out", str(out), "--channel", "both"])
    assert rc == 0
    assert "denoise | photos: whole images, sigma 25 | protocol: channel=both, border=0 px dropped" in before_dehaze[0]
    assert "bm3d" in before_dehaze[0] and "dehaze |" not in before_dehaze[0]  # each table as its task finishes
    printed = before_dehaze[0] + capsys.readouterr().out
    assert "dehaze | photos: whole images | protocol" in printed
    assert "dark-channel-prior" in printed and "bm3d" in printed
    doc = json.loads((out / "results.json").read_text())
    assert (doc["sigma"], doc["crop"], doc["seed"]) == (25.0, 0, 0)
    assert doc["model_sha256"] == hashlib.sha256((setup / "model/model.safetensors").read_bytes()).hexdigest()
    methods = {(r["task"], r["method"]) for r in doc["summary"]}
    assert methods == {("denoise", "instruct-ipt"), ("denoise", "input"), ("denoise", "bm3d"), ("denoise", "opencv-nlm"),
                       ("dehaze", "instruct-ipt"), ("dehaze", "input"), ("dehaze", "dark-channel-prior")}
    assert all(r["images"] == 2 for r in doc["summary"])
    assert doc["protocols"]["denoise"]["channel"] == "both"
    assert len(doc["images"]) == 2 * 7
    # the input row is the degraded image itself: its PSNR is that of sigma=25 noise
    noisy_row = next(r for r in doc["summary"] if r["method"] == "input" and r["task"] == "denoise")
    assert 19 < noisy_row["metrics"]["psnr_rgb"] < 23
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 7 and "psnr_y" in rows[0] and rows[0]["protocol"].startswith("channel=both")
    saved = out / "images/denoise/photos-synthetic/instruct-ipt/astronaut.png"
    assert Image.open(saved).size == (64, 48)


def test_eval_benchmark_folder_skips_bad_files_and_continues(setup, capsys):
    bench = setup / "bench"
    (bench / "input").mkdir(parents=True)
    (bench / "target").mkdir()
    rng = np.random.default_rng(0)
    clean = data.astronaut()[:32, :32]
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(bench / "target/good.png")
    Image.fromarray(noisy).save(bench / "input/good.png")
    Image.fromarray(clean[:20]).save(bench / "target/small.png")
    Image.fromarray(noisy).save(bench / "input/small.png")
    (bench / "input/broken.png").write_bytes(b"not a png")
    Image.fromarray(clean).save(bench / "target/broken.png")
    rc = main(["eval", "--model", str(setup / "model"), "--data", str(bench), "--task", "denoise", "--out", str(setup / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "skipped small: size mismatch" in err
    assert "skipped broken:" in err and "broken.png: not a readable image" in err
    doc = json.loads((setup / "o/results.json").read_text())
    assert [r["images"] for r in doc["summary"]] == [1]
    assert len(doc["skipped"]) == 2


def test_eval_clean_only_needs_sigma_and_unknown_task_is_named(setup, capsys):
    assert main(["eval", "--model", str(setup / "model"), "--data", str(setup / "photos"), "--out", str(setup / "o")]) == 2
    assert "noise level (--sigma)" in capsys.readouterr().err
    for bad in ("-25", "nan"):  # refused before the model is read or an image degraded, not numpy's "scale < 0"
        assert main(["eval", "--model", str(setup / "nowhere"), "--photos", str(setup / "photos"), "--sigma", bad]) == 2
        assert capsys.readouterr().err == f"instruct-ipt eval: error: sigma: a noise level >= 0 on the 0-255 scale, got {bad}\n"
    rc = main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--tasks", "denoise,derain,sharpen",
               "--out", str(setup / "o2")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "the model has no task 'derain'" in err and "task sharpen: no synthetic degradation" in err
    assert json.loads((setup / "o2/results.json").read_text())["summary"][0]["task"] == "denoise"


def test_eval_missing_folder_is_one_line_error(setup, capsys):
    rc = main(["eval", "--model", str(setup / "model"), "--data", str(setup / "nope"), "--out", str(setup / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("instruct-ipt eval: error:") and "nope" in err and len(err.splitlines()) == 1


def test_peers_improve_on_their_degradation():
    clean = data.astronaut()[100:164, 150:214].astype(np.float32) / 255
    noisy = Noise(sigma=25)(clean, np.random.default_rng(0)).image
    info = {"sigma": 25}
    assert psnr(bm3d_peer(noisy, info), clean) > psnr(noisy, clean) + 4
    assert psnr(nlm_peer(noisy, info), clean) > psnr(noisy, clean) + 2
    big = data.astronaut()[::2, ::2].astype(np.float32) / 255
    hazy = Haze(beta=1.5, airlight=0.9)(big, np.random.default_rng(0)).image
    assert psnr(dark_channel_prior(hazy, {}), big) > psnr(hazy, big) + 2


def test_eval_header_names_the_crop_size_and_the_border_apart(setup, capsys):
    rc = main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--tasks", "dehaze",
               "--crop", "32", "--crop-border", "4", "--out", str(setup / "o3")])
    assert rc == 0
    assert "dehaze | photos: centre crops of 32 px | protocol: channel=rgb, border=4 px dropped" in capsys.readouterr().out
    assert json.loads((setup / "o3/results.json").read_text())["crop"] == 32


def test_eval_grey_runs_grey_photos_and_grey_peers(setup):
    rc = main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--tasks", "denoise",
               "--sigma", "25", "--grey", "--peers", "--save", "--out", str(setup / "g")])
    assert rc == 0
    doc = json.loads((setup / "g/results.json").read_text())
    assert doc["grey"] is True and {r["dataset"] for r in doc["summary"]} == {"photos-synthetic-grey"}
    bm3d = next(r for r in doc["summary"] if r["method"] == "bm3d")
    noisy = next(r for r in doc["summary"] if r["method"] == "input")
    assert bm3d["metrics"]["psnr_rgb"] > noisy["metrics"]["psnr_rgb"] + 3
    saved = np.asarray(Image.open(setup / "g/images/denoise/photos-synthetic-grey/input/astronaut.png"))
    assert np.array_equal(saved[..., 0], saved[..., 1]) and np.array_equal(saved[..., 0], saved[..., 2])


def test_grey_peers_run_on_one_channel():
    clean = np.repeat(data.camera()[100:164, 150:214, None].astype(np.float32) / 255, 3, axis=2)
    noisy = np.repeat(Noise(sigma=25)(clean, np.random.default_rng(0)).image[..., :1], 3, axis=2)
    for peer in (bm3d_peer, nlm_peer):
        out = peer(noisy, {"sigma": 25, "grey": True})
        assert np.array_equal(out[..., 0], out[..., 2]) and psnr(out, clean) > psnr(noisy, clean) + 2


def test_seam_ratio_sees_block_seams_and_only_them():
    from instruct_ipt.eval.metrics import seam_ratio

    rng = np.random.default_rng(0)
    target = rng.random((128, 160, 3))
    smooth_error = target + rng.normal(0, 0.01, target.shape)
    assert seam_ratio(smooth_error, target, 64) == pytest.approx(1.0, abs=0.2)
    blocks = smooth_error + 0.05 * (np.add.outer(np.arange(128) // 64, np.arange(160) // 64) % 2)[..., None]
    assert seam_ratio(blocks, target, 64) > 5  # a step in the error at every 64th line
    assert seam_ratio(blocks, target, 48) == pytest.approx(seam_ratio(smooth_error, target, 48), rel=0.5)


def test_plan_skips_unknown_tasks_and_names_the_setting(setup):
    from instruct_ipt.eval.plan import EvalRequest, plan_eval, results_meta
    from instruct_ipt.eval.runner import Case

    photos = setup / "photos"
    request = EvalRequest(photos=photos, tasks=["denoise", "derain", "sharpen"], sigma=25, protocol={"channel": "y"})
    plan = plan_eval(request, ["denoise", "dehaze"])
    assert [str(s) for s in plan.skipped] == [
        "skipped task sharpen: no synthetic degradation for it; known: denoise, deblur, derain, dehaze, desnow, jpeg",
        "skipped task derain: the model has no task 'derain'; it knows: denoise, dehaze",
    ]
    assert [(j.task, j.images, j.setting) for j in plan.jobs] == [("denoise", 2, "photos: whole images, sigma 25")]
    assert list(plan.protocols) == ["denoise", "derain"] and plan.protocols["derain"].channel == "y"
    cases = list(plan.jobs[0].make_cases())
    assert len(cases) == 2 and all(isinstance(c, Case) and c.task == "denoise" for c in cases)
    # without a model every task with a synthetic degradation runs; --grey and --crop name the setting
    grey = plan_eval(EvalRequest(photos=photos, tasks=["dehaze"], grey=True, crop=32))
    assert (grey.skipped, [j.setting for j in grey.jobs]) == ([], ["photos: grey versions, centre crops of 32 px"])
    meta = results_meta(request, None, "cpu", 64)
    assert (meta["channel"], meta["sigma"], meta["seam_period"]) == ("y", 25, 64) and "model_sha256" not in meta


def test_plan_needs_a_task_for_a_generic_benchmark_folder(setup):
    import hashlib

    from instruct_ipt.eval.plan import EvalRequest, plan_eval, results_meta

    bench = setup / "bench"
    for sub in ("input", "target"):
        (bench / sub).mkdir(parents=True)
        Image.fromarray(data.astronaut()[:32, :32]).save(bench / sub / "a.png")
    with pytest.raises(ValueError, match="generic layout does not imply a task; say which with --task"):
        plan_eval(EvalRequest(data=[bench]), ["denoise"])
    plan = plan_eval(EvalRequest(data=[bench], task="dehaze"), ["denoise", "dehaze"])
    assert [(j.task, j.images, j.setting) for j in plan.jobs] == [("dehaze", 1, "bench: benchmark images")]
    meta = results_meta(EvalRequest(data=[bench], task="dehaze"), str(setup / "model"), "cpu")
    assert meta["model_sha256"] == hashlib.sha256((setup / "model/model.safetensors").read_bytes()).hexdigest()
    assert meta["channel"] == "per task (see protocols)"


def test_eval_composite_rows_input_each_task_sequence_blind(setup, capsys, monkeypatch):
    from instruct_ipt.pipeline import RestorationPipeline

    runs = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: runs.append(list(tasks)) or real_run(self, rgb, tasks, **k))
    out = setup / "out"
    rc = main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--composite", "noise+haze",
               "--composite", "rain+noise", "--sigma", "25", "--crop", "32", "--out", str(out)])
    assert rc == 1  # rain+noise is skipped: the model has no derain
    captured = capsys.readouterr()
    assert "skipped composite rain+noise: the model has no task 'derain'; it knows: denoise, dehaze" in captured.err
    assert "haze+noise | photos: centre crops of 32 px, sigma 25, sequence: denoise then dehaze | protocol" in captured.out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["task"], r["dataset"], r["method"], r["images"]) for r in rows] == [
        ("haze+noise", "photos-haze+noise", m, "2") for m in ("input", "denoise only", "dehaze only", "sequence", "reverse order", "blind")]
    assert ["denoise", "dehaze"] in runs and ["dehaze", "denoise"] in runs  # the sequence (noise undone first) and its reverse
    inp = next(r for r in rows if r["method"] == "input")
    assert float(inp["psnr_rgb"]) < 20  # haze and sigma-25 noise
    doc = json.loads((out / "results.json").read_text())
    assert doc["composites"] == ["noise+haze", "rain+noise"] and "haze+noise" in doc["protocols"]


def test_composite_rows_run_what_their_names_say():
    from collections import Counter
    from types import SimpleNamespace

    from instruct_ipt.eval.runner import composite_methods

    class Pipe:  # each run returns the tasks it was given, in the order given
        def run(self, rgb, tasks):
            return ("ran", *tasks)

        def choose(self, rgb):
            return SimpleNamespace(tasks=["dehaze"])

    named = Counter()
    methods = composite_methods(Pipe(), ("derain", "denoise"), named)
    case = SimpleNamespace(input="degraded")
    assert {m: f(case) for m, f in methods.items()} == {
        "input": "degraded", "derain only": ("ran", "derain"), "denoise only": ("ran", "denoise"),
        "sequence": ("ran", "derain", "denoise"), "reverse order": ("ran", "denoise", "derain"),
        "blind": ("ran", "dehaze")}
    assert list(methods) == ["input", "derain only", "denoise only", "sequence", "reverse order", "blind"]
    assert named == Counter({"dehaze": 1})


def test_plan_composites_refuse_bad_names_and_need_photos(setup):
    import zlib

    from instruct_ipt.data.degradations import make_degradation
    from instruct_ipt.data.images import read_rgb
    from instruct_ipt.eval.plan import EvalRequest, plan_eval

    photos = setup / "photos"
    with pytest.raises(ValueError, match=r"names noise \(denoise\) twice"):
        plan_eval(EvalRequest(photos=photos, composites=["noise+denoise"]), ["denoise"])
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        plan_eval(EvalRequest(photos=photos, composites=["fog+noise"]), ["denoise"])
    for one in ("rain", "derain", "jpeg"):  # one degradation is a task's table, not a composite's
        with pytest.raises(ValueError, match=r"names one degradation: join two or more .* --tasks (derain|jpeg)"):
            plan_eval(EvalRequest(photos=photos, composites=[one]), ["derain", "jpeg"])
    with pytest.raises(ValueError, match="give them with --photos"):
        plan_eval(EvalRequest(data=[photos], task="denoise", composites=["haze+noise"]), ["denoise", "dehaze"])
    # composites alone: no single-task tables; --tasks adds them
    plan = plan_eval(EvalRequest(photos=photos, composites=["noise+haze"], sigma=15), ["denoise", "dehaze"])
    assert [(j.task, j.sequence) for j in plan.jobs] == [("haze+noise", ("denoise", "dehaze"))]
    rain = plan_eval(EvalRequest(photos=photos, composites=["noise+rain"]), ["denoise", "derain"])
    assert [(j.task, j.sequence) for j in rain.jobs] == [("rain+noise", ("derain", "denoise"))]  # the measured order
    both = plan_eval(EvalRequest(photos=photos, composites=["haze+noise"], tasks=["dehaze"]), ["denoise", "dehaze"])
    assert [j.task for j in both.jobs] == ["dehaze", "haze+noise"]
    # seeded like a single task, by the composite's canonical name; --sigma reaches its noise
    case = next(iter(plan.jobs[0].make_cases()))
    clean = read_rgb(photos / "astronaut.png")
    rng = np.random.default_rng((0, zlib.crc32(b"haze+noise"), 0))
    assert np.array_equal(case.input, make_degradation("noise+haze", denoise={"sigma": 15})(clean, rng).image)
    assert case.info["denoise.sigma"] == 15 and case.dataset == "photos-haze+noise"


def test_eval_blind_row_beside_each_task_runs_what_blind_mode_names(setup, capsys, monkeypatch):
    from instruct_ipt.data.images import read_rgb
    from instruct_ipt.eval.plan import EvalRequest, plan_eval
    from instruct_ipt.pipeline import RestorationPipeline, TaskChoice

    # blind mode's choice by the image's width: the 48 px wide crop of astronaut is taken for a hazy
    # photo, coffee (40 px wide: a side longer than the photo's keeps the photo's) for a clean one
    def choose(self, rgb=None, task=None, instruction=None):
        return TaskChoice(["dehaze"] if rgb.shape[1] == 48 else [], [1.0] if rgb.shape[1] == 48 else [], "blind")

    monkeypatch.setattr(RestorationPipeline, "choose", choose)
    out = setup / "out"
    assert main(["eval", "--model", str(setup / "model"), "--photos", str(setup / "photos"), "--blind", "--crop", "48x32",
                 "--sigma", "25", "--seam-period", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "denoise | photos: centre crops of 48x32 px, sigma 25 | protocol" in printed
    assert printed.count("blind mode named: dehaze x1, nothing x1 (of 2 images)") == 2  # after each task's table
    doc = json.loads((out / "results.json").read_text())
    assert doc["crop"] == [48, 32] and doc["blind_named"] == {t: {"dehaze": 1, "nothing": 1} for t in ("denoise", "dehaze")}
    assert {(r["task"], r["method"]) for r in doc["summary"]} == {
        (t, m) for t in ("denoise", "dehaze") for m in ("instruct-ipt", "blind")}
    # the blind row is dehaze run on the astronaut crop (while eval holds the model merged for the task of the
    # table: for denoise, another task) and the degraded coffee crop itself
    pipe = RestorationPipeline.from_pretrained(setup / "model")
    plan = plan_eval(EvalRequest(photos=setup / "photos", sigma=25, crop=(48, 32)), ["denoise", "dehaze"])
    for job in plan.jobs:
        for case in job.make_cases():
            assert case.input.shape == ((32, 48, 3) if case.name == "astronaut" else (32, 40, 3))
            restored = pipe.run(case.input, ["dehaze"]) if case.name == "astronaut" else case.input
            expected = psnr(np.round(np.clip(restored, 0, 1) * 255) / 255, case.target)
            got = next(r for r in doc["images"] if (r["task"], r["method"], r["image"]) == (job.task, "blind", case.name))
            assert got["metrics"]["psnr_rgb"] == pytest.approx(expected, abs=1e-6)
    assert read_rgb(setup / "photos" / "coffee.png").shape == (40, 40, 3)  # the photos are untouched


def test_eval_blind_needs_a_model_and_crop_sizes_are_checked(setup, capsys):
    assert main(["eval", "--photos", str(setup / "photos"), "--peers", "--blind"]) == 2
    assert "--blind restores with a model's blind mode: give --model DIR" in capsys.readouterr().err
    for bad in ("512x", "0x384", "-3", "wide"):
        with pytest.raises(SystemExit):
            main(["eval", "--photos", str(setup / "photos"), "--peers", "--crop", bad])
        assert "one side in pixels (384; 0 for the whole image) or WxH (512x384)" in capsys.readouterr().err

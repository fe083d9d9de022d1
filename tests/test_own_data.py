"""Training on the user's own pairs (``data.paired``) and ``add-task``: a new task from a folder of
pairs, with the backbone and the other tasks left bit-identical."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instruct_ipt import InstructIPT
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import make_degradation
from instruct_ipt.data.paired import PairError, load_training_pairs
from instruct_ipt.data.synthetic import SyntheticDataset
from instruct_ipt.modulation import ModulationConfig
from instruct_ipt.pipeline import RestorationPipeline
from instruct_ipt.train import ConfigError, Trainer, config_from_dict
from instruct_ipt.train.add_task import AddTaskError, add_task, check_phrases, default_phrases


def write_pairs(folder, make_input, n=3, size=(72, 88), seed=0):
    """``n`` random-texture targets and ``make_input(target)`` as inputs, in input/ + target/."""
    rng = np.random.default_rng(seed)
    (folder / "input").mkdir(parents=True)
    (folder / "target").mkdir()
    for i in range(n):
        base = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3)).astype(np.uint8)
        target = np.asarray(Image.fromarray(base).resize((size[1], size[0]), Image.BICUBIC))
        target = np.clip(target.astype(int) + rng.integers(-20, 21, target.shape), 0, 255).astype(np.uint8)
        Image.fromarray(target).save(folder / "target" / f"{i}.png")
        Image.fromarray(make_input(target)).save(folder / "input" / f"{i}.png")
    return folder


def inverted(target):
    return (255 - target).astype(np.uint8)


def darker(target):
    return (target.astype(np.float64) * 0.5 + 0.5).astype(np.uint8)


def as_uint8(t):
    return np.round(t.numpy() * 255).astype(int)


def test_paired_crops_line_up_through_crops_flips_and_rotations(tmp_path):
    pairs = load_training_pairs([write_pairs(tmp_path / "p", inverted)], "invert", min_size=32)
    assert len(pairs) == 3 and pairs[0][0].shape == (72, 88, 3)
    ds = SyntheticDataset([], {}, patch_size=32, length=64, pairs={"invert": pairs})
    turned = 0
    for i in range(len(ds)):
        s = ds[i]
        x, y = as_uint8(s["input"]), as_uint8(s["target"])
        assert s["task_name"] == "invert" and x.shape == (3, 32, 32)
        np.testing.assert_array_equal(x, 255 - y)  # the same window, flip and rotation in both
        # the crop is a window of some target, turned: found unturned only for 1 of the 8 turns
        window = y.transpose(1, 2, 0)
        turned += not any((tgt[r : r + 32, c : c + 32] == window).all()
                          for _, tgt in pairs for r in range(72 - 31) for c in range(88 - 31)
                          if tgt[r, c, 0] == window[0, 0, 0])
    assert 40 <= turned <= 64  # 7 of 8 turns change the window


def test_paired_share_mixes_pairs_with_synthesis_and_leaves_unpaired_tasks_alone(tmp_path):
    pairs = load_training_pairs([write_pairs(tmp_path / "p", inverted, size=(64, 64))], "denoise")
    clean = [np.asarray(pairs[0][1])]
    ops = {"denoise": make_degradation("denoise", sigma=25), "deblur": make_degradation("deblur")}
    mixed = SyntheticDataset(clean, ops, patch_size=32, length=400, pairs={"denoise": pairs}, paired_share=0.3,
                             task_weights={"denoise": 1, "deblur": 0.0001})
    paired = sum((as_uint8(s["input"]) == 255 - as_uint8(s["target"])).all() for s in (mixed[i] for i in range(400)))
    assert 0.3 * 400 - 40 <= paired <= 0.3 * 400 + 40  # binomial sd ~9
    # a task without pairs draws exactly the samples it drew before pairs existed (each sample has its own generator)
    plain = SyntheticDataset(clean, ops, patch_size=32, length=30, seed=3)
    with_pairs = SyntheticDataset(clean, ops, patch_size=32, length=30, seed=3, pairs={"denoise": pairs})
    same = 0
    for i in range(30):
        a, b = plain[i], with_pairs[i]
        assert a["task_name"] == b["task_name"]
        if a["task_name"] == "deblur":
            assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
            same += 1
    assert same >= 5


def test_bad_pairs_are_named_before_training(tmp_path):
    good = write_pairs(tmp_path / "good", darker)
    Image.fromarray(np.zeros((70, 88, 3), np.uint8)).save(good / "input" / "2.png")  # 88x70 against 88x72
    with pytest.raises(PairError, match=r"2.png is 88x70 but its target .*2.png is 88x72"):
        load_training_pairs([good], "gain")
    lonely = write_pairs(tmp_path / "lonely", darker)
    Image.fromarray(np.zeros((72, 88, 3), np.uint8)).save(lonely / "input" / "extra.png")
    with pytest.raises(PairError, match="no target for .*extra.png"):
        load_training_pairs([lonely], "gain")
    broken = write_pairs(tmp_path / "broken", darker)
    (broken / "input" / "1.png").write_bytes(b"not a png")
    with pytest.raises(PairError, match="1.png"):
        load_training_pairs([broken], "gain")
    (tmp_path / "clean").mkdir()
    Image.fromarray(np.zeros((72, 88, 3), np.uint8)).save(tmp_path / "clean" / "a.png")
    with pytest.raises(PairError, match="clean images only, no pairs"):
        load_training_pairs([tmp_path / "clean"], "gain")
    with pytest.raises(PairError, match="smaller than the 128px training patch"):
        load_training_pairs([write_pairs(tmp_path / "small", darker)], "gain", min_size=128)
    (tmp_path / "rain" / "rainy").mkdir(parents=True)
    (tmp_path / "rain" / "norain").mkdir()
    for sub in ("rainy", "norain"):
        Image.fromarray(np.zeros((72, 88, 3), np.uint8)).save(tmp_path / "rain" / sub / "rain-1.png")
    with pytest.raises(PairError, match="rain100 folder .*derain.*not deblur pairs"):
        load_training_pairs([tmp_path / "rain"], "deblur")


def cfg_dict(tmp_path, **data):
    return {
        "mode": "sync",
        "tasks": {"denoise": {}, "gain": {}},
        "model": {"size": "tiny", "rank": 2},
        "data": {"paired": {"gain": [str(tmp_path / "pairs")]}, "patch_size": 32, "batch_size": 2, **data},
        "iterations": 2, "log_every": 1, "val_every": 2, "ckpt_every": 2, "out": str(tmp_path / "run"),
    }


def test_paired_config_errors(tmp_path):
    d = cfg_dict(tmp_path)
    d["tasks"]["glow"] = {}
    with pytest.raises(ConfigError, match="tasks.glow: no synthetic degradation is known for 'glow'.*data.paired.glow"):
        config_from_dict(d)
    with pytest.raises(ConfigError, match="data.paired: 'derain' is not in tasks"):
        config_from_dict(cfg_dict(tmp_path, paired={"derain": ["x"]}))
    with pytest.raises(ConfigError, match="paired samples are cut in the workers"):
        config_from_dict(cfg_dict(tmp_path, synthesis="device"))
    with pytest.raises(ConfigError, match=r"data.paired_share.gain: a share in \[0, 1\]"):
        config_from_dict(cfg_dict(tmp_path, paired_share={"gain": 1.5}))
    with pytest.raises(FileNotFoundError, match="data.paired.gain: .*pairs: no such folder"):  # before any step
        Trainer(config_from_dict(cfg_dict(tmp_path, train=[str(tmp_path)])), progress=False).run()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sync_training_mixes_paired_and_synthetic_tasks(tmp_path):
    write_pairs(tmp_path / "pairs", darker)
    photos = write_pairs(tmp_path / "photos_src", darker) / "target"
    model = Trainer(config_from_dict(cfg_dict(tmp_path, train=[str(photos)])), progress=False).run()
    assert model.tasks == ["denoise", "gain"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("loss" in e for e in logged)
    # both tasks' biases left their zero start: each task drew samples (B1 of a task never drawn stays 0)
    for t in (0, 1):
        assert any(p[t].abs().max() > 0 for p in model.modulation.task_parameters()[0::2]), model.tasks[t]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=["denoise", "deblur"], modulation=ModulationConfig(rank=2))
    return model.save_pretrained(tmp_path_factory.mktemp("base") / "model")


def outputs(model, x):
    with torch.no_grad():
        return {t: model(x, torch.full((x.shape[0],), model.task_index(t))).clone() for t in ("denoise", "deblur")}


def test_add_task_learns_a_gain_keeps_the_rest_bit_identical_and_is_asked_for_by_its_phrasing(base_dir, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs", darker, n=4, size=(64, 64))
    phrases = ["make the dim picture twice as bright", "double the brightness of this dark shot",
               "the exposure is half what it should be", "brighten it by a factor of two"]
    (tmp_path / "phrases.txt").write_text("\n".join(phrases) + "\n")
    corpus = tmp_path / "corpus"  # a small corpus: the packaged one takes a minute to embed on 2 cores
    corpus.mkdir()
    (corpus / "denoise.txt").write_text("remove the noise\ndenoise this\nthe photo is grainy\nclean up the grain\n"
                                        "reduce the noise please\nget rid of the speckles\n")
    (corpus / "deblur.txt").write_text("remove the blur\nsharpen this\nthe photo is blurry\nfix the camera shake\n"
                                       "deblur it\nmake it crisp\n")
    (corpus / "unsupported.txt").write_text("book a flight\nwhat is the weather\nmake it brighter\nadd a cat\n"
                                            "brighten the image\ntranslate this text\nwrite a poem\n")
    before = InstructIPT.from_pretrained(base_dir)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    old = outputs(before, x)
    out = tmp_path / "with-gain"
    assert main(["add-task", "gain", "--model", str(base_dir), "--pairs", str(pairs), "--phrases",
                 str(tmp_path / "phrases.txt"), "--corpus", str(corpus), "--iterations", "60", "--patch-size", "32", "--batch-size", "4",
                 "--lr", "3e-3", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "added task gain: 60 bias-only steps on 4 pairs" in said
    assert "no longer refuses 2 request(s) that now mean gain, e.g. 'make it brighter', 'brighten the image'" in said
    after = InstructIPT.from_pretrained(out)
    assert after.tasks == ["denoise", "deblur", "gain"]
    new = outputs(after, x)
    for t in old:  # the other tasks restore exactly as before
        assert torch.equal(old[t], new[t]), t
    b0, b1 = before.backbone_state_dict(), after.backbone_state_dict()
    assert b0.keys() == b1.keys() and all(torch.equal(b0[k], b1[k]) for k in b0)
    # the new task learned the gain: half as far from the targets as the untrained biases were
    pairs_arr = load_training_pairs([pairs], "gain")
    inp = torch.stack([torch.from_numpy(a.transpose(2, 0, 1) / 255.0).float() for a, _ in pairs_arr])
    tgt = torch.stack([torch.from_numpy(b.transpose(2, 0, 1) / 255.0).float() for _, b in pairs_arr])
    with torch.no_grad():
        untrained = (before(inp, torch.zeros(4, dtype=torch.long)).clamp(0, 1) - tgt).abs().mean()  # = the backbone
        trained = (after(inp, torch.full((4,), 2)).clamp(0, 1) - tgt).abs().mean()
    assert trained < 0.5 * untrained, (float(trained), float(untrained))
    # one self-contained folder: head, classifier, phrasings, log; no run folder left behind
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "instruction_head.safetensors", "phrases", "add-task-log.jsonl"} <= names
    assert (out / "phrases" / "gain.txt").read_text().splitlines() == phrases
    assert not (tmp_path / "with-gain.run").exists() and not (tmp_path / "with-gain.partial").exists()
    pipe = RestorationPipeline.from_pretrained(out, device="cpu")
    assert pipe.choose(instruction="please make the dim picture twice as bright").tasks == ["gain"]
    assert pipe.choose(instruction="remove the noise").tasks == ["denoise"]
    # restore through the CLI with one of its phrasings
    img = tmp_path / "dim.png"
    Image.fromarray(pairs_arr[0][0]).save(img)
    assert main(["restore", str(img), "-i", phrases[0], "--model", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.endswith("dim.restored.png: gain (100%) [from the instruction]\n")
    assert (tmp_path / "dim.restored.png").is_file()


def test_add_task_refusals_happen_before_training(base_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs", darker)
    with pytest.raises(AddTaskError, match="already has a task 'denoise'"):
        add_task("denoise", pairs, tmp_path / "a", model=base_dir)
    with pytest.raises(AddTaskError, match="task name 'Bad Name'"):
        add_task("Bad Name", pairs, tmp_path / "a", model=base_dir)
    with pytest.raises(AddTaskError, match='denoise: "remove the noise" \\(\\d+%\\)'):
        add_task("gain", pairs, tmp_path / "a", model=base_dir, phrases=["remove the noise", "double the brightness"])
    (tmp_path / "clean").mkdir()
    Image.fromarray(np.zeros((72, 88, 3), np.uint8)).save(tmp_path / "clean" / "a.png")
    with pytest.raises(PairError, match="clean images only, no pairs"):
        add_task("gain", tmp_path / "clean", tmp_path / "a", model=base_dir, phrases=["double the brightness"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(AddTaskError, match="exists and is not empty"):
        add_task("gain", pairs, tmp_path / "full", model=base_dir)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.run").exists()
    assert main(["add-task", "denoise", "--model", str(base_dir), "--pairs", str(pairs), "--out", str(tmp_path / "b")]) == 2


def test_default_phrases_name_the_task():
    phrases = default_phrases("low_light")
    assert "fix the low light" in phrases and len(set(phrases)) == len(phrases) >= 5


def test_check_phrases_names_each_collision_and_its_task():
    from instruct_ipt.instruct import InstructionHead, default_encoder

    with pytest.raises(AddTaskError) as e:
        check_phrases(InstructionHead.default(), default_encoder(), ["remove the rain", "clear the fog", "add sparkle"])
    assert "derain: \"remove the rain\"" in str(e.value) and "dehaze: \"clear the fog\"" in str(e.value)
    assert "sparkle" not in str(e.value)

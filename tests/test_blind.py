"""Blind mode's multi-label classifier: samples with none, one or two degradations, detection in
restoration order, calibrated thresholds, and "nothing to do" for a clean photo."""

import io
import re
import typing
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from instruct_ipt import InstructIPT, RestorationPipeline
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import Degraded, make_degradation
from instruct_ipt.instruct.blind import (
    BlindDataset,
    DegradationClassifier,
    Peeling,
    calibrate_thresholds,
    train_classifier,
)

TASKS = ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


class _Mark:
    """A stand-in degradation for ``task``: adds ``step`` and logs the order of calls."""

    def __init__(self, task: str, step: float, log: list) -> None:
        self.task, self.step, self.log = task, step, log

    def __call__(self, clean, rng):
        self.log.append(self.task)
        return Degraded(clean + self.step)


def _rigged(tasks, logits, multilabel=True, thresholds=None) -> DegradationClassifier:
    """A classifier whose scores are ``logits`` whatever the image (weights 0, bias = logits)."""
    clf = DegradationClassifier(tasks, width=4, multilabel=multilabel, thresholds=thresholds)
    with torch.no_grad():
        clf.classifier.weight.zero_()
        clf.classifier.bias.copy_(torch.tensor(logits, dtype=torch.float32))
    return clf


def test_multilabel_samples_carry_none_one_or_two_degradations():
    log: list[str] = []
    ops = {"denoise": _Mark("denoise", 0.01, log), "dehaze": _Mark("dehaze", 0.1, log), "jpeg": _Mark("jpeg", 0.2, log)}
    photo = data.astronaut()[:64, :64]
    ds = BlindDataset([photo], ops, length=300, patch=16, context=32, soften=0.0, seed=1, clean_share=0.2, composite_share=0.4)
    counts = {0: 0, 1: 0, 2: 0}
    for i in range(len(ds)):
        del log[:]
        s = ds[i]
        present = [t for t, v in zip(ds.tasks, s["labels"]) if v == 1]
        counts[len(present)] += 1
        assert s["labels"].sum() == len(present) and len(set(log)) == len(log)  # each operator once
        assert sorted(log) == sorted(present)  # labels are what was applied...
        order = ["dehaze", "denoise", "jpeg"]  # ...in the physical order, whatever was drawn first
        assert log == sorted(log, key=order.index)
        assert s["task"] == (ds.tasks.index(present[0]) if len(present) == 1 else -1)
        assert torch.equal(ds[i]["input"], s["input"])  # deterministic per index
    assert 30 <= counts[0] <= 90 and 80 <= counts[2] <= 160 and counts[1] > 0, counts
    with pytest.raises(ValueError, match="add up to <= 1"):
        BlindDataset([photo], ops, length=1, clean_share=0.6, composite_share=0.6)


def test_single_label_training_is_refused_clean_and_composite_samples():
    ops = {t: make_degradation(t) for t in ("denoise", "jpeg")}
    with pytest.raises(ValueError, match="multi-label"):
        train_classifier([data.astronaut()[:48, :48]], ops, steps=1, batch_size=2, patch_size=16, context=16, clean_share=0.2)
    clf = train_classifier([data.astronaut()[:48, :48]], ops, steps=2, batch_size=4, patch_size=16, context=16,
                           multilabel=True, clean_share=0.3, composite_share=0.3)
    probs = clf.predict(data.astronaut()[:40, :40].astype(np.float32) / 255)
    assert clf.multilabel and set(probs) == {"denoise", "jpeg"} and all(0 < p < 1 for p in probs.values())


def test_detect_names_every_task_over_its_threshold_in_restoration_order():
    img = np.zeros((40, 40, 3), np.float32)
    # sigmoid(1) = 0.73, sigmoid(-1) = 0.27
    clf = _rigged(["dehaze", "denoise", "derain", "jpeg"], [1.0, 1.0, -1.0, 1.0], thresholds={"jpeg": 0.8})
    assert [t for t, _ in clf.detect(img)] == ["denoise", "dehaze"]  # jpeg under its own threshold; noise undone first
    assert clf.detect(img)[0][1] == pytest.approx(1 / (1 + np.exp(-1)))
    assert _rigged(["dehaze", "denoise"], [-2.0, -1.0]).detect(img) == []  # nothing there
    single = _rigged(["dehaze", "denoise"], [0.0, 1.0], multilabel=False)
    assert [t for t, _ in single.detect(img)] == ["denoise"]  # single-label: always the most likely one
    with pytest.raises(ValueError, match="unknown tasks: sharpen"):
        DegradationClassifier(["denoise"], thresholds={"sharpen": 0.3})


def test_calibrated_threshold_separates_images_with_and_without_the_task(monkeypatch):
    clf = DegradationClassifier(["denoise", "jpeg"], width=4, multilabel=True)
    # each "image" carries its own scores: (denoise, jpeg)
    monkeypatch.setattr(clf, "predict", lambda rgb: {"denoise": float(rgb[0]), "jpeg": float(rgb[1])})
    cases = [
        (np.array([0.70, 0.9]), ("denoise", "jpeg")),
        (np.array([0.35, 0.2]), ("denoise",)),
        (np.array([0.80, 0.1]), ("denoise",)),
        (np.array([0.30, 0.6]), ("jpeg",)),
        (np.array([0.10, 0.05]), ()),
        (np.array([0.20, 0.7]), ("jpeg",)),
    ]
    th = calibrate_thresholds(clf, cases)
    assert th["denoise"] == pytest.approx(0.325)  # between the highest absent (0.30) and lowest present (0.35)
    assert th["jpeg"] == pytest.approx(0.4)  # 0.2 absent, 0.6 present: the midpoint
    assert clf.thresholds == th
    with pytest.raises(ValueError, match="with and without"):
        calibrate_thresholds(clf, [(np.array([0.5, 0.5]), ("denoise",))])
    with pytest.raises(ValueError, match="multi-label"):
        calibrate_thresholds(DegradationClassifier(["denoise"], width=4), cases)


def test_multilabel_classifier_round_trip(tmp_path):
    clf = DegradationClassifier(["denoise", "jpeg"], width=4, multilabel=True, thresholds={"denoise": 0.31, "jpeg": 0.62})
    clf.save(tmp_path / "c.safetensors")
    back = DegradationClassifier.load(tmp_path / "c.safetensors")
    assert back.multilabel and back.thresholds == {"denoise": 0.31, "jpeg": 0.62}
    img = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    assert back.predict(img) == clf.predict(img)
    assert not DegradationClassifier.load(_saved_single(tmp_path)).multilabel


def test_a_primary_names_the_main_task_and_the_scores_add_extras_or_nothing(tmp_path):
    img = np.zeros((40, 40, 3), np.float32)
    tasks = ["dehaze", "denoise", "derain"]
    primary = _rigged(tasks, [0.0, 0.0, 3.0], multilabel=False)  # derain, whatever the image
    # multi-label scores 0.73 (dehaze), 0.27 (denoise), 0.5 (derain)
    clf = _rigged(tasks, [1.0, -1.0, 0.0], thresholds=dict.fromkeys(tasks, 0.6))
    clf.primary, clf.extra_thresholds = primary, {"dehaze": 0.9, "denoise": 0.2, "derain": 0.5}
    # something is there (dehaze over 0.6): main derain; denoise over its extra 0.2; dehaze not over 0.9
    assert [t for t, _ in clf.detect(img)] == ["derain", "denoise"]  # the measured order
    clf.thresholds = dict.fromkeys(tasks, 0.8)  # nothing over its presence threshold: a clean photo
    assert clf.detect(img) == []
    clf.thresholds = dict.fromkeys(tasks, 0.6)
    clf.save(tmp_path / "h.safetensors")
    back = DegradationClassifier.load(tmp_path / "h.safetensors")
    assert back.primary is not None and back.extra_thresholds == clf.extra_thresholds
    assert back.detect(img) == clf.detect(img)
    with pytest.raises(ValueError, match="single-label"):
        DegradationClassifier(tasks, width=4, multilabel=True, primary=clf)
    with pytest.raises(ValueError, match="primary"):
        DegradationClassifier(tasks, width=4, multilabel=True, extra_thresholds={"dehaze": 0.5})


def test_hybrid_calibration_finds_sets_plain_thresholds_cannot():
    from instruct_ipt.instruct.blind import choose_hybrid_thresholds, choose_thresholds, detected_sets

    tasks = ["a", "b"]
    # scores (a, b), the primary's choice, the truth: the scores alone confuse the single "b" for "a"
    probs = np.array([[0.1, 0.1], [0.7, 0.4], [0.6, 0.1], [0.8, 0.6]])
    main = np.array([0, 0, 1, 0])
    present = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], bool)
    plain = choose_thresholds(tasks, probs, present)
    plain_ok = (detected_sets(probs, np.array([plain[t] for t in tasks])) == present).all(1).sum()
    th, extra = choose_hybrid_thresholds(tasks, probs, present, main)
    found = detected_sets(probs, np.array([th[t] for t in tasks]), main, np.array([extra[t] for t in tasks]))
    assert plain_ok <= 3 and (found == present).all()
    assert th["a"] <= 0.6 and 0.6 < extra["a"] and 0.4 < extra["b"] <= 0.6


def test_singles_first_calibration_never_trades_a_single_for_pairs():
    from instruct_ipt.instruct.blind import choose_hybrid_thresholds, choose_thresholds, detected_sets

    tasks = ["a", "b"]
    # a clean photo, one with "a" alone whose "b" score (0.6) is above two pairs' (0.55, 0.58)
    probs = np.array([[0.1, 0.1], [0.9, 0.6], [0.9, 0.55], [0.9, 0.58]])
    present = np.array([[0, 0], [1, 0], [1, 1], [1, 1]], bool)

    def right(th):
        return (detected_sets(probs, np.array([th[t] for t in tasks])) == present).all(1)

    assert right(choose_thresholds(tasks, probs, present)).tolist() == [True, False, True, True]  # 3 of 4
    first = present.sum(1) == 1
    assert right(choose_thresholds(tasks, probs, present, first=first)).tolist() == [True, True, False, False]
    main = np.zeros(4, int)  # the primary names "a" everywhere: the extra threshold of "b" decides alike
    th, extra = choose_hybrid_thresholds(tasks, probs, present, main, first=first)
    found = detected_sets(probs, np.array([th[t] for t in tasks]), main, np.array([extra[t] for t in tasks]))
    assert (found == present).all(1).tolist() == [True, True, False, False] and extra["b"] > 0.6


def _saved_single(tmp_path):
    return DegradationClassifier(["denoise"], width=4).save(tmp_path / "s.safetensors")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return InstructIPT("tiny", tasks=TASKS).save_pretrained(tmp_path_factory.mktemp("model"))


def test_blind_mode_with_nothing_to_do_gives_the_pixels_back(model_dir, tmp_path, capsys):
    from instruct_ipt.instruct.blind import BLIND_FILE

    folder = tmp_path / "m"
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=_rigged(TASKS, [-3.0] * 6))
    pipe.save_pretrained(folder)
    assert DegradationClassifier.load(folder / BLIND_FILE).multilabel
    rgb = data.astronaut()[:40, :52]
    out, choice = pipe(rgb, return_choice=True)
    assert choice.tasks == [] and choice.nothing_to_do and np.array_equal(out, rgb)
    deep = (data.camera()[:30, :40].astype(np.uint16) * 257 + 3)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert main(["restore", str(tmp_path / "deep.png"), "--model", str(folder), "-o", str(tmp_path / "o")]) == 0
    assert "nothing to do, pixels unchanged [seen in the image (blind mode)]" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o/deep.restored.png")), deep)  # 16 bits, untouched


def test_blind_mode_runs_every_detected_task_in_order(model_dir, monkeypatch):
    logits = [2.0 if t in ("derain", "denoise") else -2.0 for t in TASKS]
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=_rigged(TASKS, logits))
    runs = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: runs.append(list(tasks)) or real_run(self, rgb, tasks, **k))
    _out, choice = pipe(data.astronaut()[:32, :32], return_choice=True)
    assert choice.tasks == ["derain", "denoise"] and choice.source == "blind" and runs == [["derain", "denoise"]]
    assert choice.describe() == "derain (88%), then denoise (88%) [seen in the image (blind mode)]"


# peeling: a single-label classifier names several degradations, or none, with the model's help -------------

class _Scene:
    """A stand-in for a photo and the restoration model: the image is constant, its value encodes
    which degradations are left (a bit per task), ``restore`` clears a task's bit and logs the call,
    and ``probs`` is what the classifier sees for each value."""

    BITS: typing.ClassVar[dict[str, int]] = {"denoise": 1, "derain": 2, "dehaze": 4}

    def __init__(self, probs: dict[int, dict[str, float]]) -> None:
        self.probs, self.calls = probs, []

    def image(self, *tasks: str, size: int = 40) -> np.ndarray:
        return np.full((size, size + 8, 3), sum(self.BITS[t] for t in tasks) / 8, np.float32)

    def restore(self, x: np.ndarray, task: str) -> np.ndarray:
        self.calls.append((task, x.shape[:2]))
        code = round(float(x.mean()) * 8)
        return np.full_like(x, (code & ~self.BITS[task]) / 8)

    def classifier(self, peeling: Peeling | None = None, clean_class: bool = False) -> DegradationClassifier:
        clf = DegradationClassifier(list(self.BITS), width=4, peeling=peeling, clean_class=clean_class)
        clf.predict = lambda rgb, **k: dict(self.probs[round(float(rgb.mean()) * 8)])
        return clf


def _scene() -> _Scene:
    return _Scene({
        0: {"denoise": 0.5, "derain": 0.2, "dehaze": 0.3},   # clean: noise is the best guess, unsure
        1: {"denoise": 0.9, "derain": 0.05, "dehaze": 0.05},  # noise
        2: {"denoise": 0.1, "derain": 0.8, "dehaze": 0.1},   # rain
        3: {"denoise": 0.3, "derain": 0.6, "dehaze": 0.1},   # rain + noise: rain dominates
        7: {"denoise": 0.2, "derain": 0.3, "dehaze": 0.5},   # all three: haze dominates
        5: {"denoise": 0.7, "derain": 0.1, "dehaze": 0.2},
        6: {"denoise": 0.1, "derain": 0.7, "dehaze": 0.2},
        4: {"denoise": 0.2, "derain": 0.1, "dehaze": 0.7},
    })


def test_peeling_names_what_is_left_after_each_removal_in_restoration_order():
    scene = _scene()
    clf = scene.classifier(Peeling({"denoise": 0.6, "derain": 0.5, "dehaze": 0.5}, dict.fromkeys(_Scene.BITS, 0.1), region=32,
                                   max_tasks=3))
    assert clf.detect(scene.image(), restore=scene.restore) == [] and scene.calls == []  # clean: under its start threshold
    assert clf.detect(scene.image("denoise"), restore=scene.restore) == [("denoise", 0.9)]
    # looked again on the central crop: haze is the best guess, but removing it changes nothing
    assert scene.calls == [("denoise", (32, 32)), ("dehaze", (32, 32))]
    scene.calls.clear()
    # rain first (it dominates), then noise is what is left; named in the measured order (derain, denoise)
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.6), ("denoise", 0.9)]
    assert [t for t, _ in scene.calls] == ["derain", "denoise", "dehaze"]
    scene.calls.clear()
    three = clf.detect(scene.image("derain", "denoise", "dehaze"), restore=scene.restore)
    assert sorted(t for t, _ in three) == ["dehaze", "denoise", "derain"]
    assert [t for t, _ in scene.calls] == ["dehaze", "derain", "denoise"]  # at max_tasks: nothing more computed
    clf.peeling.max_tasks = 2
    assert len(clf.detect(scene.image("derain", "denoise", "dehaze"), restore=scene.restore)) == 2
    clf.peeling.max_tasks = 1
    scene.calls.clear()
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.6)] and scene.calls == []
    clf.peeling.max_tasks = 3
    assert clf.detect(scene.image("derain", "denoise")) == [("derain", 0.6)]  # no model to peel with: the main one only
    clf.peeling.further["denoise"] = 0.2  # removing the noise changes the crop by 0.125: not enough now
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.6)]
    del clf.peeling.further["denoise"]  # nor is a task that may not come after the first
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.6)]
    no_peeling = scene.classifier()
    assert no_peeling.detect(scene.image(), restore=scene.restore) == [("denoise", 0.5)]  # as before: always one task
    no_gate = scene.classifier(Peeling({}, {"denoise": 0.1}))
    scene.calls.clear()
    assert no_gate.detect(scene.image(), restore=scene.restore) == [("denoise", 0.5)]  # no start thresholds: always acts
    assert scene.calls == [("denoise", (40, 48))]  # an image smaller than the region: looked at whole


def test_peeling_round_trips_and_belongs_to_a_single_label_classifier(tmp_path):
    peeling = Peeling({"denoise": 0.61, "jpeg": 0.4}, {"denoise": 0.028}, region=256, max_tasks=2)
    back = DegradationClassifier.load(DegradationClassifier(["denoise", "jpeg"], width=4, peeling=peeling).save(tmp_path / "p.safetensors"))
    assert back.peeling == peeling and not back.multilabel
    assert "peel_first_change" not in peeling.to_meta()  # files without it read as before
    firsts = Peeling({}, {"denoise": 0.028}, first_change={"denoise": 0.0131})
    back = DegradationClassifier.load(DegradationClassifier(["denoise", "jpeg"], width=4, peeling=firsts).save(tmp_path / "f.safetensors"))
    assert back.peeling == firsts and back.peeling.first_change == {"denoise": 0.0131}
    with pytest.raises(ValueError, match="unknown tasks: derain"):
        DegradationClassifier(["denoise", "jpeg"], width=4, peeling=Peeling({}, {}, first_change={"derain": 0.01}))
    assert DegradationClassifier.load(_saved_single(tmp_path)).peeling is None
    with pytest.raises(ValueError, match="single-label"):
        DegradationClassifier(["denoise", "jpeg"], width=4, multilabel=True, peeling=peeling)
    with pytest.raises(ValueError, match="unknown tasks: derain"):
        DegradationClassifier(["denoise", "jpeg"], width=4, peeling=Peeling({}, {"derain": 0.5}))
    with pytest.raises(ValueError, match="region"):
        Peeling({}, {}, region=8)


def test_peeling_calibration_puts_single_degradations_first():
    from instruct_ipt.instruct.blind import choose_peeling_thresholds, peeled_sets

    tasks = ["a", "b"]
    # per image: the first step's task and probability, the second step's task and change, the truth:
    # two singles, a pair, a clean image, and two pairs whose second change is below the single's 0.03
    first, first_p = np.array([0, 1, 0, 0, 0, 0]), np.array([0.9, 0.8, 0.9, 0.3, 0.9, 0.9])
    second, change = np.array([1, 0, 1, 1, 1, 1]), np.array([0.03, 0.01, 0.09, 0.02, 0.025, 0.027])
    present = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 1], [1, 1]], bool)

    def found(peeling):
        vec = lambda m, default: np.array([m.get(t, default) for t in tasks])
        return (peeled_sets(first, first_p, second, change, vec(peeling.start, 0.0), vec(peeling.further, 2.0)) == present).all(1)

    counted = choose_peeling_thresholds(tasks, first, first_p, second, change, present)
    assert found(counted).tolist() == [False, True, True, True, True, True]  # 5 of 6, at the cost of a single
    peeling = choose_peeling_thresholds(tasks, first, first_p, second, change, present, first_images=present.sum(1) == 1)
    assert found(peeling).tolist() == [True, True, True, True, False, False]  # singles first: the look-alikes give way
    assert 0.3 < peeling.start["a"] <= 0.9 and 0.03 < peeling.further["b"] <= 0.09 and peeling.further["a"] > 0.01
    no_gate = choose_peeling_thresholds(tasks, first, first_p, second, change, present, further_tasks=["b"], gate=False)
    assert no_gate.start == {} and set(no_gate.further) == {"b"} and not found(no_gate)[3]  # the clean image gets a task
    with pytest.raises(ValueError, match="one degradation"):
        choose_peeling_thresholds(tasks, first[:2], first_p[:2], second[:2], change[:2], present[:2])
    with pytest.raises(ValueError, match="not among the classifier's: c"):
        choose_peeling_thresholds(tasks, first, first_p, second, change, present, further_tasks=["c"])
    # a third task never seen second: left out of `further` (never named after the first), not given 0 (always)
    three = choose_peeling_thresholds([*tasks, "c"], first, first_p, second, change, np.pad(present, ((0, 0), (0, 1))))
    assert set(three.further) == {"a", "b"} and three.start["c"] == 0.5


def test_peeling_calibration_breaks_ties_with_the_further_tests_own_answers():
    """Images named wrongly whatever a further threshold is still say where that threshold belongs:
    among thresholds equal on exact sets, the calibration takes those that answer "is it left?"
    right most often there too - not the middle candidate, which here would name `a` on them."""
    from instruct_ipt.instruct.blind import choose_peeling_thresholds, peeled_sets

    tasks = ["a", "b", "c"]
    # b found first every time; then a's change: none on the four b-only images (0.005-0.012), a
    # left on the two pairs (0.03, 0.04); the two c-only images are taken for b (wrong either way),
    # and a's change there (0.018, 0.024) carries no a
    first = np.array([1, 1, 1, 1, 1, 1, 1, 1])
    first_p = np.full(8, 0.9)
    second = np.zeros(8, int)
    change = np.array([0.005, 0.008, 0.010, 0.012, 0.03, 0.04, 0.018, 0.024])
    present = np.array([[0, 1, 0]] * 4 + [[1, 1, 0]] * 2 + [[0, 0, 1]] * 2, bool)
    peeling = choose_peeling_thresholds(tasks, first, first_p, second, change, present, gate=False)
    found = peeled_sets(first, first_p, second, change, np.zeros(3), np.array([peeling.further["a"], 2.0, 2.0]))
    assert (found == present).all(1).tolist() == [True] * 6 + [False] * 2  # the best exact-set count, 6 of 8
    assert 0.024 < peeling.further["a"] < 0.03  # (the middle of the equal candidates, 0.021, says "a" at 0.024)

def test_calibrate_peeling_walks_each_case_twice_and_sets_the_thresholds():
    from instruct_ipt.instruct.blind import calibrate_peeling

    scene = _scene()
    clf = scene.classifier()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise"))]
    peeling = calibrate_peeling(clf, cases, scene.restore, region=32, max_tasks=2)
    assert clf.peeling is peeling and (peeling.region, peeling.max_tasks) == (32, 2)
    assert len(scene.calls) == 2 * len(cases)  # the first step's restoration, and the second's, for its change
    assert [clf.detect(rgb, restore=scene.restore) == [] for rgb, _ in cases] == [True, False, False, False]
    assert [{t for t, _ in clf.detect(rgb, restore=scene.restore)} for rgb, _ in cases[1:]] == [{"denoise"}, {"derain"}, {"derain", "denoise"}]
    with pytest.raises(ValueError, match="single-label"):
        calibrate_peeling(DegradationClassifier(["denoise"], width=4, multilabel=True), cases, scene.restore)
    scene.calls.clear()
    for bad, match in [({"region": 16}, "region 16"), ({"further_tasks": ["jpeg"]}, "not among the classifier's: jpeg")]:
        with pytest.raises(ValueError, match=match):
            calibrate_peeling(scene.classifier(), cases, scene.restore, **bad)
    with pytest.raises(ValueError, match="one degradation and with none or two"):
        calibrate_peeling(scene.classifier(), cases[1:3], scene.restore)
    assert scene.calls == []  # refused before any restoration


def test_one_walk_serves_several_threshold_choices():
    from instruct_ipt.instruct.blind import WALK_KEYS, calibrate_peeling, choose_peeling, peel_walks, walked_sets

    scene = _scene()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise"))]
    walks = peel_walks(scene.classifier(), cases, scene.restore, region=32)
    assert len(scene.calls) == 2 * len(cases) and set(walks) == set(WALK_KEYS)
    assert walks["present"].tolist() == [[False] * 3, [True, False, False], [False, True, False], [True, True, False]]
    scene.calls.clear()
    for further in (None, ["denoise"], ["dehaze"]):  # no restoration: the choice reads the walk only
        chosen = choose_peeling(scene.classifier(), walks, region=32, further_tasks=further)
        walked = calibrate_peeling(scene.classifier(), cases, scene.restore, region=32, further_tasks=further)
        assert chosen == walked
    assert len(scene.calls) == 3 * 2 * len(cases)  # only calibrate_peeling restored
    # what the walk says each threshold choice names is what detect names, restoring again
    for peeling in (Peeling({}, {"denoise": 0.1}, region=32), Peeling({"denoise": 0.95}, {"denoise": 0.1}, region=32),
                    Peeling({}, {"denoise": 0.1}, region=32, max_tasks=1), Peeling({}, {"denoise": 0.2}, region=32)):
        clf = scene.classifier(peeling)
        named = [{t for t, _ in clf.detect(rgb, restore=scene.restore)} for rgb, _ in cases]
        assert [set(np.array(clf.tasks)[row]) for row in walked_sets(clf, walks)] == named
    with pytest.raises(ValueError, match="no peeling"):
        walked_sets(scene.classifier(), walks)
    # naming only dehaze after the first, the pair cannot be found: no further threshold for denoise
    assert "denoise" not in choose_peeling(scene.classifier(), walks, further_tasks=["dehaze"]).further
    with pytest.raises(ValueError, match="lack present"):
        choose_peeling(scene.classifier(), {k: v for k, v in walks.items() if k != "present"})
    with pytest.raises(ValueError, match="walks for 2 tasks"):
        choose_peeling(scene.classifier(), walks | {"present": walks["present"][:, :2]})
    with pytest.raises(ValueError, match="carry jpeg: not among"):
        peel_walks(scene.classifier(), [(scene.image(), ("jpeg",))], scene.restore, region=32)


def test_a_first_task_whose_removal_changes_nothing_is_not_named():
    scene = _scene()
    clf = scene.classifier(Peeling({}, {"denoise": 0.1}, region=32, first_change={"denoise": 0.05}))
    assert clf.detect(scene.image(), restore=scene.restore) == []  # taken for noise, but denoising changes nothing
    assert scene.calls == [("denoise", (32, 32))]  # one restoration: the one peeling looks at again anyway
    assert clf.detect(scene.image("denoise"), restore=scene.restore) == [("denoise", 0.9)]  # changes by 0.125
    assert clf.detect(scene.image("derain"), restore=scene.restore) == [("derain", 0.8)]  # not in first_change: acts
    assert clf.detect(scene.image()) == [("denoise", 0.5)]  # no model to check with: the main task, as before
    clf.peeling.first_change["denoise"] = 0.2
    assert clf.detect(scene.image("denoise"), restore=scene.restore) == []
    from instruct_ipt.instruct.blind import peeled_sets

    with pytest.raises(ValueError, match="first_change"):  # a threshold with nothing to compare it to
        peeled_sets(np.array([0]), np.array([0.9]), np.array([1]), np.array([0.1]), np.zeros(2), np.zeros(2),
                    first_min=np.zeros(2))


def test_peeling_calibrates_a_first_change_threshold_from_the_walk():
    from instruct_ipt.instruct.blind import check_peeling_settings, choose_peeling, peel_walks, walked_sets

    scene = _scene()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise"))]
    walks = peel_walks(scene.classifier(), cases, scene.restore, region=32)
    assert walks["first_change"].tolist() == [0.0, 0.125, 0.25, 0.25]  # clean: denoise first, and it changes nothing
    plain = scene.classifier()
    choose_peeling(plain, walks, region=32, gate=False)
    assert not (walked_sets(plain, walks) == walks["present"]).all(1)[0]  # the clean image gets denoise
    gated = scene.classifier()
    peeling = choose_peeling(gated, walks, region=32, gate=False, first_tasks=["denoise", "dehaze"])
    assert set(peeling.first_change) == {"denoise"}  # dehaze never came first: no threshold, it always acts
    assert 0.0 < peeling.first_change["denoise"] <= 0.125
    assert (walked_sets(gated, walks) == walks["present"]).all()
    # what the walk says is what detect names, restoring again
    assert [{t for t, _ in gated.detect(rgb, restore=scene.restore)} for rgb, _ in cases] == [set(), {"denoise"}, {"derain"},
                                                                                            {"derain", "denoise"}]
    with pytest.raises(ValueError, match="first tasks not among the classifier's: jpeg"):
        choose_peeling(scene.classifier(), walks, first_tasks=["jpeg"])
    with pytest.raises(ValueError, match="first tasks not among the classifier's: jpeg"):
        check_peeling_settings(scene.classifier(), first_tasks=["jpeg"])
    with pytest.raises(ValueError, match="lack first_change"):  # walks recorded before the first step's change was
        choose_peeling(scene.classifier(), {k: v for k, v in walks.items() if k != "first_change"})


def test_walks_round_trip_and_a_file_for_other_settings_is_refused(tmp_path):
    from instruct_ipt.instruct.blind import WALK_KEYS, load_walks, save_walks

    rng = np.random.default_rng(0)
    walks = {"first": np.array([0, 2, 1]), "first_prob": rng.random(3), "first_change": rng.random(3), "second": np.array([1, 0, 2]),
             "second_change": rng.random(3), "first_clean": np.full(3, np.nan), "second_beats": np.array([True, False, True]),
             "present": rng.random((3, 3)) > 0.5, "blocks": 1 + rng.random(3)}
    path = tmp_path / "walks.npz"
    save_walks(path, walks, key='{"seeds": 2}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walks.npz"]  # written whole, no temporary left
    back = load_walks(path, '{"seeds": 2}')
    with pytest.raises(ValueError, match="older version .*case"):  # an extra array asked for and not there
        load_walks(path, '{"seeds": 2}', extra=("case",))
    save_walks(path, walks | {"case": np.array(["a", "b", "c"])}, '{"seeds": 2}')
    assert load_walks(path, '{"seeds": 2}', extra=("case",))["case"].tolist() == ["a", "b", "c"]
    assert set(back) == set(WALK_KEYS)
    for k in WALK_KEYS:
        np.testing.assert_array_equal(back[k], walks[k])
    with pytest.raises(ValueError, match="walks for another classifier"):
        load_walks(path, '{"seeds": 3}')
    np.savez(tmp_path / "other.npz", key=np.array('{"seeds": 2}'), first=walks["first"])  # keys missing
    (tmp_path / "text.npz").write_text("not numpy at all")
    np.save(tmp_path / "array.npy", walks["first"])  # a plain array, no key
    for other in ("text.npz", "array.npy"):
        with pytest.raises(ValueError, match="not a walks file"):
            load_walks(tmp_path / other, '{"seeds": 2}')
    with pytest.raises(ValueError, match="older version .*first_prob"):
        load_walks(tmp_path / "other.npz", '{"seeds": 2}')
    save_walks(tmp_path / "before-blocks.npz", {k: v for k, v in walks.items() if k != "blocks"}, '{"seeds": 2}')
    with pytest.raises(ValueError, match="older version [(]no blocks[)]"):  # walked before the block grid was recorded
        load_walks(tmp_path / "before-blocks.npz", '{"seeds": 2}')
    np.savez(tmp_path / "nokey.npz", **walks)  # the arrays without their key
    with pytest.raises(ValueError, match="not a walks file"):
        load_walks(tmp_path / "nokey.npz", '{"seeds": 2}')
    # damaged files (a killed copy, a full disk): one ValueError naming the file, never zipfile's or numpy's own
    whole = path.read_bytes()
    damaged = {"empty.npz": b"", "half.npz": whole[: len(whole) // 2], "header.npz": whole[:40]}
    flipped = bytearray(whole)
    at = whole.index(walks["first_prob"].tobytes())  # one array's bytes (stored, not compressed): its CRC fails on reading
    flipped[at] ^= 0xFF
    damaged["flipped.npz"] = bytes(flipped)
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: .*(not a walks file|damaged walks file).*walk again"):
            load_walks(tmp_path / name, '{"seeds": 2}')


def test_a_calibrated_classifier_saves_and_loads_with_its_peeling(tmp_path):
    from instruct_ipt.instruct.blind import calibrate_peeling

    scene = _scene()
    clf = scene.classifier()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain", "denoise"), ("derain", "denoise"))]
    calibrate_peeling(clf, cases, scene.restore, region=32)
    back = DegradationClassifier.load(clf.save(tmp_path / "c.safetensors"))
    assert back.peeling == clf.peeling and back.peeling.max_tasks == 2


def test_peeling_records_its_model_and_its_choices_calibrate_the_same_again(tmp_path):
    from instruct_ipt.instruct.blind import choose_peeling, peel_walks

    scene = _scene()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise")), (scene.image("dehaze"), ("dehaze",))]
    clf = scene.classifier()
    walks = peel_walks(clf, cases, scene.restore, region=32)
    chosen = choose_peeling(clf, walks, region=32, max_tasks=3, further_tasks=["denoise"], first_tasks=["denoise"],
                            suggest_tasks=["dehaze"], model="a" * 64)
    assert chosen.model == "a" * 64 and chosen.further and chosen.first_change and chosen.suggest
    assert DegradationClassifier.load(clf.save(tmp_path / "c.safetensors")).peeling == chosen
    assert chosen.choices() == {"further_tasks": ["denoise"], "first_tasks": ["denoise"], "suggest_tasks": list(chosen.suggest),
                                "gate": True, "jpeg_blocks": False, "region": 32, "max_tasks": 3}
    again = scene.classifier()
    assert choose_peeling(again, walks, **chosen.choices(), model="b" * 64) == replace(chosen, model="b" * 64)
    ungated = choose_peeling(scene.classifier(), walks, gate=False)
    assert ungated.choices()["gate"] is False and choose_peeling(scene.classifier(), walks, **ungated.choices()) == ungated


def test_a_task_asked_for_but_not_seen_in_one_walk_is_asked_again_by_the_next_calibration(tmp_path):
    # The thresholds alone lose it: rain never comes second in this walk, so it gets no further
    # threshold; a recalibration asking only what has one (calibrate-blind, with the next model)
    # would never name rain after the first task again, whatever that model's walk shows.
    from instruct_ipt.instruct.blind import choose_peeling, peel_walks

    scene = _scene()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain", "denoise"), ("derain", "denoise")),
             (scene.image("dehaze"), ("dehaze",))]
    clf = scene.classifier()
    walks = peel_walks(clf, cases, scene.restore, region=32)
    chosen = choose_peeling(clf, walks, region=32, further_tasks=["denoise", "derain"])
    assert list(chosen.further) == ["denoise"]
    back = DegradationClassifier.load(clf.save(tmp_path / "c.safetensors")).peeling
    for peeling in (chosen, back):
        assert peeling.choices()["further_tasks"] == ["denoise", "derain"]
    assert back.asked == chosen.asked and back == chosen
    every = choose_peeling(scene.classifier(), walks, region=32)  # every task may come second: asked as None
    assert every.choices()["further_tasks"] is None
    older = replace(chosen, asked=None)  # a file saved before the choices were recorded: rebuilt from the thresholds
    assert older == chosen and older.choices()["further_tasks"] == list(chosen.further)


def test_blind_mode_warns_when_its_peeling_was_calibrated_for_another_model(model_dir, monkeypatch):
    import warnings

    from instruct_ipt.instruct.blind import Detection, UncalibratedPeelingWarning
    from instruct_ipt.io import weights_digest

    model = InstructIPT.from_pretrained(model_dir)
    monkeypatch.setattr(DegradationClassifier, "examine", lambda self, rgb, probs=None, restore=None: Detection([("denoise", 0.8)]))
    rgb = data.astronaut()[:32, :32]

    def caught(recorded: str | None) -> list:
        clf = DegradationClassifier(TASKS, width=4, peeling=Peeling({}, {}, region=32, model=recorded))
        pipe = RestorationPipeline(model, classifier=clf)
        model.double()  # (cast after the pipeline was made: still the weights the thresholds were calibrated with)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            pipe.choose(rgb)
        model.float()
        return [w for w in seen if issubclass(w.category, UncalibratedPeelingWarning)]

    assert len(caught("0" * 64)) == 1  # another model's thresholds
    assert caught(weights_digest(model)) == [] and caught(None) == []  # this model's; none recorded (older files)
    calibrated = weights_digest(model)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    assert len(caught(calibrated)) == 1  # the same architecture, other weights
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=DegradationClassifier(
        TASKS, width=4, peeling=Peeling({}, {}, region=32, model=weights_digest(InstructIPT.from_pretrained(model_dir)))))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedPeelingWarning)
        pipe.choose(rgb)
        pipe.model = model  # replaced: its own weights are looked at
        with pytest.raises(UncalibratedPeelingWarning, match="calibrated with another restoration model"):
            pipe.choose(rgb)


def test_the_cli_says_once_per_run_that_blind_mode_is_calibrated_for_another_model(model_dir, tmp_path, capsys):
    from instruct_ipt.io import weights_digest

    for name, img in (("a.png", data.astronaut()[:40, :48]), ("b.png", data.chelsea()[:40, :48])):
        Image.fromarray(img).save(tmp_path / name)
    model = InstructIPT.from_pretrained(model_dir)
    message = "instruct-ipt restore: warning: blind mode's peeling thresholds were calibrated with another restoration model"
    for i, (recorded, warned) in enumerate((("0" * 64, 1), (weights_digest(model), 0), ("0" * 64, 1))):  # (again: each run)
        clf = _rigged_clean(TASKS, [0.0] * 6 + [3.0], Peeling({}, {}, region=32, clean=0.5, model=recorded))
        RestorationPipeline(model, classifier=clf).save_pretrained(tmp_path / f"m{i}")
        assert main(["restore", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tmp_path / f"m{i}"),
                     "-o", str(tmp_path / f"o{i}")]) == 0
        assert capsys.readouterr().err.count(message) == warned


def test_blind_mode_peels_with_the_pipelines_model(model_dir, monkeypatch):
    clf = DegradationClassifier(TASKS, width=4, peeling=Peeling({}, {"denoise": 0.0}, region=32))
    seen = iter([{"derain": 0.9}, {"denoise": 0.8}, {"dehaze": 0.6}])  # main: rain; after removing it: noise; then haze
    clf.predict = lambda rgb, **k: dict.fromkeys(TASKS, 0.02) | next(seen)
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=clf)
    runs = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: runs.append((list(tasks), rgb.shape[:2])) or real_run(self, rgb, tasks, **k))
    _out, choice = pipe(data.astronaut()[:48, :64], return_choice=True)
    assert choice.tasks == ["derain", "denoise"] and choice.source == "blind"  # haze may not come after the first
    assert runs == [(["derain"], (32, 32)), (["denoise"], (32, 32)), (["derain", "denoise"], (48, 64))]


def test_blind_mode_peels_among_the_models_tasks_only(model_dir, monkeypatch, tmp_path):
    partial = InstructIPT("tiny", tasks=["derain", "dehaze"])  # no denoise: the classifier's favourite is out of reach
    clf = DegradationClassifier(TASKS, width=4, peeling=Peeling({}, dict.fromkeys(TASKS, 0.0), region=32))
    seen = iter([{"denoise": 0.9, "derain": 0.5}, {"denoise": 0.9, "dehaze": 0.4}])
    clf.predict = lambda rgb, **k: dict.fromkeys(TASKS, 0.01) | next(seen)
    pipe = RestorationPipeline(partial, classifier=clf)
    restored = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: restored.extend(tasks) or real_run(self, rgb, tasks, **k))
    _out, choice = pipe(data.astronaut()[:40, :40], return_choice=True)
    assert set(choice.tasks) == {"derain", "dehaze"} and set(restored) <= {"derain", "dehaze"}


# a clean class: "nothing to do" learnt from clean photos -------------------------------------------------


def test_a_clean_class_is_learnt_from_clean_samples_on_top_of_a_trained_classifier(tmp_path):
    from instruct_ipt.instruct.blind import CLEAN

    ops = {t: make_degradation(t) for t in ("denoise", "jpeg")}
    photo = data.astronaut()[:48, :48]
    init = train_classifier([photo], ops, steps=2, batch_size=4, patch_size=16, context=16)
    clf = train_classifier([photo], ops, steps=40, batch_size=8, patch_size=16, context=16, lr=1e-2, init=init,
                           clean_class=True, clean_share=1.0)  # every sample clean: the clean class must win
    assert clf.classes == ["denoise", "jpeg", CLEAN] and clf.clean_class and not clf.multilabel
    probs = clf.predict(photo[:40, :40].astype(np.float32) / 255)
    assert list(probs) == clf.classes and sum(probs.values()) == pytest.approx(1.0) and probs[CLEAN] > 0.9
    back = DegradationClassifier.load(clf.save(tmp_path / "c.safetensors"))
    assert back.classes == clf.classes and back.predict(photo[:40, :40].astype(np.float32) / 255) == probs
    # the task rows start from the trained classifier's (the features too); the clean row starts fresh
    start = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, lr=1e-12, init=init,
                             clean_class=True, clean_share=0.5)
    assert torch.allclose(start.classifier.weight[:2], init.classifier.weight, atol=1e-6)
    assert torch.allclose(start.features[0].weight, init.features[0].weight, atol=1e-6)
    for bad, match in [({"clean_share": 0.2}, "clean class"), ({"clean_class": True}, "clean_share"),
                       ({"clean_class": True, "clean_share": 0.2, "composite_share": 0.2}, "composite")]:
        with pytest.raises(ValueError, match=match):
            train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, **bad)
    # from a classifier with a clean class to a multi-label one: its task rows carry over, its clean row does not
    ml = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, lr=1e-12, init=clf,
                          multilabel=True, clean_share=0.5)
    assert ml.classes == ["denoise", "jpeg"] and torch.allclose(ml.classifier.weight, clf.classifier.weight[:2], atol=1e-6)
    with pytest.raises(ValueError, match="without a clean class"):
        DegradationClassifier(["denoise", "jpeg"], width=4, multilabel=True).attach_primary(clf)
    with pytest.raises(ValueError, match="single-label"):
        DegradationClassifier(["denoise"], width=4, multilabel=True, clean_class=True)
    with pytest.raises(ValueError, match="names the clean class"):
        DegradationClassifier(["denoise", CLEAN], width=4)


def _rigged_clean(tasks, logits, peeling=None) -> DegradationClassifier:
    clf = DegradationClassifier(tasks, width=4, clean_class=True, peeling=peeling)
    with torch.no_grad():
        clf.classifier.weight.zero_()
        clf.classifier.bias.copy_(torch.tensor(logits, dtype=torch.float32))
    return clf


def test_a_clean_class_says_nothing_to_do_when_it_wins(model_dir, tmp_path):
    img = np.zeros((40, 40, 3), np.float32)
    tasks = ["dehaze", "denoise"]
    assert _rigged_clean(tasks, [0.0, 1.0, 2.0]).detect(img) == []  # clean is the most likely class
    named = _rigged_clean(tasks, [0.0, 2.0, 1.0]).detect(img)
    assert [t for t, _ in named] == ["denoise"] and named[0][1] == pytest.approx(np.exp(2) / (1 + np.exp(2) + np.exp(1)))
    # with peeling, its calibrated threshold decides instead: clean at 0.42 is the most likely, but under 0.5
    unsure = [0.0, np.log(0.38 / 0.20), np.log(0.42 / 0.20)]
    assert _rigged_clean(tasks, unsure).detect(img) == []
    assert [t for t, _ in _rigged_clean(tasks, unsure, Peeling({}, {}, clean=0.5)).detect(img)] == ["denoise"]
    assert _rigged_clean(tasks, unsure, Peeling({}, {}, clean=0.4)).detect(img) == []
    with pytest.raises(ValueError, match="needs a classifier with a clean class"):
        DegradationClassifier(tasks, width=4, peeling=Peeling({}, {}, clean=0.5))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Peeling({}, {}, clean=1.5)
    peeling = Peeling({}, {"denoise": 0.02}, clean=0.47)
    back = DegradationClassifier.load(_rigged_clean(tasks, [0.0, 0.0, 0.0], peeling).save(tmp_path / "p.safetensors"))
    assert back.peeling == peeling and back.clean_class
    # the pipeline keeps the clean class among the model's tasks: nothing to do, pixels back
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=_rigged_clean(TASKS, [0.0] * 6 + [3.0]))
    rgb = data.astronaut()[:40, :52]
    out, choice = pipe(rgb, return_choice=True)
    assert choice.tasks == [] and choice.nothing_to_do and np.array_equal(out, rgb)


def test_with_a_clean_class_a_further_task_must_be_more_likely_than_clean():
    scene = _Scene({
        0: {"denoise": 0.1, "derain": 0.1, "dehaze": 0.2, "clean": 0.6},
        2: {"denoise": 0.05, "derain": 0.8, "dehaze": 0.05, "clean": 0.1},  # rain
        3: {"denoise": 0.3, "derain": 0.5, "dehaze": 0.1, "clean": 0.1},    # rain + noise
        1: {"denoise": 0.6, "derain": 0.05, "dehaze": 0.05, "clean": 0.3},  # noise
    })
    clf = scene.classifier(Peeling({}, {"denoise": 0.1, "dehaze": 0.1}, region=32), clean_class=True)
    assert clf.detect(scene.image(), restore=scene.restore) == [] and scene.calls == []
    # after the rain: noise (0.6) beats clean (0.3), and removing it changes the crop by 0.125
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.5), ("denoise", 0.6)]
    scene.probs[1] = {"denoise": 0.3, "derain": 0.05, "dehaze": 0.05, "clean": 0.6}  # a little noise, or none: clean wins
    scene.calls.clear()
    assert clf.detect(scene.image("derain", "denoise"), restore=scene.restore) == [("derain", 0.5)]
    assert scene.calls == [("derain", (32, 32))]  # noise looked at, not removed: stopped before its change is needed
    steps = clf.peel_steps(scene.image("derain", "denoise"), clf.predict(scene.image("derain", "denoise")), scene.restore)
    one, two = next(steps), next(steps)
    assert (one.task, one.clean, two.task, two.prob, two.clean) == ("derain", 0.1, "denoise", 0.3, 0.6)
    assert "clean" not in {one.task, two.task, next(steps).task}


def test_peeling_calibration_with_a_clean_class_gates_on_it():
    from dataclasses import replace

    from instruct_ipt.instruct.blind import calibrate_peeling, choose_peeling_thresholds, peel_walks, walked_sets

    tasks = ["a", "b"]
    # a clean image (clean 0.7), two singles (clean 0.2, 0.45), a pair; the second single's second task
    # has a large change but does not beat clean, the pair's does
    first, first_p, first_clean = np.array([0, 1, 0, 0]), np.array([0.25, 0.5, 0.4, 0.8]), np.array([0.7, 0.2, 0.45, 0.1])
    second, change, beats = np.array([1, 0, 1, 1]), np.array([0.01, 0.01, 0.09, 0.08]), np.array([False, False, False, True])
    present = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], bool)
    peeling = choose_peeling_thresholds(tasks, first, first_p, second, change, present, first_images=present.sum(1) == 1,
                                        first_clean=first_clean, second_beats=beats)
    assert peeling.start == {} and 0.45 < peeling.clean <= 0.7  # the clean image gated, both singles not
    assert 0.01 < peeling.further["b"] <= 0.08
    argmax = choose_peeling_thresholds(tasks, first, first_p, second, change, present, gate=False,
                                       first_clean=first_clean, second_beats=beats)
    assert argmax.clean is None and argmax.start == {}
    with pytest.raises(ValueError, match="both first_clean and second_beats"):
        choose_peeling_thresholds(tasks, first, first_p, second, change, present, first_clean=first_clean)
    scene = _Scene({
        0: {"denoise": 0.3, "derain": 0.1, "dehaze": 0.1, "clean": 0.5},
        1: {"denoise": 0.7, "derain": 0.05, "dehaze": 0.05, "clean": 0.2},
        2: {"denoise": 0.1, "derain": 0.7, "dehaze": 0.1, "clean": 0.1},
        3: {"denoise": 0.3, "derain": 0.6, "dehaze": 0.05, "clean": 0.05},
    })
    clf = scene.classifier(clean_class=True)
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise"))]
    calibrated = calibrate_peeling(clf, cases, scene.restore, region=32)
    assert 0.2 < calibrated.clean <= 0.5 and calibrated.start == {}
    assert [{t for t, _ in clf.detect(rgb, restore=scene.restore)} for rgb, _ in cases] == [set(), {"denoise"}, {"derain"}, {"derain", "denoise"}]
    walks = peel_walks(clf, cases, scene.restore, region=32)
    seen = []
    for gate in (calibrated.clean, 0.15, 0.6, None):  # the walk's sets are detect's, at any clean gate
        clf.peeling = replace(calibrated, clean=gate)
        named = [{t for t, _ in clf.detect(rgb, restore=scene.restore)} for rgb, _ in cases]
        assert [set(np.array(clf.tasks)[row]) for row in walked_sets(clf, walks)] == named
        seen.append(named)
    assert seen[1][1] == set() and seen[2][0] == {"denoise"}  # 0.15 gates the noise photo; 0.6 lets the clean one through


def test_peeling_calibration_counts_clean_images_first_only_with_a_clean_class():
    from instruct_ipt.instruct.blind import calibrate_peeling

    # a clean photo (twice, as two calibration seeds) whose clean probability, 0.6, is under that
    # of a faint-noise photo, 0.7: one gate cannot be right for all three
    scene = _Scene({
        0: {"denoise": 0.3, "derain": 0.05, "dehaze": 0.05, "clean": 0.6},
        1: {"denoise": 0.25, "derain": 0.03, "dehaze": 0.02, "clean": 0.7},
        2: {"denoise": 0.1, "derain": 0.7, "dehaze": 0.1, "clean": 0.1},
        3: {"denoise": 0.3, "derain": 0.6, "dehaze": 0.05, "clean": 0.05},
    })
    cases = [(scene.image(), ()), (scene.image(), ()), (scene.image("denoise"), ("denoise",)),
             (scene.image("derain"), ("derain",)), (scene.image("derain", "denoise"), ("derain", "denoise"))]
    peeling = calibrate_peeling(scene.classifier(clean_class=True), cases, scene.restore, region=32)
    assert 0.1 < peeling.clean <= 0.6  # two clean photos outweigh the faint single
    # without a clean class, singles alone come first: the start gate (denoise 0.3 on the clean photo,
    # 0.25 on the faint one) keeps the faint noise photo rather than the clean ones
    for probs in scene.probs.values():
        del probs["clean"]
    start = calibrate_peeling(scene.classifier(), cases, scene.restore, region=32).start
    assert start["denoise"] <= 0.25


def test_peeling_settings_are_checked_before_any_walk():
    from instruct_ipt.instruct.blind import check_peeling_settings

    clf = DegradationClassifier(["denoise", "derain"], width=4)
    check_peeling_settings(clf, region=64, further_tasks=["derain"])  # fine: returns quietly
    for bad, match in [({"region": 16}, "region 16"), ({"max_tasks": 0}, "max_tasks 0"),
                       ({"further_tasks": ["dehaze"]}, "not among the classifier's: dehaze .it knows denoise, derain")]:
        with pytest.raises(ValueError, match=match):
            check_peeling_settings(clf, **bad)
    with pytest.raises(ValueError, match="two or more tasks"):
        check_peeling_settings(DegradationClassifier(["denoise"], width=4))
    with pytest.raises(ValueError, match="single-label"):
        check_peeling_settings(DegradationClassifier(["denoise", "derain"], width=4, multilabel=True))


# suggestions: a degradation blind mode does not run after the first, but mentions ---------------------------

def test_a_suggested_task_is_mentioned_not_run():
    from instruct_ipt.instruct.blind import Detection, peel_walks, walked_suggestions

    scene = _scene()
    plain = scene.classifier(Peeling({}, {"denoise": 0.1}, region=32))
    assert plain.examine(scene.image("derain", "dehaze"), restore=scene.restore) == Detection([("derain", 0.7)])
    assert scene.calls == [("derain", (32, 32))]  # haze seen next, not a task to run or suggest: not restored
    scene.calls.clear()
    clf = scene.classifier(Peeling({}, {"denoise": 0.1}, region=32, suggest={"dehaze": 0.4}))
    seen = clf.examine(scene.image("derain", "dehaze"), restore=scene.restore)
    assert seen == Detection([("derain", 0.7)], [("dehaze", 0.7)])  # removing the haze changes the crop by 0.5
    assert clf.detect(scene.image("derain", "dehaze"), restore=scene.restore) == [("derain", 0.7)]  # run: the found ones
    assert [t for t, _ in scene.calls] == ["derain", "dehaze"] * 2
    # a task run after the first is run, not suggested; nothing is suggested past the last step needed
    assert clf.examine(scene.image("derain", "denoise"), restore=scene.restore) == Detection([("derain", 0.6), ("denoise", 0.9)])
    assert clf.examine(scene.image("denoise"), restore=scene.restore) == Detection([("denoise", 0.9)])  # haze next: no change
    assert clf.examine(scene.image("derain", "dehaze")) == Detection([("derain", 0.7)])  # no model: nothing to look again with
    clf.peeling.suggest["dehaze"] = 0.6  # more than removing it changes
    assert clf.examine(scene.image("derain", "dehaze"), restore=scene.restore).suggested == []
    clf.peeling.suggest["dehaze"] = 0.4
    clf.peeling.max_tasks = 1  # nothing after the first at all
    assert clf.examine(scene.image("derain", "dehaze"), restore=scene.restore).suggested == []
    clean = _Scene({2: {"denoise": 0.05, "derain": 0.8, "dehaze": 0.05, "clean": 0.1},
                    6: {"denoise": 0.05, "derain": 0.6, "dehaze": 0.3, "clean": 0.05},
                    4: {"denoise": 0.1, "derain": 0.05, "dehaze": 0.35, "clean": 0.5}})
    gated = clean.classifier(Peeling({}, {"denoise": 0.1}, region=32, suggest={"dehaze": 0.1}), clean_class=True)
    # once max_tasks are named, nothing is suggested (nor looked at); with room for a third, the haze is
    three = _Scene({7: {"denoise": 0.2, "derain": 0.6, "dehaze": 0.2}, 5: {"denoise": 0.7, "derain": 0.1, "dehaze": 0.2},
                    4: {"denoise": 0.2, "derain": 0.1, "dehaze": 0.7}})
    full = three.classifier(Peeling({}, {"denoise": 0.1}, region=32, suggest={"dehaze": 0.4}))
    assert full.examine(three.image("derain", "denoise", "dehaze"), restore=three.restore) == \
        Detection([("derain", 0.6), ("denoise", 0.7)])
    assert [t for t, _ in three.calls] == ["derain", "denoise"]
    full.peeling.max_tasks = 3
    assert full.examine(three.image("derain", "denoise", "dehaze"), restore=three.restore).suggested == [("dehaze", 0.7)]
    # nothing found (the first task's removal changes too little): nothing suggested either, in examine and in a walk
    gate = scene.classifier(Peeling({}, {"denoise": 0.1}, region=32, first_change={"derain": 0.9}, suggest={"dehaze": 0.4}))
    haze_rain = [(scene.image("derain", "dehaze"), ("derain", "dehaze"))]
    assert gate.examine(haze_rain[0][0], restore=scene.restore) == Detection([])
    assert not walked_suggestions(gate, peel_walks(gate, haze_rain, scene.restore, region=32)).any()
    gate.peeling.first_change["derain"] = 0.1
    assert walked_suggestions(gate, peel_walks(gate, haze_rain, scene.restore, region=32)).tolist() == [[False, False, True]]
    case = [(clean.image("derain", "dehaze"), ("derain", "dehaze"))]
    assert gated.examine(case[0][0], restore=clean.restore).suggested == []  # clean beats haze
    assert not walked_suggestions(gated, peel_walks(gated, case, clean.restore, region=32)).any()  # the walk agrees
    clean.probs[4] = {"denoise": 0.1, "derain": 0.05, "dehaze": 0.5, "clean": 0.35}
    assert gated.examine(case[0][0], restore=clean.restore).suggested == [("dehaze", 0.5)]
    assert walked_suggestions(gated, peel_walks(gated, case, clean.restore, region=32)).tolist() == [[False, False, True]]


def test_suggested_tasks_round_trip_and_are_not_run_too(tmp_path):
    peeling = Peeling({}, {"denoise": 0.028}, suggest={"jpeg": 0.02})
    back = DegradationClassifier.load(DegradationClassifier(["denoise", "jpeg"], width=4, peeling=peeling).save(tmp_path / "s.safetensors"))
    assert back.peeling == peeling and back.peeling.suggest == {"jpeg": 0.02}
    assert "peel_suggest" not in Peeling({}, {"denoise": 0.028}).to_meta()  # files without it read as before
    with pytest.raises(ValueError, match="denoise: both run after the first"):
        Peeling({}, {"denoise": 0.028}, suggest={"denoise": 0.02})
    with pytest.raises(ValueError, match="unknown tasks: dehaze"):
        DegradationClassifier(["denoise", "jpeg"], width=4, peeling=Peeling({}, {}, suggest={"dehaze": 0.1}))


def test_suggest_thresholds_are_what_naming_the_task_would_take():
    from instruct_ipt.instruct.blind import (
        check_peeling_settings,
        choose_peeling,
        peel_walks,
        suggestion_outcomes,
        walked_sets,
        walked_suggestions,
    )

    scene = _scene()
    cases = [(scene.image(), ()), (scene.image("denoise"), ("denoise",)), (scene.image("derain"), ("derain",)),
             (scene.image("derain", "denoise"), ("derain", "denoise")), (scene.image("dehaze"), ("dehaze",)),
             (scene.image("derain", "dehaze"), ("derain", "dehaze"))]
    walks = peel_walks(scene.classifier(), cases, scene.restore, region=32)
    alone = choose_peeling(scene.classifier(), walks, region=32, further_tasks=["denoise"])
    naming = choose_peeling(scene.classifier(), walks, region=32, further_tasks=["denoise", "dehaze"])
    clf = scene.classifier()
    both = choose_peeling(clf, walks, region=32, further_tasks=["denoise"], suggest_tasks=["dehaze"])
    assert both.suggest == {"dehaze": naming.further["dehaze"]} and 0.0 < both.suggest["dehaze"] <= 0.5
    assert (both.start, both.further, both.clean) == (alone.start, alone.further, alone.clean)  # the rest as without it
    assert (walked_sets(clf, walks) == walked_sets(scene.classifier(alone), walks)).all()  # suggesting runs nothing more
    suggested = walked_suggestions(clf, walks)
    assert [set(np.array(clf.tasks)[row]) for row in suggested] == [set(), set(), set(), set(), set(), {"dehaze"}]
    # what the walk says is what examine suggests, restoring again
    assert [{t for t, _ in clf.examine(rgb, restore=scene.restore).suggested} for rgb, _ in cases] == \
        [set(np.array(clf.tasks)[row]) for row in suggested]
    right, wrong = suggestion_outcomes(suggested, walked_sets(clf, walks), walks["present"])
    assert right.tolist() == [False] * 5 + [True] and not wrong.any()  # haze there, and not run
    right, wrong = suggestion_outcomes(suggested, walked_sets(clf, walks), walks["present"] & ~suggested)
    assert not right.any() and wrong.tolist() == [False] * 5 + [True]  # had the haze not been there
    for bad, match in [({"suggest_tasks": ["dehaze"]}, "need the further tasks named"),
                       ({"further_tasks": ["dehaze"], "suggest_tasks": ["dehaze"]}, "dehaze: both run after the first"),
                       ({"further_tasks": ["denoise"], "suggest_tasks": ["jpeg"]}, "suggest tasks not among the classifier's: jpeg")]:
        with pytest.raises(ValueError, match=match):
            choose_peeling(scene.classifier(), walks, **bad)
        with pytest.raises(ValueError, match=match):
            check_peeling_settings(scene.classifier(), **bad)


def test_blind_mode_tells_what_it_suggests_without_running_it(model_dir, monkeypatch):
    from instruct_ipt.instruct.blind import Detection
    from instruct_ipt.pipeline import TaskChoice

    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=DegradationClassifier(TASKS, width=4))
    monkeypatch.setattr(DegradationClassifier, "examine", lambda self, rgb, probs=None, restore=None:
                        Detection([("denoise", 0.81)], [("dehaze", 0.52)]))
    runs = []
    real_run = RestorationPipeline.run
    monkeypatch.setattr(RestorationPipeline, "run", lambda self, rgb, tasks, **k: runs.append(list(tasks)) or real_run(self, rgb, tasks, **k))
    _out, choice = pipe(data.astronaut()[:32, :32], return_choice=True)
    assert choice.tasks == ["denoise"] and choice.suggested == ["dehaze"] and runs == [["denoise"]]
    assert choice.describe() == ("denoise (81%) [seen in the image (blind mode)]; possibly also dehaze "
                                 "(not run; to run it too, name the tasks: denoise,dehaze)")
    assert choice.to_dict()["suggested"] == ["dehaze"]
    assert TaskChoice(["derain"], [1.0], "task").describe() == "derain [as asked]"  # nothing suggested: as before
    two = TaskChoice(["derain"], [0.9], "blind", ["dehaze", "denoise"]).describe()
    assert two.endswith("possibly also dehaze and denoise (not run; to run them too, name the tasks: derain,denoise,dehaze)")


def _saved_as_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """``rgb`` after a Pillow JPEG round trip at ``quality``: its block grid starts at (0, 0)."""
    import io

    buf = io.BytesIO()
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255


def test_the_jpeg_grid_phase_is_where_a_crop_after_saving_left_it():
    from instruct_ipt.instruct.blind import jpeg_grid_phase

    saved = _saved_as_jpeg(data.chelsea().astype(np.float32) / 255, 40)
    for dy, dx in [(0, 0), (3, 1), (7, 6), (1, 4), (5, 7)]:
        assert jpeg_grid_phase(saved[dy:, dx:]) == ((8 - dy) % 8, (8 - dx) % 8), (dy, dx)
    assert jpeg_grid_phase(saved[2:, 5:].mean(-1)) == (6, 3)  # grey images too
    assert jpeg_grid_phase(saved[:12, :40]) == (0, 0)  # too few rows to tell: phase 0


def test_an_aligned_classifier_starts_its_crops_on_the_block_grid(tmp_path):
    clf = DegradationClassifier(TASKS, width=4, align_blocks=True)
    seen = []
    clf.features.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0] + 0.5))
    saved = _saved_as_jpeg(data.chelsea().astype(np.float32) / 255, 30)[3:, 5:]  # 297 x 446, grid at (5, 3)

    def crops(rows, cols, image=saved):
        return torch.from_numpy(np.stack([image[r : r + 128, c : c + 128] for r in rows for c in cols]).transpose(0, 3, 1, 2))

    clf.predict(saved)  # the plain grid would start at rows 0, 169 and columns 0, 159, 318
    torch.testing.assert_close(seen[-1], crops([5, 165], [3, 155, 315]))
    narrow = saved[:, :130]  # column 3 would end past the edge: the crop stays at 0
    clf.predict(narrow)
    torch.testing.assert_close(seen[-1], crops([5, 165], [0], narrow))
    back = DegradationClassifier.load(clf.save(tmp_path / "a.safetensors"))
    assert back.align_blocks
    back.align_blocks = False
    back.features.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0] + 0.5))
    back.predict(saved)
    torch.testing.assert_close(seen[-1], crops([0, 169], [0, 159, 318]))
    assert not DegradationClassifier.load(back.save(tmp_path / "b.safetensors")).align_blocks


def test_a_primary_judges_the_crops_its_multilabel_classifier_judges(tmp_path):
    # A primary used to keep its own grid: the packaged one (aligned, three crops a side) judged other
    # crops once saved inside a multi-label file and loaded again (plain grid, one crop a side).
    saved = _saved_as_jpeg(data.chelsea().astype(np.float32) / 255, 30)[3:, 5:]  # grid at (5, 3)
    clf = DegradationClassifier(TASKS, width=4, multilabel=True, align_blocks=True, min_positions=3)
    clf.attach_primary(DegradationClassifier(TASKS, width=4))  # a primary with the plain grid
    seen = []
    hook = lambda module, inputs, output: seen.append(inputs[0] + 0.5)
    clf.features.register_forward_hook(hook)
    clf.primary.features.register_forward_hook(hook)
    clf.predict(saved), clf.primary.predict(saved)
    assert seen[1].shape[0] == 9  # three crops a side on a 297 x 446 image
    torch.testing.assert_close(seen[1], seen[0])
    clf.align_blocks, clf.min_positions = False, 1  # set on the owner: the primary follows
    assert (clf.primary.align_blocks, clf.primary.min_positions) == (False, 1)
    back = DegradationClassifier.load(clf.save(tmp_path / "p.safetensors"))
    assert (back.primary.align_blocks, back.primary.min_positions) == (False, 1)
    back.align_blocks, back.min_positions = True, 3
    back = DegradationClassifier.load(back.save(tmp_path / "q.safetensors"))
    assert (back.primary.align_blocks, back.primary.min_positions) == (True, 3)
    seen.clear()
    back.features.register_forward_hook(hook)
    back.primary.features.register_forward_hook(hook)
    back.predict(saved), back.primary.predict(saved)
    torch.testing.assert_close(seen[1], seen[0])


def test_a_multilabel_primary_chooses_among_the_models_tasks_only():
    # the primary's favourite (deblur) is a task the model lacks: before, blind mode named it and the
    # pipeline then dropped it - "nothing to do" on a photo the scores said was degraded
    tasks = ["denoise", "derain", "deblur"]
    clf = DegradationClassifier(tasks, width=4, multilabel=True, thresholds=dict.fromkeys(tasks, 0.0))
    primary = DegradationClassifier(tasks, width=4)
    with torch.no_grad():
        primary.classifier.weight.zero_()
        primary.classifier.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    clf.attach_primary(primary, dict.fromkeys(tasks, 1.1))  # (no extras)
    img = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    assert [t for t, _ in clf.detect(img)] == ["deblur"]
    probs = {t: p for t, p in clf.predict(img).items() if t != "deblur"}  # a model with denoise and derain
    assert [t for t, _ in clf.detect(img, probs)] == ["derain"]
    pipe = RestorationPipeline(InstructIPT("tiny", tasks=["denoise", "derain"]), classifier=clf)
    assert pipe.choose(rgb=img).tasks == ["derain"]


def test_a_small_image_is_seen_from_at_least_min_positions_crops_per_side(tmp_path):
    clf = DegradationClassifier(TASKS, width=4)
    seen = []
    clf.features.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0] + 0.5))
    image = np.random.default_rng(0).random((200, 300, 3), dtype=np.float32)

    def crops(rows, cols):
        return torch.from_numpy(np.stack([image[r : r + 128, c : c + 128] for r in rows for c in cols]).transpose(0, 3, 1, 2))

    clf.predict(image)  # the plain grid: 200 // 128 = 1 row (rows 128-199 never seen), 2 columns
    torch.testing.assert_close(seen[-1], crops([0], [0, 172]))
    with pytest.raises(ValueError, match="1 to 4"):
        clf.min_positions = 5
    clf.min_positions = 3
    probs = clf.predict(image)
    torch.testing.assert_close(seen[-1], crops([0, 36, 72], [0, 86, 172]))
    with torch.no_grad():  # the probabilities are the mean over exactly those crops
        expected = clf(crops([0, 36, 72], [0, 86, 172])).softmax(-1).mean(0)
    assert [probs[t] for t in TASKS] == pytest.approx(expected.tolist(), abs=1e-6)
    clf.predict(image[:130, :128])  # as many as fit at distinct offsets; a side of one crop: one
    torch.testing.assert_close(seen[-1], torch.from_numpy(np.stack([image[r : r + 128, :128] for r in (0, 1, 2)]).transpose(0, 3, 1, 2)))
    big = np.random.default_rng(1).random((384, 512, 3), dtype=np.float32)  # three crops or more per side: unchanged
    clf.predict(big)
    three = seen[-1]
    clf.min_positions = 1
    clf.predict(big)
    torch.testing.assert_close(seen[-1], three)
    clf.min_positions = 3
    back = DegradationClassifier.load(clf.save(tmp_path / "a.safetensors"))
    assert back.min_positions == 3 and back.grid_key() == {"min_positions": 3}
    back.min_positions = 1
    assert back.grid_key() == {}  # walks recorded before the option keep their key
    assert DegradationClassifier.load(back.save(tmp_path / "b.safetensors")).min_positions == 1


def test_the_shipped_classifier_sees_jpeg_blocks_wherever_the_crop_starts():
    """Trained on squares compressed whole, it knows blocks whose corner is the crop's corner; the
    cat at quality 20 cropped by 1-3 px after saving read as anything but JPEG before its crops
    were aligned to the grid (JPEG probability 0.005, 0.024 and 0.0: docs/instructions.md)."""
    clf = DegradationClassifier.default()
    assert clf.align_blocks
    assert clf.min_positions == 3  # a small image, such as a 256 px tile, is seen from 3 x 3 crops
    saved = _saved_as_jpeg(data.chelsea().astype(np.float32) / 255, 20)
    for dy, dx in [(0, 0), (0, 1), (0, 2), (0, 3), (5, 6)]:
        probs = clf.predict(saved[dy:, dx:])
        assert max(probs, key=probs.get) == "jpeg", (dy, dx, probs)


def test_calibrating_blind_mode_for_the_pipelines_model_asks_the_same_questions(model_dir, monkeypatch):
    import instruct_ipt.pipeline as pipeline_module
    from instruct_ipt.io import weights_digest

    peeling = Peeling({}, {"denoise": 0.1}, region=32, clean=0.5, first_change={"denoise": 0.02}, suggest={"dehaze": 0.3},
                      model="0" * 64)
    clf = _rigged_clean(["denoise", "derain", "dehaze"], [0.0] * 4, peeling)
    pipe = RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=clf)
    asked = {}

    def fake(classifier, cases, restore, **choices):
        asked.update(cases=cases, restore=restore, choices=choices, classifier=classifier)
        classifier.peeling = replace(classifier.peeling, further={"denoise": 0.05}, model=choices["model"])
        return classifier.peeling

    monkeypatch.setattr(pipeline_module, "calibrate_peeling", fake)
    photos = [data.astronaut()[:40, :40] / 255.0, data.chelsea()[:40, :40] / 255.0]
    new = pipe.calibrate_blind_mode(photos, seeds=3)
    assert asked["choices"] == peeling.choices() | {"model": weights_digest(pipe.model), "progress": None}
    assert len(asked["cases"]) == 2 * 3 * (1 + 3 + 3) and asked["restore"] == pipe._restore_one
    assert asked["classifier"] is new is pipe.classifier and new is not clf and clf.peeling == peeling  # a copy
    assert new.peeling.model == weights_digest(pipe.model) and new.peeling.further == {"denoise": 0.05}
    with pytest.raises(ValueError, match="does not peel"):
        RestorationPipeline(pipe.model, classifier=DegradationClassifier(TASKS, width=4)).calibrate_blind_mode(photos)
    with pytest.raises(ValueError, match="needs clean photos"):
        pipe.calibrate_blind_mode([])
    with pytest.raises(ValueError, match=r"too small for blind mode to judge \(at least 9 px a side\): 1 \(8x12\)$"):
        pipe.calibrate_blind_mode([photos[0], np.zeros((12, 8, 3), np.float32)])  # refused before any walk


def test_calibrate_blind_refuses_the_shipped_folder_and_an_unwritable_out_before_calibrating(model_dir, tmp_path, capsys,
                                                                                            monkeypatch):
    import instruct_ipt.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module.RestorationPipeline, "calibrate_blind_mode",
                        lambda *a, **k: pytest.fail("calibrated despite a bad --model or --out"))
    Image.fromarray(data.astronaut()[:32, :32]).save(tmp_path / "a.png")
    photos = ["--photos", str(tmp_path / "a.png")]
    monkeypatch.chdir(tmp_path)  # ("default" names the shipped model here: no such folder in the working directory)
    assert main(["calibrate-blind", "--model", "default", *photos]) == 2
    assert "is the shipped model, inside the installed package: give --out FILE" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()
    (tmp_path / "folder").mkdir()
    assert main(["calibrate-blind", "--model", str(model_dir), *photos, "--out", str(tmp_path / "folder")]) == 2
    assert "a folder; give a file name" in capsys.readouterr().err
    assert main(["calibrate-blind", "--model", str(model_dir), *photos, "--out", str(tmp_path / "no" / "c.safetensors")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_the_cli_calibrates_blind_mode_into_the_models_folder(model_dir, tmp_path, capsys):
    import shutil

    from instruct_ipt.instruct.blind import BLIND_FILE
    from instruct_ipt.io import weights_digest

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    peeling = Peeling({}, {"denoise": 0.1}, region=32, clean=0.5, first_change={"denoise": 0.02}, model="0" * 64)
    _rigged_clean(["denoise", "derain", "dehaze"], [1.0, 0.5, 0.0, 0.2], peeling).save(folder / BLIND_FILE)
    for name, img in (("a.png", data.astronaut()), ("b.png", data.chelsea())):
        Image.fromarray(img[60:92, 60:92]).save(tmp_path / name)
    assert main(["calibrate-blind", "--model", str(folder), "--photos", str(tmp_path / "*.png"), "--seeds", "1"]) == 0
    assert f"wrote {folder / BLIND_FILE}" in capsys.readouterr().out
    back = DegradationClassifier.load(folder / BLIND_FILE)
    assert back.peeling.model == weights_digest(InstructIPT.from_pretrained(folder)) and back.clean_class
    assert back.peeling.choices()["region"] == 32 and back.peeling.clean is not None
    assert main(["calibrate-blind", "--model", str(folder), "--photos", str(tmp_path / "none.png")]) == 2
    assert "no such photo" in capsys.readouterr().err


def test_calibration_cases_make_each_image_when_read_and_always_the_same(monkeypatch):
    from instruct_ipt.instruct import blind

    photos = [data.astronaut()[:24, :32] / 255.0, data.chelsea()[:24, :32] / 255.0]
    cases = blind.calibration_cases(photos, ["denoise", "derain", "jpeg"], seeds=2)
    made = []
    real = blind.make_degradation
    monkeypatch.setattr(blind, "make_degradation", lambda spec: made.append(spec) or real(spec))
    sets = [(), ("denoise",), ("derain",), ("jpeg",), ("denoise", "derain"), ("denoise", "jpeg"), ("derain", "jpeg")]
    assert len(cases) == 2 * 2 * 7 and cases.present == sets * 4 and made == []  # nothing made to say what is there
    for index in (0, 5, 13, 27):
        i, seed, k = index // 14, index % 14 // 7, index % 7
        image, present = cases[index]
        spec = "+".join(sets[k])
        expected = real(spec)(photos[i], np.random.default_rng((seed, i, k))).image if spec else photos[i]
        assert present == sets[k] and np.array_equal(image, expected) and np.array_equal(cases[index][0], image)
    assert made == ["denoise+jpeg"] * 2 + ["derain+jpeg"] * 4  # each read makes its image (the clean one: none)
    assert [p for _, p in cases] == cases.present
    part = cases[5:14:4]  # a slice: those images, made as when read one by one
    assert [p for _, p in part] == [sets[5], sets[2], sets[6]] and np.array_equal(part[1][0], cases[9][0])
    assert np.array_equal(cases[-1][0], cases[27][0])


def test_downsamplings_set_how_far_each_feature_sees_and_travel_with_the_file(tmp_path):
    from instruct_ipt.instruct.blind import check_peeling_settings

    tasks = ["denoise", "deblur"]
    x = torch.rand(1, 3, 96, 96)
    for k, side in ((3, 12), (5, 3)):  # the shipped three halvings leave 12 x 12 positions of a 96 px square, five 3 x 3
        clf = DegradationClassifier(tasks, width=4, clean_class=True, downsamplings=k)
        assert clf.features(x).shape[-2:] == (side, side)
        strided = [m for m in clf.features if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) == k
    path = clf.save(tmp_path / "d5.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["downsamplings"] == "5"
    back = DegradationClassifier.load(path)
    assert back.downsamplings == 5 and torch.equal(back(x), clf(x))
    with safe_open(str(DegradationClassifier(tasks, width=4).save(tmp_path / "d3.safetensors")), "pt") as f:
        assert "downsamplings" not in f.metadata()  # files written before the option read as before
    assert DegradationClassifier.load(tmp_path / "d3.safetensors").downsamplings == 3
    with pytest.raises(ValueError, match="1 to 5"):
        DegradationClassifier(tasks, width=4, downsamplings=6)
    with pytest.raises(ValueError, match="peeling region 32 px: this classifier judges images of at least 33 px"):
        DegradationClassifier(tasks, width=4, downsamplings=5, peeling=Peeling({}, {}, region=32))
    with pytest.raises(ValueError, match="peeling region 32 px"):
        check_peeling_settings(DegradationClassifier(tasks, width=4, downsamplings=5), region=32)
    check_peeling_settings(DegradationClassifier(tasks, width=4, downsamplings=5), region=33)
    ops = {t: make_degradation(t) for t in tasks}
    photo = data.astronaut()[:48, :48]
    init = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=17, context=17, downsamplings=4)
    assert init.downsamplings == 4 and init.smallest_side == 17
    with pytest.raises(ValueError, match="4 downsamplings, training 3"):
        train_classifier([photo], ops, steps=1, batch_size=2, patch_size=17, context=17, init=init, downsamplings=3)
    assert train_classifier([photo], ops, steps=1, batch_size=2, patch_size=17, context=17, init=init).downsamplings == 4
    with pytest.raises(ValueError, match="too small for 4 downsamplings"):  # 16 px: one last feature, no spread
        train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, downsamplings=4)


def test_a_classifier_trains_at_the_width_asked_and_keeps_it_in_its_file(tmp_path):
    tasks = ["denoise", "deblur"]
    ops = {t: make_degradation(t) for t in tasks}
    photo = data.astronaut()[:48, :48]
    clf = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, width=6)
    convs = [m for m in clf.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 6, 12, 12, 24] and clf.classifier.in_features == 48
    back = DegradationClassifier.load(clf.save(tmp_path / "w6.safetensors"))
    x = torch.rand(1, 3, 32, 32)
    assert back.width == 6 and torch.equal(back(x), clf(x))
    with pytest.raises(ValueError, match="width 6, training 32"):  # an init's features cannot change size
        train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, init=back, width=32)
    more = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, init=back, width=6)
    same = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16, init=back)  # its own
    assert more.width == same.width == 6
    fresh = train_classifier([photo], ops, steps=1, batch_size=2, patch_size=16, context=16)
    assert (fresh.width, fresh.downsamplings) == (32, 3)  # the shipped design's, DegradationClassifier's defaults


@pytest.mark.filterwarnings("error")  # (torch warns when a standard deviation has no degrees of freedom)
def test_an_image_too_small_to_judge_is_refused_not_given_nan_probabilities():
    clf = DegradationClassifier.default()
    assert clf.smallest_side == 9
    probs = clf.predict(data.astronaut()[:9, :30] / 255.0)  # the smallest: 2 x 2 last features
    assert all(np.isfinite(list(probs.values())))
    for shape in ((8, 30), (30, 8), (4, 4)):
        with pytest.raises(ValueError, match="too small for blind mode to judge .at least 9 px a side"):
            clf.predict(np.zeros((*shape, 3)))


# the JPEG block grid: JPEG named only where the image shows it -------------------------------------------

def _texture(seed: int = 0, shape: tuple[int, int] = (96, 104)) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random((*shape, 3)), (1.5, 1.5, 0))
    return ((x - x.min()) / np.ptp(x)).astype(np.float32)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf)).astype(np.float32) / 255


def test_the_block_grid_strength_sees_a_saved_jpeg_wherever_it_was_cropped_and_not_a_photo_never_saved():
    from instruct_ipt.instruct.blind import jpeg_block_strength

    clean = _texture()
    never = jpeg_block_strength(clean)
    strengths = [jpeg_block_strength(_jpeg(clean, q)) for q in (30, 50, 75)]
    assert never < 1.05 and strengths == sorted(strengths, reverse=True) and strengths[-1] > 1.1  # coarser, plainer
    assert jpeg_block_strength(_jpeg(clean, 30)[3:, 5:]) > 1.3  # a crop after saving: the grid moved, still there
    assert jpeg_block_strength(_jpeg(clean, 30).mean(-1)) > 1.3  # grey images too
    lines = clean.copy()
    lines[:, 7::8] += 0.2  # a grid along one axis only is no JPEG block grid
    assert jpeg_block_strength(np.clip(lines, 0, 1)) < 1.05
    assert jpeg_block_strength(np.zeros((40, 40, 3))) == 1.0 and jpeg_block_strength(_jpeg(clean, 30)[:12]) == 1.0  # no evidence


def test_block_threshold_separates_held_out_images_with_jpeg_from_those_without():
    from instruct_ipt.instruct.blind import block_threshold

    strengths = np.array([1.01, 1.05, 1.02, 1.40, 1.20, 1.30])
    has = np.array([False, False, False, True, True, True])
    assert block_threshold(strengths, has) == pytest.approx(1.125)  # midway between 1.05 and 1.20
    overlap = np.array([1.01, 1.25, 1.02, 1.40, 1.20, 1.30])  # one without blocks above one with: one wrong at best
    t = block_threshold(overlap, has)
    assert ((overlap >= t) != has).sum() == 1
    for one_kind in (np.ones(6, bool), np.zeros(6, bool)):
        with pytest.raises(ValueError, match="with JPEG blocks and without"):
            block_threshold(strengths, one_kind)


def test_blind_mode_names_jpeg_after_the_first_task_or_suggests_it_only_where_the_block_grid_shows(tmp_path):
    clean, saved = _texture(1), _jpeg(_texture(1), 30)

    def rigged(probs: dict[str, float], peeling: Peeling) -> DegradationClassifier:
        clf = DegradationClassifier(["derain", "jpeg"], width=4, peeling=peeling)
        clf.predict = lambda rgb, **k: dict(probs)
        return clf

    def restore(x: np.ndarray, task: str) -> np.ndarray:
        return x * 0.9  # every removal changes the crop

    gated = Peeling({}, {"derain": 0.0, "jpeg": 0.0}, region=64, blocks=1.2)
    jpeg_first, derain_first = {"derain": 0.2, "jpeg": 0.8}, {"derain": 0.8, "jpeg": 0.2}
    # the first look is the classifier's alone: JPEG named first even without a grid
    assert rigged(jpeg_first, gated).detect(clean, restore=restore) == [("derain", 0.2), ("jpeg", 0.8)]
    assert rigged(jpeg_first, gated).detect(saved, restore=restore) == [("derain", 0.2), ("jpeg", 0.8)]  # (measured order)
    assert rigged(derain_first, gated).detect(clean, restore=restore) == [("derain", 0.8)]
    assert rigged(derain_first, gated).detect(saved, restore=restore) == [("derain", 0.8), ("jpeg", 0.2)]
    ungated = Peeling({}, {"derain": 0.0, "jpeg": 0.0}, region=64)
    assert rigged(derain_first, ungated).detect(clean, restore=restore) == [("derain", 0.8), ("jpeg", 0.2)]  # as before
    suggesting = Peeling({}, {"derain": 0.0}, region=64, suggest={"jpeg": 0.0}, blocks=1.2)
    assert rigged(derain_first, suggesting).examine(clean, restore=restore).suggested == []
    assert rigged(derain_first, suggesting).examine(saved, restore=restore).suggested == [("jpeg", 0.2)]
    back = DegradationClassifier.load(rigged(jpeg_first, gated).save(tmp_path / "g.safetensors"))
    assert back.peeling == gated and back.peeling.blocks == 1.2 and back.peeling.choices()["jpeg_blocks"]
    assert Peeling.from_meta(replace(gated, blocks=np.float64(1.25)).to_meta()).blocks == 1.25  # a NumPy number too
    assert not DegradationClassifier.load(rigged(jpeg_first, ungated).save(tmp_path / "u.safetensors")).peeling.choices()["jpeg_blocks"]
    with pytest.raises(ValueError, match="unknown tasks: jpeg"):  # a block-grid test belongs to a classifier with JPEG
        DegradationClassifier(["derain", "denoise"], width=4, peeling=Peeling({}, {}, blocks=1.2))
    with pytest.raises(ValueError, match="finite ratio"):
        Peeling({}, {}, blocks=float("nan"))


def test_a_calibration_with_the_block_grid_test_bars_jpeg_where_the_walked_image_shows_none():
    from instruct_ipt.instruct.blind import check_peeling_settings, choose_peeling, walked_sets

    clf = DegradationClassifier(["derain", "jpeg"], width=4)
    # six images: clean, rain, jpeg, rain + jpeg, and two rainy ones where the classifier saw JPEG after the rain
    present = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [1, 0], [1, 0]], bool)
    walks = {"first": np.array([0, 0, 1, 0, 0, 0]), "first_prob": np.array([0.3, 0.9, 0.9, 0.8, 0.9, 0.9]),
             "first_change": np.full(6, 0.1), "second": np.array([1, 1, 0, 1, 1, 1]),
             "second_change": np.array([0.001, 0.002, 0.001, 0.03, 0.04, 0.05]), "first_clean": np.full(6, np.nan),
             "second_beats": np.ones(6, bool), "present": present, "blocks": np.array([1.0, 1.02, 1.5, 1.4, 1.03, 1.01])}
    plain = choose_peeling(clf, walks, further_tasks=["jpeg"])
    # without the test, no further threshold names both the rain + JPEG image and the two rainy ones right
    assert plain.blocks is None and not (walked_sets(clf, walks) == present).all()
    gated = choose_peeling(clf, walks, further_tasks=["jpeg"], jpeg_blocks=True)
    assert 1.03 < gated.blocks < 1.4 and gated.asked["jpeg_blocks"] and gated.choices()["jpeg_blocks"]
    assert (walked_sets(clf, walks) == present).all()  # barred where no grid shows: every image named exactly
    with pytest.raises(ValueError, match="no 'jpeg' task"):
        choose_peeling(DegradationClassifier(["derain", "denoise"], width=4), walks, jpeg_blocks=True)
    with pytest.raises(ValueError, match="no 'jpeg' task"):
        check_peeling_settings(DegradationClassifier(["derain", "denoise"], width=4), jpeg_blocks=True)


def test_a_damaged_classifier_file_is_one_clear_error(model_dir, tmp_path, capsys):
    """A truncated file, or peeling metadata edited by hand, in a model folder: one line naming the
    file (the CLI's exit 2), never safetensors' or json's own exception."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from instruct_ipt.instruct.blind import BLIND_FILE

    folder = tmp_path / "m"
    peeling = Peeling({}, {"denoise": 0.1}, region=32, clean=0.5)
    RestorationPipeline(InstructIPT.from_pretrained(model_dir), classifier=_rigged_clean(TASKS, [0.0] * 7, peeling)).save_pretrained(folder)
    path = folder / BLIND_FILE
    state = {k: v.clone() for k, v in load_file(str(path)).items()}  # (not a view of the file, which is rewritten below)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    whole = path.read_bytes()
    Image.fromarray(data.astronaut()[:40, :40]).save(tmp_path / "a.png")
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"is not an instruct-ipt degradation classifier: not a readable \.safetensors file"):
        DegradationClassifier.load(path)
    assert main(["restore", str(tmp_path / "a.png"), "--model", str(folder), "-o", str(tmp_path / "out")]) == 2  # blind mode
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{path} is not an instruct-ipt degradation classifier" in err
    for edit, says in ((lambda m: m.pop("peel_further"), r"incomplete \(no peel_further\)"),
                       (lambda m: m.update(peel_region="wide"), r"malformed \(invalid literal"),
                       (lambda m: m.update(peel_start="{not json"), r"malformed \(Expecting")):
        broken = dict(meta)
        edit(broken)
        save_file(state, str(path), metadata=broken)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: its peeling thresholds are {says}"):
            DegradationClassifier.load(path)
    save_file(state, str(path), metadata=meta)  # the file as written loads (the test's edits are what break it)
    assert DegradationClassifier.load(path).peeling == peeling


def test_calibrate_blind_names_photos_too_small_and_prints_every_threshold(model_dir, tmp_path, capsys, monkeypatch):
    """A photo blind mode cannot judge is refused by name before the minutes of walking; one smaller
    than the crop it judges is calibrated on with a warning naming it; the thresholds printed include
    the JPEG block grid's."""
    import shutil

    import instruct_ipt.pipeline as pipeline_module
    from instruct_ipt.instruct.blind import BLIND_FILE

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    peeling = Peeling({}, {"denoise": 0.1}, region=48, clean=0.5, blocks=1.2345)
    _rigged_clean(TASKS, [0.0] * 7, peeling).save(folder / BLIND_FILE)
    walked = []

    def walk(classifier, cases, restore, **choices):  # the walk itself is tested above: here, what comes before and after
        walked.append([p.shape[:2] for p in cases.photos])
        return classifier.peeling

    monkeypatch.setattr(pipeline_module, "calibrate_peeling", walk)
    for name, side in (("big.png", 64), ("small.png", 40), ("tiny.png", 8)):
        Image.fromarray(data.astronaut()[:side, :side]).save(tmp_path / name)
    photos = [f"--photos={tmp_path / n}" for n in ("big.png", "small.png", "tiny.png")]
    assert main(["calibrate-blind", "--model", str(folder), *photos, "--out", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"too small for blind mode to judge (at least 9 px a side): {tmp_path / 'tiny.png'} (8x8)")
    assert walked == [] and not (tmp_path / "c.safetensors").exists()
    assert main(["calibrate-blind", "--model", str(folder), *photos[:2], "--out", str(tmp_path / "c.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert walked == [[(64, 64), (40, 40)]]
    assert ("warning: blind mode judges a 48 px crop of each photo; these are smaller, so their calibration images "
            "are too: small.png (40x40)") in err and "big.png" not in err
    assert "thresholds: clean 0.5000; further {\"denoise\": 0.1}; " in out and out.count("; JPEG block grid 1.2345\n") == 1

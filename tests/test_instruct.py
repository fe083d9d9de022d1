import json
import os
import subprocess
import sys

import pytest
import torch

from instruct_ipt import InstructIPT
from instruct_ipt.cli import main
from instruct_ipt.instruct import (
    PIPELINE_ORDER,
    UNSUPPORTED,
    HeadMismatch,
    InstructionError,
    InstructionHead,
    Interpreter,
    default_encoder,
    held_out_accuracy,
    load_corpus,
    order_tasks,
    split,
    train_head,
)
from instruct_ipt.instruct.interpret import clauses

TASKS = ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]


@pytest.fixture(scope="module")
def interp():
    return Interpreter()


def test_corpus_is_large_and_split_stably():
    corpus = load_corpus()
    assert set(corpus) == {*TASKS, UNSUPPORTED}
    assert all(len(v) >= 150 for v in corpus.values())
    train, held = split(corpus)
    for c in corpus:
        assert held[c] and not set(held[c]) & set(train[c])
        assert 0.1 < len(held[c]) / len(corpus[c]) < 0.3
    assert split(corpus) == (train, held)


def test_head_training_is_deterministic():
    train, _ = split(load_corpus())
    small = {c: v[:15] for c, v in train.items()}  # (augmented inside train_head, seeded)
    a = train_head(small, TASKS, default_encoder(), seed=3, epochs=30)
    b = train_head(small, TASKS, default_encoder(), seed=3, epochs=30)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize(
    "text,task",
    [
        ("please remove the noise", "denoise"),
        ("my night photo is so grainy", "denoise"),
        ("my hand shook", "deblur"),
        ("everything is smeared sideways", "deblur"),
        ("it was pouring", "derain"),
        ("remove the rain streaks", "derain"),
        ("the mountains are lost in mist", "dehaze"),
        ("the photo is foggy, clear it up", "dehaze"),
        ("remove the falling snow", "desnow"),
        ("there are snowflakes everywhere", "desnow"),
        ("remove the jpeg artifacts", "jpeg"),
        ("whatsapp compressed it and now it's blocky", "jpeg"),
    ],
)
def test_fixed_phrasings(interp, text, task):
    result = interp(text)
    assert result.tasks == [task] and result.confidences[0] >= 0.5


@pytest.mark.parametrize(
    "text",
    ["make it black and white", "what's the weather tomorrow", "crop it to a square", "", "   ",
     "is there noise in this image?", "why does fog reduce contrast"],
)
def test_off_topic_and_empty_are_refused_with_help(interp, text):
    with pytest.raises(InstructionError) as e:
        interp(text)
    msg = str(e.value)
    assert "Supported tasks: denoise, deblur, derain, dehaze, desnow, jpeg" in msg and "remove the rain" in msg


def test_requests_phrased_as_questions_are_still_requests(interp):
    assert interp("is it possible to remove the rain?").tasks == ["derain"]
    assert interp("can you remove the noise?").tasks == ["denoise"]


def test_several_degradations_run_in_the_measured_order(interp):
    assert interp("remove the rain and the noise").tasks == ["derain", "denoise"]  # measured: not the rule's
    assert interp("remove the fog, the snow and the jpeg blocks").tasks == ["desnow", "jpeg", "dehaze"]
    assert interp("it was pouring and my hand shook").tasks == ["deblur", "derain"]
    assert interp("remove the fog and the noise").tasks == ["denoise", "dehaze"]  # measured: the rule's
    assert interp("remove the snow and the noise").tasks == ["desnow", "denoise"]
    assert clauses("the photo is foggy, clear it up") == []  # a lone comma does not split


def test_order_follows_each_measured_pair_and_the_rule_elsewhere():
    from itertools import combinations

    from instruct_ipt.instruct import MEASURED_GAINS

    assert PIPELINE_ORDER == ("jpeg", "denoise", "deblur", "derain", "desnow", "dehaze")
    for a, b in combinations(PIPELINE_ORDER, 2):  # a before b in the rule
        want = [b, a] if (b, a) in MEASURED_GAINS else [a, b]
        assert order_tasks([b, a]) == order_tasks([a, b]) == want, (a, b)
    # a measured cycle: denoise before deblur (1.344), deblur before derain (2.524), derain before
    # denoise (2.662); keeping the two largest (2.524 + 2.662 = 5.186) beats keeping either other two
    # (1.344 + 2.524 = 3.868, 2.662 + 1.344 = 4.006)
    assert order_tasks(["derain", "deblur", "denoise"]) == ["deblur", "derain", "denoise"]
    # no gains: the rule, unknown tasks last by name, repeats dropped
    assert order_tasks(["sharpen", "dehaze", "jpeg", "lowlight", "jpeg"], gains={}) == ["jpeg", "dehaze", "lowlight", "sharpen"]
    # equal gains either way: the rule's order wins the tie
    assert order_tasks(["derain", "jpeg"], gains={("jpeg", "derain"): 1.0, ("derain", "jpeg"): 1.0}) == ["jpeg", "derain"]
    assert order_tasks(["lowlight", "derain", "jpeg"]) == ["derain", "jpeg", "lowlight"]


def test_model_and_head_task_mismatch(tmp_path):
    from instruct_ipt import RestorationPipeline

    pipe = RestorationPipeline(InstructIPT("tiny", tasks=["denoise", "deblur"]))
    with pytest.raises(HeadMismatch, match="instruct-ipt train-head --model DIR"):
        pipe.interpreter  # noqa: B018 - the property raises
    full = RestorationPipeline(InstructIPT("tiny", tasks=TASKS))
    assert full.interpreter("remove the rain").tasks == ["derain"]


def test_offline_loading_with_an_empty_hub_cache(tmp_path):
    code = "from instruct_ipt.instruct import SentenceEncoder; print(SentenceEncoder().encode(['hi']).shape)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([1, 768])" in r.stdout


def test_interpret_cli(capsys):
    assert main(["interpret", "remove the rain and the noise"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == ["derain", "denoise"] and len(out["confidences"]) == 2
    assert main(["interpret", "order me a pizza"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Supported tasks" in captured.err


def test_train_head_for_a_model_with_a_new_task(tmp_path, capsys):
    phrases = tmp_path / "sharpen.txt"
    phrases.write_text("\n".join([  # noqa: FLY002 (one phrasing per line reads better)
        "sharpen the edges", "make the edges crisper", "add sharpness", "increase the sharpness",
        "crisp up the details", "apply an unsharp mask", "more acutance please", "boost local contrast of edges",
        "sharpen it a bit", "make the details pop with sharpening", "the edges are soft, sharpen them",
        "sharpening please", "oversharpen it", "sharpen the text", "give it a sharpening pass",
    ]))
    from instruct_ipt import RestorationPipeline

    InstructIPT("tiny", tasks=["denoise", "derain", "sharpen"]).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="no phrasings for task\\(s\\) sharpen"):
        _train_head_without_phrases(tmp_path)
    assert main(["train-head", "--model", str(tmp_path / "m"), "--phrases", f"sharpen={phrases}"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    pipe = RestorationPipeline.from_pretrained(tmp_path / "m", device="cpu")
    assert pipe.interpreter.head.tasks == ["denoise", "derain", "sharpen"]
    assert pipe.interpreter("it was pouring").tasks == ["derain"]


def _train_head_without_phrases(tmp_path):
    from argparse import Namespace

    from instruct_ipt.cli import cmd_train_head

    cmd_train_head(Namespace(model=str(tmp_path / "m"), corpus=None, phrases=None, out=None, seed=0))


def test_packaged_head_knows_the_default_tasks():
    head = InstructionHead.default()
    assert head.tasks == TASKS
    assert head.classes[-1] == UNSUPPORTED


@pytest.mark.parametrize("text", ["add some fog", "make it look grainy", "make it snow", "add motion blur to the car",
                                  "blur it on purpose"])
def test_requests_to_create_a_degradation_are_refused(interp, text):
    with pytest.raises(InstructionError, match="only removes them"):
        interp(text)


@pytest.mark.parametrize("text,task", [("make it snow free", "desnow"), ("make it less blurry", "deblur"),
                                       ("apply noise reduction", "denoise")])
def test_removal_phrasings_with_create_verbs_still_work(interp, text, task):
    assert interp(text).tasks == [task]


class _FixedEncoder:
    def __init__(self, emb):
        self.emb = emb

    def encode(self, texts):
        return self.emb.expand(len(texts), -1).clone()


def test_confident_head_is_overruled_by_low_support(tmp_path):
    head = InstructionHead(["denoise", "derain"])
    with torch.no_grad():
        head.net[-1].weight.zero_()
        head.net[-1].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))  # always "denoise", ~100% sure
    query = torch.zeros(1, 768)
    query[0, 0] = query[0, 384] = 1.0
    close, far = torch.zeros(2, 768), torch.zeros(2, 768)
    close[0, 0] = close[1, 1] = 1.0  # close[0] is the query's own mean-pooled direction
    far[0, 1] = far[1, 2] = 1.0
    head.set_bank(far, torch.tensor([0, 1]))
    assert head.support(query).tolist() == [[0.0, 0.0]]
    with pytest.raises(InstructionError, match="unlike any known request"):
        Interpreter(head, encoder=_FixedEncoder(query))("sharpen the bokeh")
    head.set_bank(close, torch.tensor([0, 1]))
    assert Interpreter(head, encoder=_FixedEncoder(query))("sharpen the bokeh").tasks == ["denoise"]
    head.save(tmp_path / "h.safetensors")  # the bank is saved with the head
    loaded = InstructionHead.load(tmp_path / "h.safetensors")
    assert torch.equal(loaded.bank, head.bank) and torch.equal(loaded.bank_labels, head.bank_labels)


def test_packaged_head_has_a_support_bank(interp):
    head = interp.head
    assert head.bank.shape[0] > 1000 and set(head.bank_labels.tolist()) == set(range(len(head.tasks)))
    emb = default_encoder().encode(["remove the rain", "banana"])
    sup = head.support(emb)
    assert sup[0, head.tasks.index("derain")] > 0.9 and sup[1].max() < interp.support_threshold


def test_held_out_accuracy_counts_each_phrase_against_its_class():
    head = InstructionHead(["denoise", "derain"])  # classes: denoise, derain, unsupported
    with torch.no_grad():
        for lin in (head.net[0], head.net[3]):
            lin.weight.zero_()
            lin.bias.zero_()
        for k in range(3):  # embedding direction k -> class k
            head.net[0].weight[k, k] = head.net[3].weight[k, k] = 1.0
    direction = {"grainy": 0, "noisy": 1, "rainy": 1, "make coffee": 2}  # "noisy" is misread as derain

    class Encoder:
        def encode(self, texts):
            emb = torch.zeros(len(texts), 768)
            for i, t in enumerate(texts):
                emb[i, direction[t]] = 10.0
            return emb

    held = {"denoise": ["grainy", "noisy"], "derain": ["rainy"], UNSUPPORTED: ["make coffee"], "dehaze": []}
    assert held_out_accuracy(head, Encoder(), held) == (0.75, 4)
    assert held_out_accuracy(head, Encoder(), {"denoise": ["noisy"]}) == (0.0, 1)
    assert held_out_accuracy(head, Encoder(), {}) == (0.0, 0)

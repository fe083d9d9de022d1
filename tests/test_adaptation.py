"""Feature adaptations (the paper's Table 1 baselines): PromptIR prompts, InstructIR gating, external control."""

import json

import pytest
import torch
from test_train import folders, make_cfg  # noqa: F401  (a fixture)

from instruct_ipt import InstructIPT
from instruct_ipt.adaptation import KINDS, AdaptationConfig
from instruct_ipt.cli import main
from instruct_ipt.models import IPTConfig
from instruct_ipt.modulation import ModulationConfig
from instruct_ipt.pipeline import RestorationPipeline
from instruct_ipt.train import ConfigError, Trainer

TASKS = ["denoise", "deblur"]


def adapted(kind: str, instruction: str = "learned") -> InstructIPT:
    return InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=None,
                       adaptation=AdaptationConfig(kind=kind, instruction=instruction)).eval()


def perturb(model: InstructIPT) -> None:
    with torch.no_grad():
        for p in model.adaptation.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_starts_as_the_backbone_then_conditions_each_sample(kind):
    model = adapted(kind)
    plain = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=None).eval()
    assert model.backbone_state_dict().keys() == plain.backbone_state_dict().keys()
    plain.load_backbone_state_dict(model.backbone_state_dict())
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x, TASKS), plain(x))  # zero-initialised adapters
        perturb(model)
        mixed = model(x, TASKS)
        alone = torch.cat([model(x[:1], "denoise"), model(x[1:], "deblur")])
        swapped = model(x[:1], "deblur")
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)
    assert (mixed - plain(x)).abs().max() > 1e-3  # the adapters act
    task_effect = (swapped - alone[:1]).abs().max()
    if kind == "prompt":  # PromptIR predicts its prompts from the features: no task input
        assert task_effect == 0
    else:
        assert task_effect > 1e-3
    count = model.parameter_count()
    assert count.backbone == sum(p.numel() for p in plain.parameters())
    assert count.adaptation == sum(p.numel() for p in model.adaptation.parameters()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_merged_and_the_restore_path(kind, tmp_path):
    model = adapted(kind)
    perturb(model)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        ref = model(x, "deblur")
        again = InstructIPT.from_pretrained(model.save_pretrained(tmp_path / kind))
        assert again.adaptation_config == model.adaptation_config
        torch.testing.assert_close(again(x, "deblur"), ref)
        with model.merged("deblur"):  # nothing folded: the task is given to every call
            torch.testing.assert_close(model(x), ref)
    if kind != "prompt":
        with pytest.raises(ValueError, match="say which task to run"):
            model(x)
    pipe = RestorationPipeline(again)
    out = pipe.run(x[0].permute(1, 2, 0).numpy(), ["deblur"])
    assert out.shape == (32, 48, 3)
    assert pipe.active_engine == "pytorch"
    pipe.engine = "auto"
    assert pipe.active_engine == "pytorch"  # an adapted model does not export: auto stays on PyTorch


def test_text_task_vectors_come_from_the_packaged_encoder_and_are_saved(tmp_path):
    model = adapted("gating", instruction="text")
    text = model.backbone.adaptation_task.text
    assert text.shape == (2, 384) and torch.allclose(text.norm(dim=1), torch.ones(2))
    assert (text[0] - text[1]).abs().max() > 0.05  # the tasks' phrasings differ
    again = InstructIPT.from_pretrained(model.save_pretrained(tmp_path / "g"))
    torch.testing.assert_close(again.backbone.adaptation_task.text, text)


def test_external_control_starts_as_the_encoder_and_holds_no_tensors_between_calls():
    model = adapted("external")
    plain = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=None)
    model.load_backbone_state_dict(plain.backbone_state_dict())  # e.g. a trained plain model's weights
    control = model.backbone.adaptation_control
    torch.testing.assert_close(control.encoders[1].state_dict(), plain.backbone.encoders[1].state_dict())
    torch.testing.assert_close(control.embed.weight, plain.backbone.embed.weight)
    model.train()
    model(torch.rand(2, 3, 32, 32), TASKS).mean().backward()
    assert control._features == [] and control._input is None  # no graph kept alive: deepcopy (EMA) works
    import copy

    copy.deepcopy(model)


def test_info_counts_an_adaptation_config(capsys):
    assert main(["info", "--size", "tiny", "--adaptation", "external", "--macs", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = InstructIPT("tiny", modulation=None, adaptation=AdaptationConfig("external"), encode_text=False)
    assert info["adaptation"] == {"kind": "external", "instruction": "text", "dim": 64} and info["modulation"] is None
    assert info["adaptation_parameters"] == sum(p.numel() for p in model.adaptation.parameters())
    assert info["backbone_parameters"] + info["adaptation_parameters"] == sum(p.numel() for p in model.parameters())
    plain = json.loads((main(["info", "--size", "tiny", "--plain", "--macs", "32", "--json"]), capsys.readouterr().out)[1])
    assert info["gmacs_at_32"] > plain["gmacs_at_32"]  # the control branch runs beside the encoder
    assert main(["info", "--size", "tiny", "--adaptation", "gating"]) == 0
    assert "feature adaptation: gating, text task vectors" in capsys.readouterr().out


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="weight modulation or a feature adaptation \\(gating\\), not both"):
        InstructIPT(IPTConfig.named("tiny"), tasks=TASKS, modulation=ModulationConfig(),
                    adaptation=AdaptationConfig("gating"))
    with pytest.raises(ValueError, match="unknown adaptation 'film'; known: prompt, gating, external"):
        AdaptationConfig("film")
    model = adapted("external")
    with pytest.raises(ValueError, match="cannot be exported as a plain network"):
        model.export_merged("denoise")
    with pytest.raises(ValueError, match="keeps the tasks it was built with"):
        model.add_task("derain")


def test_trainer_trains_an_adaptation_in_plain_mode(folders, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="model.adaptation: 'film' is not one of prompt, gating, external"):
        make_cfg(folders, tmp_path, model={"adaptation": "film"})
    with pytest.raises(ConfigError, match="trains with mode plain; it cannot be combined with weight modulation"):
        make_cfg(folders, tmp_path, mode="sync", model={"adaptation": "gating"})
    cfg = make_cfg(folders, tmp_path / "run", mode="plain", tasks={"denoise": {}, "deblur": {}}, iterations=2,
                   val_every=2, model={"adaptation": "gating", "adaptation_instruction": "learned"})
    model = Trainer(cfg, progress=False).run()
    assert model.adaptation_config == AdaptationConfig("gating", "learned")
    # an init model with another (or no) adaptation: refused, not silently trained as something else
    cfg2 = make_cfg(folders, tmp_path / "run2", mode="plain", tasks={"denoise": {}, "deblur": {}}, iterations=2,
                    model={"adaptation": "prompt", "init": str(tmp_path / "run" / "model")})
    with pytest.raises(ConfigError, match="model.adaptation is prompt, but model.init .* has adaptation gating"):
        Trainer(cfg2, progress=False).run()
    gate = model.backbone.encoders[0].adapter.weight
    assert gate.abs().max() > 0  # trained away from its zero start
    assert main(["info", "--model", str(tmp_path / "run" / "model")]) == 0

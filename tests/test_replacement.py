"""Weight replacement (the paper's Table 9 baseline): a full weight per task, no shared weight."""

import pytest
import torch
from test_train import folders, make_cfg  # noqa: F401  (a fixture)

from instruct_ipt import InstructIPT
from instruct_ipt.models import IPTConfig
from instruct_ipt.modulation import ModulationConfig, ReplacedConv2d, ReplacedLinear, modulate
from instruct_ipt.train import Trainer

TASKS = ["denoise", "deblur"]
REPLACE = ModulationConfig(kind="replace", targets=("output", "*.ffn.expand"))


def replaced_model() -> InstructIPT:
    model = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=REPLACE)
    with torch.no_grad():  # tasks start equal (copies of one weight): make them differ
        for p in model.modulation.task_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_each_task_has_its_own_full_weight_and_no_shared_one():
    model = replaced_model()
    layers = dict(model.modulation.layers())
    assert isinstance(layers["output"], ReplacedConv2d)
    out = layers["output"]
    assert out.task_weight_stack.shape == (2, out.weight_shape[0], out.weight_shape[1:].numel())
    assert not hasattr(out.base_layer, "weight") or "weight" not in out.base_layer._parameters
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("output.base_layer.weight") for n in names)
    assert "output.weight" not in model.backbone_state_dict()
    assert "output.bias" in model.backbone_state_dict()  # the bias stays shared
    count = model.parameter_count()
    assert count.per_task == sum(layer.weight_shape.numel() for layer in layers.values())
    assert not hasattr(out, "weight")  # nothing can use a shared weight by mistake


def test_mixed_batch_equals_each_sample_alone_and_tasks_differ():
    model = replaced_model()
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        mixed = model(x, ["denoise", "deblur"])
        alone = torch.cat([model(x[:1], "denoise"), model(x[1:], "deblur")])
        other = model(x[:1], "deblur")
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)
    assert (other - alone[:1]).abs().max() > 1e-3


def test_linear_layers_and_modulate_on_any_module():
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    before = net[2].weight.detach().clone()
    handle = modulate(net, ["a", "b"], targets=["2"], kind="replace")
    assert isinstance(net[2], ReplacedLinear) and handle.config.kind == "replace"
    torch.testing.assert_close(net[2].task_weight(1), before)  # each task starts from the old weight
    with torch.no_grad():
        net[2].task_weight_stack[1].add_(1.0)
    x = torch.rand(3, 4)
    with torch.no_grad(), handle.select(["a", "b", "b"]):
        mixed = net(x)
    with torch.no_grad(), handle.select("b"):
        b = net(x)
    torch.testing.assert_close(mixed[1:], b[1:])
    assert (mixed[0] - b[0]).abs().max() > 0.1


def test_save_load_merge_export_and_task_state_round_trip(tmp_path):
    model = replaced_model()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        ref = model(x, "deblur")
        again = InstructIPT.from_pretrained(model.save_pretrained(tmp_path / "m"))
        torch.testing.assert_close(again(x, "deblur"), ref)
        assert again.modulation_config.kind == "replace"
        torch.testing.assert_close(model.export_merged("deblur")(x), ref)
        with model.merged("deblur"):
            torch.testing.assert_close(model(x), ref)
    state = model.modulation.task_state_dict("deblur")
    assert set(state) == {"output.task_weight_stack"} | {f"{n}.task_weight_stack" for n, _ in model.modulation.layers()}
    model.modulation.load_task_state_dict("denoise", state)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "denoise"), ref)


def test_plain_weights_start_every_task_and_old_configs_load_as_low_rank():
    plain = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=None).eval()
    model = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=REPLACE).eval()
    model.load_backbone_state_dict(plain.backbone_state_dict())
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        for t in TASKS:
            torch.testing.assert_close(model(x, t), plain(x))
    old = {k: v for k, v in ModulationConfig().to_dict().items() if k != "kind"}
    assert ModulationConfig.from_dict(old).kind == "low-rank"
    with pytest.raises(ValueError, match="unknown modulation kind 'full'; use one of: low-rank, replace"):
        ModulationConfig(kind="full")


def test_weight_analyses_refuse_replaced_layers():
    from instruct_ipt.analysis import similarity

    plain = InstructIPT(IPTConfig.named("tiny"), tasks=list(TASKS), modulation=None)
    with pytest.raises(ValueError, match="fine-tuned model replaces weights per task"):
        similarity(plain, replaced_model())


def test_trainer_trains_replaced_weights_per_task(folders, tmp_path):  # noqa: F811
    cfg = make_cfg(folders, tmp_path / "sync", tasks={"denoise": {}, "deblur": {}}, iterations=2, val_every=2,
                   model={"modulation_kind": "replace", "targets": ["output"]})
    model = Trainer(cfg, progress=False).run()
    assert model.modulation_config.kind == "replace"
    stack = dict(model.modulation.layers())["output"].task_weight_stack
    assert (stack[0] - stack[1]).abs().max() > 0  # each task's weight saw only its own samples
    # bias-only on the replaced model: only the named task's weight moves, the backbone stays
    init = tmp_path / "init"
    model.save_pretrained(init)
    cfg2 = make_cfg(folders, tmp_path / "bias", tasks={"denoise": {}, "deblur": {}}, mode="bias-only",
                    train_tasks=["deblur"], iterations=2, val_every=2, model={"init": str(init)})
    tuned = Trainer(cfg2, progress=False).run()
    before, after = model.backbone_state_dict(), tuned.backbone_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    s0, s1 = stack.detach(), dict(tuned.modulation.layers())["output"].task_weight_stack.detach()
    assert torch.equal(s0[0], s1[0]) and not torch.equal(s0[1], s1[1])

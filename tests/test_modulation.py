import copy

import pytest
import torch
from conftest import randomize_task_biases
from torch import nn

from instruct_ipt import InstructIPT
from instruct_ipt.models import IPTV2, IPTConfig
from instruct_ipt.modulation import ModulatedConv2d, ModulatedLayer, ModulatedLinear, modulate, task_index

TASKS = ["denoise", "deblur", "derain"]


class ConvNet(nn.Module):
    """A model we did not write: every kind of layer the modulated layers support."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),  # dense kxk
            nn.GELU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"),  # depthwise, reflect pad
            nn.Conv2d(8, 16, 1),  # pointwise
            nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=False),  # strided
        )
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(8 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 5))

    def forward(self, x):
        return self.head(self.body(x))


def modulated_convnet(**kw):
    net = ConvNet()
    return net, modulate(net, TASKS, rank=2, targets=["body.*", "head.*"], **kw)


def test_plain_sequential_models_can_be_modulated():
    _net, mod = modulated_convnet()
    kinds = {type(m) for _, m in mod.layers()}
    assert kinds == {ModulatedConv2d, ModulatedLinear}
    assert len(list(mod.layers())) == 6
    linear_only = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    m2 = modulate(linear_only, ["a", "b"], rank=3, targets=["0", "2"])
    randomize_task_biases(m2)
    x = torch.randn(3, 4)
    with torch.no_grad(), m2.select("a"):
        ya = linear_only(x)
    with torch.no_grad(), m2.select("b"):
        yb = linear_only(x)
    assert ya.shape == (3, 2) and not torch.allclose(ya, yb)


def test_zero_initialised_model_computes_exactly_the_backbone():
    backbone = IPTV2(IPTConfig.tiny())
    reference = copy.deepcopy(backbone)
    mod = modulate(backbone, TASKS, rank=4)
    x = torch.rand(3, 3, 20, 28)
    with torch.no_grad():
        expected = reference(x)
        for t in TASKS:
            with mod.select(t):
                assert torch.equal(backbone(x), expected)  # W + 0 is exactly W
        with mod.select(["deblur", "denoise", "derain"]):
            torch.testing.assert_close(backbone(x), expected, rtol=1e-5, atol=1e-6)


def per_sample_reference(model_fn, x, tasks):
    return torch.cat([model_fn(x[i : i + 1], t) for i, t in enumerate(tasks)])


def merged_forward(net, mod):
    """``(x, task) -> net(x)`` with the task's weights merged (no mixed-batch path involved)."""

    def run(xi, t):
        mod.merge(t)
        try:
            with mod.select(None):
                return net(xi)
        finally:
            mod.unmerge()

    return run


@pytest.mark.parametrize("strategy", ["constant", "proportional"])
def test_mixed_batch_equals_per_sample_merged_weights(strategy):
    net, mod = modulated_convnet(strategy=strategy, proportion=0.5)
    randomize_task_biases(mod, 0.2)
    x = torch.randn(5, 3, 8, 8)
    tasks = ["derain", "denoise", "derain", "deblur", "denoise"]
    with torch.no_grad(), mod.select(tasks):
        mixed = net(x)

    with torch.no_grad():
        expected = per_sample_reference(merged_forward(net, mod), x, tasks)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)


def test_mixed_batches_build_the_task_one_hot_once_per_forward_and_never_reuse_it(monkeypatch):
    # the (batch, tasks) one-hot is shared by every layer of one forward; the next batch's tasks get their own
    from instruct_ipt.modulation import layers

    net, mod = modulated_convnet()
    randomize_task_biases(mod, 0.2)
    built = []
    real = layers.one_hot
    monkeypatch.setattr(layers, "one_hot", lambda *a: built.append(a) or real(*a))
    x = torch.randn(3, 3, 8, 8)

    with torch.no_grad():
        for tasks in (["derain", "denoise", "deblur"], ["deblur", "derain", "denoise"]):
            with mod.select(tasks):
                mixed = net(x)
            torch.testing.assert_close(mixed, per_sample_reference(merged_forward(net, mod), x, tasks), rtol=1e-5, atol=1e-5)
    assert len(built) == 2 and len(list(mod.layers())) > 2


@pytest.mark.parametrize("how", ["eager", "compiled", "gradients on inside"])
def test_a_mixed_batch_trains_after_an_inference_mode_forward_on_the_same_selection(how):
    # a one-hot made under inference_mode cannot be saved for backward: a training forward makes its own
    import contextlib

    import torch._dynamo

    net, mod = modulated_convnet()
    x = torch.randn(3, 3, 8, 8)
    mod.select(["derain", "denoise", "deblur"])  # (takes effect at once, no context manager)
    torch._dynamo.reset()
    try:
        with torch.inference_mode(), torch.enable_grad() if how == "gradients on inside" else contextlib.nullcontext():
            evaluated = (torch.compile(net, backend="eager", fullgraph=True) if how == "compiled" else net)(x)
        trained = net(x)
    finally:
        torch._dynamo.reset()
    trained.sum().backward()
    torch.testing.assert_close(trained.detach(), evaluated.clone(), rtol=0, atol=0)
    assert all(p.grad is not None for _, layer in mod.layers() for _, p in layer.task_parameters())


def test_mixed_batch_full_model_matches_exported_single_task_models():
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    x = torch.rand(4, 3, 21, 19)
    tasks = ["deblur", "derain", "denoise", "deblur"]
    with torch.no_grad():
        mixed = model(x, tasks)
        plain = {t: model.export_merged(t) for t in TASKS}
        expected = per_sample_reference(lambda xi, t: plain[t](xi), x, tasks)
        by_ids = model(x, torch.tensor([model.task_index(t) for t in tasks]))
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_ids, mixed, rtol=0, atol=0)
    assert not any(isinstance(m, ModulatedLayer) for t in TASKS for m in plain[t].modules())


def test_merge_unmerge_leaves_weights_bit_identical():
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x, "derain")
        model.merge("derain")
        assert model.modulation.merged_task == "derain"
        merged = model(x)  # no task needed once merged
        same_task = model(x, "derain")
        with pytest.raises(RuntimeError, match="unmerge"):
            model(x, "denoise")
        model.unmerge()
        after = model(x, "derain")
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(same_task, merged)
    assert torch.equal(after, expected)
    assert model.modulation.merged_task is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradients_reach_backbone_and_only_present_tasks():
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    x = torch.rand(2, 3, 16, 16)
    loss = model(x, ["denoise", "derain"]).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.modulation.backbone_parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.modulation.backbone_parameters())
    for _, layer in model.modulation.layers():
        for p in (layer.task_B1, layer.task_B2):
            assert p.grad[1].abs().sum() == 0  # deblur absent
    present = sum(float(p.grad[[0, 2]].abs().sum()) for p in model.modulation.task_parameters())
    assert present > 0


def test_bias_only_training_keeps_backbone_and_other_tasks_bit_identical():
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    # momentum from an earlier synchronous phase must not leak into frozen rows
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    (model(x, TASKS) - y).abs().mean().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    freeze = model.modulation.freeze(train_tasks=["derain"], train_backbone=False)
    opt = torch.optim.AdamW(freeze.parameters, lr=1e-2, weight_decay=0.1)
    freeze.attach(opt)
    for _ in range(3):
        opt.zero_grad()
        # batches may even contain the frozen tasks: their rows still must not move
        (model(x, ["derain", "denoise", "derain"]) - y).abs().mean().backward()
        opt.step()
    freeze.release()

    changed = set()
    for k, v in model.state_dict().items():
        if "task_B" in k:
            assert torch.equal(v[[0, 1]], before[k][[0, 1]]), k
            if not torch.equal(v[2], before[k][2]):
                changed.add(k)
        else:
            assert torch.equal(v, before[k]), k
    assert changed, "the trained task's biases did not change"
    assert all(p.requires_grad for p in model.parameters())  # release restores requires_grad


def test_frozen_rows_never_reach_the_optimizer_and_cost_one_operation_each_way_however_many_layers():
    """The frozen rows' gradients are zeroed before the step (the moments stay zero, even for a
    batch holding a frozen task) and the rows are copied back after it, bit for bit - each as one
    multi-tensor operation, not one per stacked parameter (per-parameter hooks and copies were a
    fifth of a bias-only step's operations, which bound a small model's step on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    with torch.no_grad():
        model.modulation.task_parameters()[1][1].fill_(-0.0)
    freeze = model.modulation.freeze(train_tasks=["derain"], train_backbone=True)
    opt = torch.optim.AdamW(freeze.parameters, lr=1e-2, weight_decay=0.1)
    freeze.attach(opt)
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    (model(x, ["derain", "denoise", "deblur"]) - y).abs().mean().backward()
    stacked = model.modulation.task_parameters()
    assert len(stacked) > 20 and any(float(p.grad[:2].abs().sum()) > 0 for p in stacked)
    ops: list[str] = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Count():
        freeze.mask_gradients()
    assert ops == ["_foreach_mul_"]
    assert all(float(p.grad[:2].abs().sum()) == 0 and float(p.grad[2].abs().sum()) > 0 for p in stacked)
    opt.step()
    assert all(float(opt.state[p]["exp_avg"][:2].abs().sum()) == 0 for p in stacked)
    (model(x, ["derain", "denoise", "deblur"]) - y).abs().mean().backward()  # unmasked: the step's own hook masks
    before = [p.detach().clone() for p in stacked]
    ops.clear()
    with Count():
        freeze.restore()
    assert ops == ["_foreach_copy_"]
    opt.step()
    assert all(float(opt.state[p]["exp_avg"][:2].abs().sum()) == 0 for p in stacked)
    assert all(torch.equal(p[:2], b[:2]) and not torch.equal(p[2], b[2]) for p, b in zip(stacked, before))
    # bit for bit, whatever a step left there: a non-finite value, or a zero of the other sign
    with torch.no_grad():
        stacked[0][0].fill_(float("nan"))
        stacked[1][1].fill_(0.0)  # the snapshot holds -0.0 there (below)
    freeze.restore()
    assert all(torch.equal(p[:2].view(torch.int32), b[:2].view(torch.int32)) for p, b in zip(stacked, before))
    assert torch.signbit(stacked[1][1]).all()
    freeze.release()


def test_a_caller_that_masks_after_the_backward_attaches_without_a_second_mask():
    """attach(opt, mask_gradients=False), as the trainer does (it masks before clipping): the step
    no longer masks again, and the frozen rows are still restored after it."""
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    freeze = model.modulation.freeze(train_tasks=["derain"])
    opt = torch.optim.AdamW(freeze.parameters, lr=1e-2, weight_decay=0.1)
    freeze.attach(opt, mask_gradients=False)
    stacked = model.modulation.task_parameters()
    before = [p.detach().clone() for p in stacked]
    (model(torch.rand(3, 3, 16, 16), ["derain", "denoise", "deblur"]) - torch.rand(3, 3, 16, 16)).abs().mean().backward()
    opt.step()  # (unmasked gradients: this caller did not mask)
    assert any(float(opt.state[p]["exp_avg"][:2].abs().sum()) > 0 for p in stacked)
    assert all(torch.equal(p[:2], b[:2]) and not torch.equal(p[2], b[2]) for p, b in zip(stacked, before))
    freeze.release()


def test_frozen_rows_on_both_sides_of_the_trained_one_survive_a_cast_after_freezing():
    """Two runs of frozen rows (the trained task in the middle) are restored; a model cast after
    freeze() has new parameter memory, which the freeze binds to again instead of restoring the old."""
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    freeze = model.modulation.freeze(train_tasks=["deblur"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.double()
    opt = torch.optim.SGD(freeze.parameters, lr=0.1, momentum=0.9, weight_decay=0.1)
    freeze.attach(opt)
    x, y = torch.rand(3, 3, 16, 16, dtype=torch.float64), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    for _ in range(2):
        opt.zero_grad()
        (model(x, TASKS) - y).abs().mean().backward()
        opt.step()
    freeze.release()
    moved = 0
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float64, k
        if "task_B" in k:
            assert torch.equal(v[[0, 2]], before[k][[0, 2]].double()), k
            moved += not torch.equal(v[1], before[k][1].double())
        else:
            assert torch.equal(v, before[k].double()), k
    assert moved > 0


def test_add_task_starts_at_the_backbone():
    model = InstructIPT("tiny", tasks=TASKS)
    plain = model.export_merged("denoise")  # B1 = 0 for every task: the backbone
    randomize_task_biases(model.modulation)
    idx = model.add_task("desnow")
    assert idx == 3 and model.tasks[-1] == "desnow"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, "desnow"), plain(x))
    with pytest.raises(ValueError, match="already exists"):
        model.add_task("desnow")


def test_default_targets_are_the_task_sensitive_groups():
    model = InstructIPT("tiny", tasks=TASKS)
    names = {n for n, _ in model.modulation.layers()}
    assert "embed" not in names
    assert "output" in names
    assert {"downsamples.0.conv", "upsamples.2.conv", "reduces.1"} <= names
    assert "encoders.0.blocks.0.attn.qkv" in names and "encoders.0.blocks.0.attn.proj" in names
    assert "bottleneck.blocks.0.grid.qkv" in names and "refine.blocks.0.ffn.reduce" in names
    assert not any(n.endswith(("qkv_dw", "dwconv")) for n in names)
    assert not any("norm" in n for n in names)


def test_rank_strategies():
    _, const = modulated_convnet()
    assert set(const.parameter_count().ranks.values()) == {2}
    net = ConvNet()
    prop = modulate(net, TASKS, targets=["body.*", "head.*"], strategy="proportional", proportion=0.25)
    ranks = prop.parameter_count().ranks
    assert ranks["body.0"] == round(0.25 * min(8, 27))  # out=8, in*k*k=27
    assert ranks["body.3"] == round(0.25 * min(16, 8))
    assert ranks["head.3"] == max(1, round(0.25 * min(5, 10)))


def test_parameter_accounting():
    model = InstructIPT("tiny", tasks=TASKS)
    count = model.parameter_count()
    per_task = sum(layer.task_B1[0].numel() + layer.task_B2[0].numel() for _, layer in model.modulation.layers())
    assert count.per_task == per_task
    assert count.backbone == sum(p.numel() for p in IPTV2(IPTConfig.tiny()).parameters())
    assert count.share == pytest.approx(per_task / count.backbone)
    total = sum(p.numel() for p in model.parameters())
    assert total == count.backbone + len(TASKS) * count.per_task


def test_clear_errors():
    backbone = IPTV2(IPTConfig.tiny())
    with pytest.raises(ValueError, match="matched no Linear/Conv2d layer: nope.*"):
        modulate(backbone, TASKS, targets=["output", "nope.*"])
    mod = modulate(backbone, TASKS)
    with pytest.raises(ValueError, match="already modulated"):
        modulate(backbone, TASKS)
    with pytest.raises(ValueError, match="unknown task 'dehaze'; this model knows: denoise, deblur, derain"):
        mod.select("dehaze")
    with pytest.raises(RuntimeError, match="no task selected"):
        backbone(torch.rand(1, 3, 8, 8))
    model = InstructIPT("tiny", tasks=TASKS)
    with pytest.raises(ValueError, match="say which task"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="2 tasks for a batch of 3"):
        model(torch.rand(3, 3, 8, 8), ["denoise", "deblur"])
    with pytest.raises(ValueError, match=r"task ids must be in \[0, 3\)"):
        model(torch.rand(2, 3, 8, 8), torch.tensor([0, 7]))


def test_callable_targets():
    net = ConvNet()
    mod = modulate(net, TASKS, rank=1, targets=lambda name, m: isinstance(m, nn.Linear))
    assert {n for n, _ in mod.layers()} == {"head.1", "head.3"}


def test_mixed_batch_in_channels_last_matches_nchw_and_keeps_the_layout():
    """Training runs the model channels-last: the mixed-batch path must give the same values and
    gradients as NCHW and hand channels-last maps on, so no layer converts the layout back."""
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 24, 24)
    ids = torch.tensor([2, 0, 1, 2])
    out = model(x, ids)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last), ids)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    layer = cl.backbone.encoders[0].blocks[0].ffn.expand  # a modulated pointwise conv
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    cl(x.contiguous(memory_format=torch.channels_last), ids)
    handle.remove()
    assert seen == [True]
    out.square().mean().backward()
    out_cl.square().mean().backward()
    grads = dict(model.named_parameters())
    for name, p in cl.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def _outputs(net, mod, x, tasks):
    """Each task's output on ``x``, plus one mixed batch (one task per sample) over ``tasks``."""
    with torch.no_grad():
        single = {}
        for t in tasks:
            with mod.select(t):
                single[t] = net(x)
        with mod.select([tasks[i % len(tasks)] for i in range(x.shape[0])]):
            mixed = net(x)
    return single, mixed


def test_remove_task_keeps_the_other_tasks_bit_identical():
    net, mod = modulated_convnet()
    randomize_task_biases(mod)
    tasks = mod.tasks
    x = torch.rand(4, 3, 8, 8)
    rest = ["denoise", "derain"]
    before = _outputs(net, mod, x, rest)
    rows = {name: (layer.task_B1[[0, 2]].clone(), layer.task_B2[[0, 2]].clone()) for name, layer in mod.layers()}
    with mod.select("derain"):
        mod.remove_task("deblur")
        assert mod.selection.index == 1  # a selected later task follows its row down
    assert mod.tasks == rest and mod.tasks is tasks  # in place: a model sharing the list sees it
    assert mod.task_index("derain") == 1
    for name, layer in mod.layers():
        assert layer.num_tasks == 2
        assert torch.equal(layer.task_B1, rows[name][0]) and torch.equal(layer.task_B2, rows[name][1]), name
    after = _outputs(net, mod, x, rest)
    for t in rest:
        assert torch.equal(before[0][t], after[0][t]), t
    assert torch.equal(before[1], after[1])
    with pytest.raises(ValueError, match="unknown task 'deblur'"):
        mod.select("deblur")
    # by index, and while merged for a later task (its merged index moves down too)
    mod.add_task("desnow")
    randomize_task_biases(mod)
    with torch.no_grad(), mod.select("desnow"):
        expected = net(x)
    mod.merge("desnow")
    mod.remove_task(0)
    assert mod.tasks == ["derain", "desnow"] and mod.merged_task == "desnow"
    with torch.no_grad(), mod.select("desnow"):
        assert torch.equal(net(x), expected)
    mod.unmerge()
    with torch.no_grad(), mod.select("desnow"):
        assert torch.equal(net(x), expected)


def test_remove_task_refuses_the_last_unknown_and_merged_task():
    _net, mod = modulated_convnet()
    with pytest.raises(ValueError, match="unknown task 'dehaze'; this model knows: denoise, deblur, derain"):
        mod.remove_task("dehaze")
    with pytest.raises(ValueError, match="task index 3 out of range for 3 tasks"):
        mod.remove_task(3)
    mod.merge("deblur")
    with pytest.raises(ValueError, match="cannot remove task 'deblur': the model is merged for it; call unmerge"):
        mod.remove_task("deblur")
    mod.unmerge()
    mod.remove_task("deblur")
    mod.remove_task("denoise")
    with pytest.raises(ValueError, match="cannot remove task 'derain': it is the model's only task"):
        mod.remove_task("derain")
    assert mod.tasks == ["derain"] and all(layer.num_tasks == 1 for _, layer in mod.layers())
    layer = next(layer for _, layer in mod.layers())
    with pytest.raises(ValueError, match="at least one task"):
        layer.remove_task(0)
    with pytest.raises(ValueError, match="out of range"):
        layer.remove_task(True)


def test_add_then_remove_task_gives_back_the_same_state_dict():
    backbone = IPTV2(IPTConfig.tiny())
    mod = modulate(backbone, TASKS, rank=2)
    randomize_task_biases(mod)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    mod.add_task("desnow")
    with torch.no_grad():  # whatever the new task learnt
        for _, layer in mod.layers():
            layer.task_B1[-1].normal_()
    mod.remove_task("desnow")
    after = backbone.state_dict()
    assert mod.tasks == TASKS and after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k


def test_task_index_is_one_rule():
    assert task_index(TASKS, "deblur") == 1 and task_index(TASKS, 2) == 2
    _, mod = modulated_convnet()
    for lookup in (lambda t: task_index(TASKS, t), mod.task_index):
        for flag in (True, False):
            with pytest.raises(ValueError, match=rf"task {flag}: a bool is not a task name or index"):
                lookup(flag)
        with pytest.raises(ValueError, match="task index 3 out of range for 3 tasks"):
            lookup(3)
        with pytest.raises(ValueError, match="task index -1 out of range for 3 tasks"):
            lookup(-1)
        with pytest.raises(ValueError, match="unknown task 'dehaze'; this model knows: denoise, deblur, derain"):
            lookup("dehaze")
    with pytest.raises(ValueError, match="a bool is not a task name or index"):
        mod.select(True)


def test_a_mixed_batch_forward_compiles_as_one_graph():
    """torch.compile sees the whole training forward as one graph, compiled once for every mix of
    tasks (it broke into a graph per modulated layer, whose shapes then hit the recompile limit and
    ran eagerly: docs/training.md, "Its first run on an H200")."""
    import torch._dynamo

    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=TASKS)
    randomize_task_biases(model.modulation)
    model.train().to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
        with torch._dynamo.config.patch(error_on_recompile=True):  # so does compiling a second time
            for ids in ([0, 1, 1, 0], [2, 2, 2, 2], [1, 0, 2, 1]):
                x = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
                out = compiled(x, torch.tensor(ids))
                out.mean().backward()
                torch.testing.assert_close(out, model(x, torch.tensor(ids)), rtol=0, atol=0)
        # the ids are still checked when compiled (a RuntimeError there, as on a GPU; a ValueError eagerly)
        with pytest.raises(RuntimeError, match="task ids must be in"):
            compiled(torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last), torch.tensor([0, 1, 3, 0]))
    finally:
        torch._dynamo.reset()


class _Casts:
    """The shapes of the tensors cast (``_to_copy``) while it is entered."""

    def __enter__(self) -> list[tuple[int, ...]]:
        from torch.utils._python_dispatch import TorchDispatchMode

        shapes: list[tuple[int, ...]] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ == "_to_copy":
                    shapes.append(tuple(args[0].shape))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return shapes

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


@pytest.mark.parametrize(
    ("layer", "kind", "x_shape", "casts_forward", "casts_backward"),
    [
        # (a plain layer casts its input and its weight, and its weight's gradient back)
        (nn.Conv2d(8, 12, 1, bias=False), "low-rank", (4, 8, 5, 5), 2, 1),  # pointwise: a batched matmul
        (nn.Linear(5, 7), "low-rank", (4, 3, 5), 2, 1),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), "low-rank", (4, 8, 5, 5), 2, 1),  # depthwise: grouped
        (nn.Conv2d(8, 12, 1, bias=False), "replace", (4, 8, 5, 5), 2, 1),
        # dense kxk: the base conv (input, W), then a conv to rank channels (input again, picked B2) and a
        # matmul (picked B1); backward: the gradients of W, picked B2 and picked B1
        (nn.Conv2d(8, 12, 3, padding=1, bias=False), "low-rank", (4, 8, 5, 5), 5, 3),
    ],
    ids=["pointwise", "linear", "depthwise", "replaced", "dense-kxk"],
)
def test_under_autocast_a_mixed_batch_layer_builds_its_weights_in_float32_and_casts_each_once(
    layer, kind, x_shape, casts_forward, casts_backward
):
    """bfloat16 autocast, as the trainer runs on a GPU: each sample's weight (W + B1[t] @ B2[t], or
    its picked rows) is built in float32 with autocast off, so the layer's own matmul or convolution
    casts it once - where autocast cast B1, B2, the one-hot and the tasks' weights on the way, and
    their gradients back (nine casts a pointwise layer instead of three; a GPU step pays the host
    for each: docs/training.md, "Casts under autocast")."""
    torch.manual_seed(0)
    net = nn.Sequential(layer)
    mod = modulate(net, TASKS, rank=2, targets=["0"], kind=kind)
    randomize_task_biases(mod)
    x = torch.rand(*x_shape)
    with mod.select(torch.tensor([0, 2, 1, 2])):
        onehot = mod.selection.onehot_on(x.device, len(TASKS), torch.float32)  # (made once per forward, not cast)
        plain = net[0]._sample_weights(onehot)
        with _Casts() as forward, torch.autocast("cpu", dtype=torch.bfloat16):
            weights = net[0]._sample_weights(onehot)
            y = net[0](x)
            delta = net[0].delta_weight(1) if kind == "low-rank" else None
        loss = y.float().sum()
        with _Casts() as backward:
            loss.backward()
    assert weights.dtype == torch.float32 and (delta is None or delta.dtype == torch.float32)
    torch.testing.assert_close(weights, plain, rtol=0, atol=0)
    assert len(forward) == casts_forward, forward
    assert len(backward) == casts_backward + 1, backward  # (+1: the loss's .float())
    with mod.select(torch.tensor([0, 2, 1, 2])):
        expected = net[0](x)  # float32
    torch.testing.assert_close(y.float(), expected, rtol=3e-2, atol=3e-2)


def test_a_mixed_batch_forward_under_autocast_compiles_as_one_graph():
    """Turning autocast off around the weights' arithmetic stays inside one compiled graph, with
    its backward (AOTAutograd, as the trainer's torch.compile), for every kind of modulated layer."""
    import torch._dynamo

    torch.manual_seed(0)
    net, mod = modulated_convnet()
    randomize_task_biases(mod)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for ids in ([0, 1, 1, 0], [2, 2, 2, 2]):
                x = torch.rand(4, 3, 8, 8)
                with mod.select(torch.tensor(ids)), torch.autocast("cpu", dtype=torch.bfloat16):
                    out = compiled(x)
                    expected = net(x)
                out.float().mean().backward()
                torch.testing.assert_close(out, expected, rtol=0, atol=0)
    finally:
        torch._dynamo.reset()


def test_a_model_on_the_meta_device_runs_mixed_and_single_task_batches():
    """Shape-only runs (the meta device, which autocast does not know) still go through."""
    with torch.device("meta"):
        net, mod = modulated_convnet()
        x = torch.empty(4, 3, 8, 8)
    with mod.select(torch.tensor([0, 1, 2, 0], device="meta")):
        assert net(x).shape == (4, 5)
    with mod.select(1):
        assert net(x).shape == (4, 5)

"""modulate() on a diffusers UNet2DModel (the paper's diffusion extension, issue 20 item 1)."""

import fnmatch

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from instruct_ipt.modulation import UNET2D_TARGET_GROUPS, ModulatedLayer, modulate, unet2d_targets

TASKS = ["inpaint", "outpaint"]


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=7, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def run(unet, x, t):
    with torch.no_grad():
        return unet(x, t).sample


def test_every_group_is_targeted_and_a_fresh_modulation_is_the_base():
    unet = tiny_unet()
    x, t = torch.rand(2, 7, 16, 16), torch.tensor([10, 500])
    before = run(unet, x, t)
    handle = modulate(unet, TASKS, rank=4, targets=unet2d_targets())
    names = [n for n, _ in handle.layers()]
    for group, patterns in UNET2D_TARGET_GROUPS.items():  # each group found layers
        assert any(any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names), group
    assert "conv_in" not in names and "conv_out" not in names and not any("conv_shortcut" in n for n in names)
    assert all(isinstance(layer, ModulatedLayer) for _, layer in handle.layers())
    with handle.select(["inpaint", "outpaint"]):
        torch.testing.assert_close(run(unet, x, t), before)  # B1 starts at zero


def test_mixed_batch_equals_each_sample_merged_and_bias_only_keeps_the_rest(tmp_path):
    unet = tiny_unet()
    handle = modulate(unet, TASKS, rank=4, targets=unet2d_targets(["resnet", "attention", "sampling", "time"]))
    with torch.no_grad():
        for p in handle.task_parameters():
            p.normal_(0, 0.05)
    x, t = torch.rand(2, 7, 16, 16), torch.tensor([10, 500])
    with handle.select(["inpaint", "outpaint"]):
        mixed = run(unet, x, t)
    alone = []
    for i, task in enumerate(TASKS):
        handle.merge(task)
        alone.append(run(unet, x[i : i + 1], t[i : i + 1]))
        handle.unmerge()
    torch.testing.assert_close(mixed, torch.cat(alone), atol=1e-4, rtol=1e-4)
    handle.merge("outpaint")  # the first sample under the other task's biases: another result
    assert (run(unet, x[:1], t[:1]) - alone[0]).abs().max() > 1e-3
    handle.unmerge()

    # bias-only training of one task: backbone and the other task bit-identical
    frozen_backbone = {n: p.detach().clone() for n, p in unet.named_parameters() if "task_B" not in n}
    other = [p[0].detach().clone() for p in handle.task_parameters()]
    trained = [p[1].detach().clone() for p in handle.task_parameters()]
    freeze = handle.freeze(train_tasks=["outpaint"])
    opt = torch.optim.AdamW(freeze.parameters, lr=1e-2, weight_decay=0.1)
    freeze.attach(opt)
    unet.train()
    for _ in range(2):
        with handle.select(["inpaint", "outpaint"]):
            loss = unet(x, t).sample.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze.release()
    assert all(torch.equal(p, frozen_backbone[n]) for n, p in unet.named_parameters() if "task_B" not in n)
    assert all(torch.equal(p[0], o) for p, o in zip(handle.task_parameters(), other))
    assert any(not torch.equal(p[1], q) for p, q in zip(handle.task_parameters(), trained))

    # adapter files: a task's biases into another modulated U-Net of the same layout
    path = handle.save_adapter(tmp_path / "outpaint.safetensors", "outpaint")
    fresh = modulate(tiny_unet(), ["inpaint"], rank=4, targets=unet2d_targets())
    assert fresh.load_adapter(path) == "outpaint" and fresh.tasks == ["inpaint", "outpaint"]
    fresh.merge("outpaint")
    handle.merge("outpaint")
    torch.testing.assert_close(run(fresh.model, x, t), run(unet.eval(), x, t))
    wrong_rank = modulate(tiny_unet(), ["inpaint"], rank=2, targets=unet2d_targets())
    with pytest.raises(ValueError, match="another modulation"):
        wrong_rank.load_adapter(path)
    assert wrong_rank.tasks == ["inpaint"]


def test_unknown_group_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown U-Net target group.*known: resnet, attention, sampling, time"):
        unet2d_targets(["resnets"])

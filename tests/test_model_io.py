import json
from unittest import mock

import pytest
import torch
from conftest import randomize_task_biases
from safetensors.torch import load_file, save_file

from instruct_ipt import CheckpointError, InstructIPT, ModulationConfig
from instruct_ipt.models import IPTConfig

TASKS = ["denoise", "deblur"]


def trained_like(tasks=TASKS, **kw) -> InstructIPT:
    model = InstructIPT("tiny", tasks=tasks, **kw)
    if model.modulation is not None:
        randomize_task_biases(model.modulation)
    return model


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = trained_like(modulation=ModulationConfig(rank=3, strategy="proportional", proportion=0.1))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = InstructIPT.from_pretrained(tmp_path / "m")
    assert loaded.tasks == TASKS
    assert loaded.config == model.config and loaded.modulation_config == model.modulation_config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 17, 23)
    with torch.no_grad():
        assert torch.equal(model(x, ["deblur", "denoise"]), loaded(x, ["deblur", "denoise"]))


def test_plain_model_round_trip(tmp_path):
    model = InstructIPT("tiny", tasks=TASKS, modulation=None)
    model.save_pretrained(tmp_path)
    loaded = InstructIPT.from_pretrained(tmp_path)
    assert loaded.modulation is None and loaded.tasks == TASKS
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, "deblur"), loaded(x, "deblur"))
    with pytest.raises(ValueError, match="unknown task"):
        loaded(x, "dehaze")


def test_config_json_is_readable(tmp_path):
    InstructIPT("tiny", tasks=TASKS).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["format"] == "instruct-ipt"
    assert cfg["tasks"] == TASKS
    assert cfg["modulation"]["rank"] == 8 and cfg["modulation"]["strategy"] == "constant"
    assert "output" in cfg["modulation"]["targets"]
    assert cfg["backbone"] == IPTConfig.tiny().to_dict()


def test_missing_and_mismatched_checkpoints_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        InstructIPT.from_pretrained(tmp_path / "nowhere")
    trained_like().save_pretrained(tmp_path)
    # weights from a model of another rank under this config
    other = InstructIPT("tiny", tasks=TASKS, modulation=ModulationConfig(rank=2))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape mismatch in \d+ tensors: .*task_B1: \(2, \d+, 2\) in the file, \(2, \d+, 8\) in the model"):
        InstructIPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        InstructIPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an instruct-ipt model"):
        InstructIPT.from_pretrained(tmp_path)



def test_a_damaged_model_folder_is_a_checkpoint_error_naming_the_file(tmp_path):
    """A killed copy or a hand edit: CheckpointError (the CLI's one line), never safetensors' or an
    AttributeError's traceback."""
    trained_like().save_pretrained(tmp_path)
    config, weights = tmp_path / "config.json", tmp_path / "model.safetensors"
    good = json.loads(config.read_text())
    for text in ("[1, 2]", "null", json.dumps({**good, "task_grid_spans": [1]})):
        config.write_text(text)
        with pytest.raises(CheckpointError, match=rf"^{config}: (not an instruct-ipt model config|invalid model config)"):
            InstructIPT.from_pretrained(tmp_path)
    config.write_text(json.dumps(good))
    whole = weights.read_bytes()
    for damaged in (whole[: len(whole) // 2], b""):
        weights.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=rf"^{weights}: not a readable \.safetensors file"):
            InstructIPT.from_pretrained(tmp_path)
    weights.write_bytes(whole)
    InstructIPT.from_pretrained(tmp_path)  # the folder as written loads


def test_save_never_leaves_temp_files(tmp_path):
    trained_like().save_pretrained(tmp_path)
    trained_like().save_pretrained(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_adapter_round_trip_onto_fresh_backbone(tmp_path):
    base = trained_like()
    base.save_pretrained(tmp_path / "base")
    # a downstream task trained on top of the saved model
    model = InstructIPT.from_pretrained(tmp_path / "base")
    model.add_task("derain")
    with torch.no_grad():
        for _, layer in model.modulation.layers():
            layer.task_B1[2].normal_(0, 0.05)
    path = model.save_adapter(tmp_path / "derain.safetensors", "derain")
    adapter = load_file(str(path))
    assert all(k.endswith(("task_B1", "task_B2")) for k in adapter)
    adapter_size = sum(v.numel() for v in adapter.values())
    assert adapter_size == model.parameter_count().per_task

    fresh = InstructIPT.from_pretrained(tmp_path / "base")
    assert fresh.load_adapter(path) == "derain"
    assert fresh.tasks == ["denoise", "deblur", "derain"]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x, "derain"), model(x, "derain"))
        assert torch.equal(fresh(x, "denoise"), base(x, "denoise"))
    with pytest.raises(ValueError, match="already exists; pass replace=True"):
        fresh.load_adapter(path)
    fresh.load_adapter(path, task="derain", replace=True)
    assert fresh.load_adapter(path, task="derain-copy") == "derain-copy"


def test_adapter_mismatches_name_what_differs(tmp_path):
    model = trained_like()
    path = model.save_adapter(tmp_path / "a.safetensors", "deblur")
    other_rank = InstructIPT("tiny", tasks=TASKS, modulation=ModulationConfig(rank=4))
    with pytest.raises(CheckpointError, match=r"modulation.rank: 8 in the file, 4 in the model"):
        other_rank.load_adapter(path, task="x")
    other_cfg = InstructIPT(IPTConfig(**{**IPTConfig.tiny().to_dict(), "dim": 12}), tasks=TASKS)
    with pytest.raises(CheckpointError, match=r"backbone.dim: 8 in the file, 12 in the model"):
        other_cfg.load_adapter(path, task="x")
    other_weights = trained_like()  # same config, different backbone weights
    with pytest.raises(CheckpointError, match="different backbone weights"):
        other_weights.load_adapter(path, task="x")
    assert other_weights.tasks == TASKS  # nothing was added
    assert other_weights.load_adapter(path, task="x", check_backbone=False) == "x"
    with pytest.raises(CheckpointError, match="not an instruct-ipt adapter"):
        other_weights.load_adapter(_plain_safetensors(tmp_path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k: v.clone() for k, v in load_file(str(path)).items()}
    for key in ("modulation", "backbone"):  # metadata edited by hand: one CheckpointError naming the file
        save_file(state, str(tmp_path / "edited.safetensors"), metadata={k: v for k, v in meta.items() if k != key})
        with pytest.raises(CheckpointError, match=rf"edited\.safetensors: an adapter whose metadata is incomplete .*KeyError\('{key}'\)"):
            other_weights.load_adapter(tmp_path / "edited.safetensors", task="y")


def _plain_safetensors(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(p))
    return p


def spanned_model() -> InstructIPT:
    """Tiny model whose grid groups span 32 px, except deblur's (image-wide)."""
    config = IPTConfig.from_dict({**IPTConfig.tiny().to_dict(), "grid_span": 32})
    model = InstructIPT(config, tasks=TASKS, task_grid_spans={"deblur": None})
    randomize_task_biases(model.modulation)
    return model.eval()


def test_task_grid_span_applies_to_its_task_only(tmp_path):
    torch.manual_seed(0)
    model = spanned_model()
    x = torch.rand(2, 3, 64, 48)  # larger than the span: the grouping matters
    with torch.no_grad():
        deblur, denoise = model(x, "deblur"), model(x, "denoise")
        image_wide = InstructIPT(IPTConfig.tiny(), tasks=TASKS)
        image_wide.load_state_dict(model.state_dict())
        torch.testing.assert_close(deblur, image_wide(x, "deblur"))  # the override
        assert not torch.allclose(denoise, image_wide(x, "denoise"), atol=1e-4)  # the default
        # the same after merge, per sample (one task), in an exported plain backbone, and after a round trip
        torch.testing.assert_close(model.merge("deblur")(x), deblur)
        model.unmerge()
        torch.testing.assert_close(model(x, torch.tensor([1, 1])), deblur)
        torch.testing.assert_close(model.export_merged("deblur")(x), deblur)
        torch.testing.assert_close(model.export_merged("denoise")(x), denoise)
        model.save_pretrained(tmp_path)
        loaded = InstructIPT.from_pretrained(tmp_path)
        assert loaded.task_grid_spans == {"deblur": None} and loaded.config.grid_span == 32
        torch.testing.assert_close(loaded(x, "deblur"), deblur)
        # a mixed batch runs with the default span; the backbone is left at its default
        mixed = model(x, ["deblur", "denoise"])
        torch.testing.assert_close(mixed[1], denoise[1])
        assert model.backbone.config.grid_span == 32


def test_training_size_batches_skip_the_task_scan():
    """Patches no larger than any span are grouped alike by all: no per-step task scan (a device sync)."""
    torch.manual_seed(0)
    model = spanned_model()
    scan = mock.patch.object(torch.Tensor, "unique", side_effect=AssertionError("scanned"))
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        with scan:
            out = model(x, torch.tensor([1, 1]))
        torch.testing.assert_close(out, model(x, "deblur"))
        with scan, pytest.raises(AssertionError, match="scanned"):  # larger than the span: the scan runs
            model(torch.rand(2, 3, 64, 48), torch.tensor([1, 1]))


def test_task_grid_span_is_checked():
    model = InstructIPT("tiny", tasks=TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        model.set_task_grid_span("dehaze", None)
    with pytest.raises(ValueError, match="grid_span"):
        model.set_task_grid_span("deblur", 40)


def test_merged_is_exception_safe_and_leaves_a_users_merge_alone():
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=["denoise", "deblur", "derain"]).eval()
    for _, layer in model.modulation.layers():
        torch.nn.init.normal_(layer.task_B1, std=0.05)  # tasks that differ
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        expect = {t: model(x, t) for t in model.tasks}
        with model.merged("deblur"):
            torch.testing.assert_close(model(x), expect["deblur"])
            assert model.modulation.merged_task == "deblur"
        assert model.modulation.merged_task is None
        with pytest.raises(RuntimeError, match="boom"), model.merged("derain"):
            raise RuntimeError("boom")
        assert model.modulation.merged_task is None  # unmerged although the block raised
        model.merge("denoise")  # the user's merge survives a merged block for another task ...
        with model.merged("derain"):
            torch.testing.assert_close(model(x), expect["derain"])
        assert model.modulation.merged_task == "denoise"
        torch.testing.assert_close(model(x), expect["denoise"])
        with model.merged("denoise"):  # ... and one for the same task
            pass
        assert model.modulation.merged_task == "denoise"
        with pytest.raises(ValueError, match="unknown task 'sharpen'"), model.merged("sharpen"):
            pass
        assert model.modulation.merged_task == "denoise"
    plain = InstructIPT("tiny", tasks=["denoise"], modulation=None)
    with plain.merged("denoise"):  # nothing to merge, the name is still checked
        pass
    with pytest.raises(ValueError, match="unknown task"), plain.merged("deblur"):
        pass


def test_a_tasks_grid_span_is_passed_to_the_backbone_not_swapped_in():
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=["denoise", "dehaze"], task_grid_spans={"dehaze": 32}).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "dehaze"), model(x, "dehaze", grid_span=32))
        assert not torch.allclose(model(x, "dehaze"), model(x, "dehaze", grid_span=None), atol=1e-5)
        torch.testing.assert_close(model(x, "denoise"), model(x, "denoise", grid_span=None))
        with model.merged("dehaze"):
            torch.testing.assert_close(model(x), model(x, grid_span=32))
        # a mixed batch runs with the backbone's span; the config is never changed
        mixed = model(torch.cat([x, x]), ["denoise", "dehaze"])
        torch.testing.assert_close(mixed[1:], model(x, "dehaze", grid_span=None))
    assert model.config.grid_span is None and model.grid_span_for("dehaze", x) == 32
    assert model.grid_span_for("dehaze", x[..., :32, :32]) is None  # a patch no larger than every span


def test_summary_counts_a_merged_task_and_leaves_the_merge_as_it_was():
    model = InstructIPT("tiny", tasks=["denoise", "deblur"])
    info = model.summary(macs=32)
    one_task = sum(layer.task_B1[0].numel() + layer.task_B2[0].numel() for _, layer in model.modulation.layers())
    assert info["tasks"] == ["denoise", "deblur"] and info["extra_parameters_per_task"] == one_task
    assert info["gmacs_at_32"] == InstructIPT("tiny", tasks=["denoise"], modulation=None).summary(macs=32)["gmacs_at_32"]
    assert model.modulation.merged_task is None
    model.merge("deblur")
    model.summary(macs=32)
    assert model.modulation.merged_task == "deblur"


def test_hash_state_tells_shape_and_dtype_apart_but_not_memory_layout():
    import hashlib

    import torch

    from instruct_ipt.io import hash_state

    def digest(state):
        h = hashlib.sha256()
        hash_state(h, state)
        return h.hexdigest()

    x = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    base = digest({"w": x, "b": torch.ones(2)})
    assert digest({"b": torch.ones(2), "w": x}) == base  # order of the keys does not matter
    assert digest({"w": x.to(memory_format=torch.channels_last), "b": torch.ones(2)}) == base
    assert digest({"w": x.reshape(1, 2, 4, 3), "b": torch.ones(2)}) != base  # same bytes, other shape
    assert digest({"w": x.view(torch.int32), "b": torch.ones(2)}) != base  # same bytes, other dtype
    assert digest({"w": x, "b": torch.ones(2), "e": torch.zeros(0)}) != base

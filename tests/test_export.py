"""``instruct-ipt export`` and ``restore --engine``: exported files restore exactly what the
PyTorch model restores, at sizes other than the one they were traced at; the onnxruntime engine
(the CPU default) caches its graphs on disk under a key that follows the weights.

The model is tiny and random, with non-zero task biases (so a file of the wrong task, or with no
task merged, gives other pixels) and a grid span for one task (so grid attention's block split,
which depends on the map size, is exercised in the graphs as well as the image-wide grid).
"""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import randomize_task_biases
from PIL import Image
from skimage import data

from instruct_ipt import IPTV2, InstructIPT, RestorationPipeline
from instruct_ipt import export as export_module
from instruct_ipt.cli import main
from instruct_ipt.export import (
    MERGED_FORMAT,
    TRACE_SIZE,
    MissingExportDependency,
    OnnxRestorer,
    load_merged,
    onnx_cache_dir,
    onnx_cache_key,
)
from instruct_ipt.inference import restore_array

TASKS = ["denoise", "derain", "dehaze"]
#: the trace size, then sizes that need padding to the multiple of 8 (odd ones included)
SIZES = [(TRACE_SIZE, TRACE_SIZE), (72, 100), (123, 77)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """A tiny model gains nothing from more threads, and where the CPU is shared (a training job
    beside the tests) OpenMP's waiting threads made each forward pass ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = InstructIPT("tiny", tasks=TASKS, task_grid_spans={"derain": 32})  # 32: tiny's smallest span
    randomize_task_biases(model.modulation, 0.2)
    d = tmp_path_factory.mktemp("model")
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return InstructIPT.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


def export(model_dir, out_dir, task, fmt, fp16=False, suffix=None):
    path = out_dir / f"{task}{'-fp16' if fp16 else ''}.{suffix or fmt}"
    if not path.exists():
        assert main(["export", "--model", str(model_dir), "-t", task, "--format", fmt, "-o", str(path),
                     *(["--fp16"] if fp16 else [])]) == 0
    return path


def images(h, w, n=1):
    """Photos, not noise: crops of scikit-image's astronaut and coffee, float32 (H, W, 3) in [0, 1]."""
    photos = [data.astronaut(), data.coffee()]
    return [photos[i % 2][10 * i : 10 * i + h, 20 * i : 20 * i + w].astype(np.float32) / 255 for i in range(n)]


def reference(model, rgb, task):
    """What the pipeline computes: the task merged, ``restore_array`` (channels-last, PyTorch's padding)."""
    with model.merged(task):
        return restore_array(model, rgb, None, tile=0)


def nchw(rgbs, dtype=np.float32):
    return np.ascontiguousarray(np.stack(rgbs).transpose(0, 3, 1, 2), dtype=dtype)


@pytest.fixture(scope="module")
def ort_session(model_dir, out_dir):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return lambda task, fp16=False: ort.InferenceSession(str(export(model_dir, out_dir, task, "onnx", fp16)), options,
                                                         providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("task", ["denoise", "derain"])  # image-wide grid; grid span 32 (blocks at larger maps)
def test_onnx_matches_pytorch_at_sizes_it_was_not_traced_at(model, ort_session, task):
    session = ort_session(task)
    other = "dehaze"
    for h, w in SIZES:
        rgbs = images(h, w, 2)  # batch 2: the batch axis is dynamic too
        out = session.run(["output"], {"input": nchw(rgbs)})[0]
        assert out.shape == (2, 3, h, w) and out.dtype == np.float32
        for rgb, got in zip(rgbs, out):
            want = reference(model, rgb, task).transpose(2, 0, 1)
            assert np.abs(got - want).max() < 1e-4, (task, h, w)
            assert np.abs(got - reference(model, rgb, other).transpose(2, 0, 1)).max() > 1e-2  # the task matters


def test_onnx_file_is_self_contained_with_one_dynamic_input(model_dir, out_dir):
    onnx = pytest.importorskip("onnx")
    path = export(model_dir, out_dir, "derain", "onnx")
    proto = onnx.load(str(path))
    assert proto.ir_version <= 9
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    for value in (inp, out):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    weights = sum(p.numel() for p in IPTV2(InstructIPT.from_pretrained(model_dir).config).parameters())
    assert path.stat().st_size >= 4 * weights  # every float32 weight is in the file


def test_fp16_onnx_runs_in_half_precision_and_is_close(model, ort_session):
    session = ort_session("denoise", fp16=True)
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float16)"
    rgbs = images(72, 100, 2)
    out = session.run(["output"], {"input": nchw(rgbs, np.float16)})[0]
    assert out.dtype == np.float16 and out.shape == (2, 3, 72, 100)
    for rgb, got in zip(rgbs, out):
        want = reference(model, rgb, "denoise").transpose(2, 0, 1)
        # 2% of the output's range (a random model's outputs are not in [0, 1]); float16 keeps 11 bits
        assert np.abs(got.astype(np.float32) - want).max() < 2e-2 * np.ptp(want)


def test_torchscript_matches_pytorch(model, model_dir, out_dir):
    traced = torch.jit.load(str(export(model_dir, out_dir, "derain", "torchscript", suffix="pt")))
    for h, w in SIZES:
        rgbs = images(h, w, 2)
        with torch.no_grad():
            out = traced(torch.from_numpy(nchw(rgbs))).numpy()
        assert out.shape == (2, 3, h, w)
        for rgb, got in zip(rgbs, out):
            assert np.abs(got - reference(model, rgb, "derain").transpose(2, 0, 1)).max() < 1e-4, (h, w)


def test_merged_safetensors_reloads_into_the_plain_backbone(model, model_dir, out_dir):
    path = export(model_dir, out_dir, "derain", "safetensors")
    net, meta = load_merged(path)
    assert type(net) is IPTV2 and meta["format"] == MERGED_FORMAT and meta["task"] == "derain"
    assert json.loads(meta["backbone"])["grid_span"] == 32  # the task's span travels with the file
    assert net.config == model.export_merged("derain").config  # the source model's, with the task's span
    for h, w in SIZES[1:]:
        (rgb,) = images(h, w)
        with torch.no_grad():
            got = net(torch.from_numpy(nchw([rgb])))[0].numpy()
        assert np.abs(got - reference(model, rgb, "derain").transpose(2, 0, 1)).max() < 1e-4
    half = export(model_dir, out_dir, "derain", "safetensors", fp16=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    net16, meta16 = load_merged(half, dtype=None)
    assert meta16["dtype"] == "float16" and next(net16.parameters()).dtype == torch.float16
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    wider = json.dumps({**json.loads(meta["backbone"]), "dim": 12})  # a config its weights do not fit
    save_file({k: v.clone() for k, v in load_file(str(path)).items()}, str(out_dir / "edited.safetensors"),
              metadata={**meta, "backbone": wider})
    with pytest.raises(ValueError, match=r"edited\.safetensors: a merged export whose weights do not fit its config"):
        load_merged(out_dir / "edited.safetensors")


def test_unknown_task_is_a_one_line_error_listing_the_tasks(model_dir, tmp_path, capsys):
    target = tmp_path / "x.onnx"
    assert main(["export", "--model", str(model_dir), "-t", "sharpen", "--format", "onnx", "-o", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "instruct-ipt export: error: unknown task 'sharpen'; this model knows: denoise, derain, dehaze"
    assert not target.exists()
    with pytest.raises(SystemExit) as e:  # an unknown format: argparse lists the formats
        main(["export", "--model", str(model_dir), "-t", "derain", "--format", "tflite", "-o", str(target)])
    assert e.value.code == 2 and "choose from 'safetensors', 'onnx', 'torchscript'" in capsys.readouterr().err


def test_never_writes_into_a_model_folder(model_dir, capsys):
    before = sorted(p.name for p in model_dir.iterdir())
    target = model_dir / "model.safetensors"
    assert main(["export", "--model", str(model_dir), "-t", "derain", "--format", "safetensors", "-o", str(target)]) == 2
    assert "refusing to write into a model folder" in capsys.readouterr().err
    assert sorted(p.name for p in model_dir.iterdir()) == before
    InstructIPT.from_pretrained(model_dir)  # still the model


@pytest.fixture
def onnx_deps():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty ONNX cache for one test (the session-wide one may already hold this model's graphs)."""
    monkeypatch.setenv("INSTRUCT_IPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_onnx_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCT_IPT_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_cache_dir() == tmp_path / "own" / "onnx"
    monkeypatch.delenv("INSTRUCT_IPT_CACHE")
    assert onnx_cache_dir() == tmp_path / "xdg" / "instruct-ipt" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert onnx_cache_dir() == tmp_path / "home" / ".cache" / "instruct-ipt" / "onnx"


def test_a_second_restorer_loads_the_cached_graph_without_exporting(model, own_cache, onnx_deps):
    exports = []
    (rgb,) = images(72, 100)
    first = OnnxRestorer(model, on_export=exports.append)(rgb, "derain")
    assert exports == ["derain"]
    assert [p.name for p in own_cache.iterdir()] == [f"{onnx_cache_key(model, 'derain')}.onnx"]  # no temporary left
    again = OnnxRestorer(model, on_export=exports.append)  # a new command, as it were
    assert np.array_equal(again(rgb, "derain"), first)
    assert exports == ["derain"]  # read from the cache, not exported
    assert np.abs(first - reference(model, rgb, "derain")).max() < 1e-4


def test_a_weight_changed_in_memory_gets_a_new_graph(model, own_cache, onnx_deps):
    changed = copy.deepcopy(model)  # the module's model stays as it is
    exports = []
    engine = OnnxRestorer(changed, on_export=exports.append)
    (rgb,) = images(72, 100)
    before, key = engine(rgb, "derain"), onnx_cache_key(changed, "derain")
    with torch.no_grad():
        changed.backbone.output.base_layer.bias[0] += 0.25  # one weight, after the first export
    assert onnx_cache_key(changed, "derain") != key
    after = engine(rgb, "derain")  # the same restorer: its session in memory is not reused either
    assert exports == ["derain", "derain"] and len(list(own_cache.iterdir())) == 2
    assert np.abs(after - reference(changed, rgb, "derain")).max() < 1e-4  # the new weight's pixels
    assert np.abs(after - before).max() > 0.1


def test_a_corrupt_cache_file_is_exported_again_and_replaced(model, own_cache, onnx_deps):
    path = own_cache / f"{onnx_cache_key(model, 'denoise')}.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph" * 100)  # what a full disk or a crash mid-copy could leave
    exports = []
    (rgb,) = images(72, 100)
    out = OnnxRestorer(model, on_export=exports.append)(rgb, "denoise")
    assert exports == ["denoise"] and not path.read_bytes().startswith(b"not an onnx graph")
    assert np.abs(out - reference(model, rgb, "denoise")).max() < 1e-4
    assert np.array_equal(OnnxRestorer(model, on_export=exports.append)(rgb, "denoise"), out)
    assert exports == ["denoise"]  # the replacement loads


def test_the_cache_keeps_the_graphs_used_most_recently(model, own_cache, onnx_deps):
    """Every new model or version adds graphs: past ``max_graphs`` the least recently used go, a hit
    renews a graph, and files the cache did not name (a user's own, even an .onnx) are left alone."""
    import os

    path = {t: own_cache / f"{onnx_cache_key(model, t)}.onnx" for t in TASKS}
    exports = []
    (rgb,) = images(40, 48)
    engine = OnnxRestorer(model, on_export=exports.append, max_graphs=2)
    engine(rgb, "denoise")
    engine(rgb, "derain")
    own_cache.joinpath("notes.txt").write_text("mine")
    own_cache.joinpath("mine.onnx").write_bytes(b"a graph of the user's own")  # not a cache name: never evicted
    os.utime(own_cache / "mine.onnx", ns=(10**16, 10**16))
    os.utime(path["denoise"], ns=(10**18, 10**18))  # denoise used long after derain (explicit: the clock's grain)
    os.utime(path["derain"], ns=(10**17, 10**17))
    engine(rgb, "dehaze")  # a third graph: derain, the least recently used, goes
    assert exports == ["denoise", "derain", "dehaze"]
    assert sorted(p.name for p in own_cache.iterdir()) == sorted([path["denoise"].name, path["dehaze"].name, "mine.onnx", "notes.txt"])
    os.utime(path["denoise"], ns=(10**17, 10**17))  # now the oldest,
    os.utime(path["dehaze"], ns=(10**18, 10**18))
    OnnxRestorer(model, on_export=exports.append, max_graphs=2)(rgb, "denoise")  # but a hit renews it
    assert exports == ["denoise", "derain", "dehaze"] and path["denoise"].stat().st_mtime_ns > 10**18
    OnnxRestorer(model, on_export=exports.append, max_graphs=2)(rgb, "derain")  # so dehaze goes now
    assert sorted(p.name for p in own_cache.iterdir()) == sorted([path["denoise"].name, path["derain"].name, "mine.onnx", "notes.txt"])
    with pytest.raises(ValueError, match="max_graphs: at least 1"):
        OnnxRestorer(model, max_graphs=0)


def test_an_unwritable_cache_is_one_warning_not_an_error(model, tmp_path, monkeypatch, onnx_deps):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("INSTRUCT_IPT_CACHE", str(tmp_path / "a-file"))  # its onnx/ can never be made, even by root
    engine = OnnxRestorer(model)
    (rgb,) = images(40, 48)
    with pytest.warns(UserWarning, match="cannot write the ONNX cache") as caught:
        out = engine(rgb, "dehaze")
    assert len(caught) == 1
    assert np.abs(out - reference(model, rgb, "dehaze")).max() < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the graph is in memory now: no second export, no second warning
        assert np.array_equal(engine(rgb, "dehaze"), out)


def test_auto_engine_is_onnxruntime_on_the_cpu_and_pytorch_without_it(model, monkeypatch, onnx_deps):
    assert RestorationPipeline(model).engine == "torch"  # the default: faster per command (docs/deployment.md)
    assert RestorationPipeline(model).active_engine == "pytorch"
    assert RestorationPipeline(model, engine="auto").active_engine == "onnxruntime"
    assert RestorationPipeline(model, engine="torch").active_engine == "pytorch"
    assert RestorationPipeline(model, engine="onnx").active_engine == "onnxruntime"
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'; choose one of auto, torch, onnx"):
        RestorationPipeline(model, engine="tensorrt")

    def missing():
        raise MissingExportDependency("the onnx engine needs onnxruntime: pip install 'instruct-ipt[export]'")

    monkeypatch.setattr(export_module, "_onnxruntime", missing)
    pipe = RestorationPipeline(model, engine="auto")
    assert pipe.active_engine == "pytorch"  # auto falls back
    (rgb,) = images(40, 48)
    assert np.array_equal(pipe(rgb, task="derain"), RestorationPipeline(model, engine="torch")(rgb, task="derain"))
    with pytest.raises(ImportError, match="needs onnxruntime"):
        RestorationPipeline(model).use_onnx()  # asked for explicitly: an error


def test_restore_engine_onnx_without_onnxruntime_is_a_one_line_error(model_dir, tmp_path, monkeypatch, capsys):
    def missing():
        raise MissingExportDependency("the onnx engine needs onnxruntime: pip install 'instruct-ipt[export]'")

    monkeypatch.setattr(export_module, "_onnxruntime", missing)
    src = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[:24, :32]).save(src)
    assert main(["restore", str(src), "-t", "derain", "--model", str(model_dir), "--engine", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "instruct-ipt restore: error: the onnx engine needs onnxruntime: pip install 'instruct-ipt[export]'"
    assert not (tmp_path / "photo.restored.png").exists()
    assert main(["restore", str(src), "-t", "derain", "--model", str(model_dir), "--engine", "auto"]) == 0  # PyTorch, no error
    assert (tmp_path / "photo.restored.png").exists()


def test_restore_engines_auto_onnx_and_torch_on_an_8_bit_file(model_dir, tmp_path, own_cache, monkeypatch, capsys,
                                                              onnx_deps):
    sessions = []  # the onnx engine must really run onnxruntime
    session = OnnxRestorer.session
    monkeypatch.setattr(OnnxRestorer, "session", lambda self, task: sessions.append(task) or session(self, task))
    src = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()[:75, :101]).save(src)
    files, errs = {}, {}
    for engine in ("auto", "onnx", "torch"):
        sessions.clear()
        # tiles: the onnx engine goes through the same tiling and blending as PyTorch
        assert main(["restore", str(src), "-t", "derain", "--model", str(model_dir), "--engine", engine,
                     "--tile", "48", "--overlap", "8", "--device", "cpu", "-o", str(tmp_path / engine)]) == 0
        files[engine] = (tmp_path / engine / "photo.restored.png").read_bytes()
        errs[engine] = capsys.readouterr().err
        assert bool(sessions) == (engine != "torch")
    # the first command exports (one line on stderr), the second reads the graph from the cache
    assert errs["auto"].strip() == f"instruct-ipt restore: exporting derain to ONNX once (cached in {own_cache})"
    assert errs["onnx"] == errs["torch"] == ""
    assert files["auto"] == files["onnx"]  # byte for byte
    outs = {e: np.asarray(Image.open(tmp_path / e / "photo.restored.png")).astype(int) for e in files}
    assert np.abs(outs["onnx"] - outs["torch"]).max() <= 1
    assert np.abs(outs["torch"] - np.asarray(Image.open(src)).astype(int)).mean() > 2  # the model did something

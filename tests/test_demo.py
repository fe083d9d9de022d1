"""The web demo (``instruct-ipt demo``): the function behind the page, its API through
gradio_client, and the page itself driven by a headless Chromium.

A tiny random model keeps this quick; it uses the shipped instruction head and blind classifier
(same six tasks), so the choosing is the real thing and only the pixels are meaningless - which is
enough to check that the output is the restored one (it differs from the input) at full size."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data

pytest.importorskip("gradio")  # the demo extra; everything below needs it

from instruct_ipt import InstructIPT, RestorationPipeline
from instruct_ipt import demo as demo_module
from instruct_ipt.cli import main
from instruct_ipt.data.degradations import degrade
from instruct_ipt.data.images import load_image, save_image
from instruct_ipt.demo import EXAMPLE_SIZE, build_demo, mode_key, restore_for_demo, write_examples
from instruct_ipt.pipeline import TaskChoice

TASKS = ["denoise", "deblur", "derain", "dehaze", "desnow", "jpeg"]
H, W = 96, 128


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    InstructIPT("tiny", tasks=TASKS).save_pretrained(folder)  # the shipped head and classifier come with it
    return RestorationPipeline.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """A noisy 8-bit photo crop (sigma ~32: blind mode sees the noise)."""
    clean = data.astronaut()[:H, 160:160 + W].astype(np.float32) / 255.0
    return save_image(tmp_path_factory.mktemp("inputs") / "noisy.png", np.clip(degrade(clean, "denoise", seed=0).image, 0, 1))


def _differs_at_full_size(result: str, source) -> None:
    out, src = load_image(result), load_image(source)
    assert out.rgb.shape == src.rgb.shape == (H, W, 3)
    assert np.abs(out.rgb - src.rgb).mean() > 1e-3


@pytest.mark.parametrize(("mode", "task", "instruction", "source"), [
    ("auto", None, None, "blind"),
    ("task", "denoise", None, "as asked"),
    ("Describe it", None, "remove the noise", "from the instruction"),  # the page's label works as well as the key
])
def test_each_mode_restores_at_full_size(pipe, noisy, tmp_path, mode, task, instruction, source):
    previews, path, status = restore_for_demo(pipe, noisy, mode, task, instruction, out_dir=tmp_path)
    assert path == str(tmp_path / "noisy.restored.png")
    _differs_at_full_size(path, noisy)
    before, after = previews
    assert before.shape == after.shape == (H, W, 3) and before.dtype == after.dtype == np.uint8
    assert "denoise" in status and source in status and f"{W} x {H} px" in status


def test_16_bit_in_16_bit_out_and_progress(pipe, noisy, tmp_path):
    deep = save_image(tmp_path / "deep.png", load_image(noisy).rgb, bit_depth=16)
    calls = []
    _previews, path, status = restore_for_demo(pipe, deep, "task", "denoise,derain", out_dir=tmp_path / "out",
                                               progress=lambda f, d: calls.append((f, d)))
    out = load_image(path)
    assert out.bit_depth == 16 and "16-bit" in status
    _differs_at_full_size(path, deep)
    assert calls and calls[0][0] == 0.0 and "denoise, then derain" in calls[0][1]


def test_refusals_and_bad_files_give_a_message_not_an_exception(pipe, noisy, tmp_path, monkeypatch):
    previews, path, status = restore_for_demo(pipe, noisy, "instruction", None, "make it sepia")
    assert previews is None and path is None
    assert "Nothing restored" in status and "Supported tasks: denoise" in status  # the interpreter's refusal
    assert "instruction is empty" in restore_for_demo(pipe, noisy, "instruction", "denoise", "")[2]
    assert "unknown task 'sharpen'" in restore_for_demo(pipe, noisy, "task", "sharpen", None)[2]
    assert "Pick a task" in restore_for_demo(pipe, noisy, "task", None, None)[2]
    assert "Pick a task" in restore_for_demo(pipe, noisy, "task", [], None)[2]  # the page's list, nothing picked
    assert "unknown task 'sharpen'" in restore_for_demo(pipe, noisy, "task", ["denoise", "sharpen"], None)[2]
    assert "Upload an image" in restore_for_demo(pipe, None, "auto")[2]
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    for bad in (text, fake):
        previews, path, status = restore_for_demo(pipe, bad, "auto")
        assert previews is None and path is None and f"`{bad.name}` is not an image" in status
    heic = tmp_path / "IMG_0001.HEIC"  # an iPhone's photo where pillow-heif is not installed: say what to install
    heic.write_bytes((24).to_bytes(4, "big") + b"ftypheic\0\0\0\0mif1heic" + b"\0" * 32)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pillow_heif", None)
        status = restore_for_demo(pipe, heic, "auto")[2]
    assert "`IMG_0001.HEIC` is a HEIF/HEIC photo: reading it needs pillow-heif (`pip install 'instruct-ipt[heif]'`)" in status
    with pytest.raises(ValueError, match="mode 'sideways'"):
        mode_key("sideways")


def test_examples_are_degraded_crops_for_every_task(tmp_path):
    files = write_examples(tmp_path, TASKS + ["sharpen"])  # a task without a degradation gets no example
    assert list(files) == TASKS
    for path in files.values():
        assert max(load_image(path).rgb.shape[:2]) == EXAMPLE_SIZE


def test_cli_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["demo", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'instruct-ipt demo: error: the demo needs Gradio: pip install "instruct-ipt[demo]"'


# the running page ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    """The demo on a free local port, shared by the API and browser tests; closed afterwards."""
    demo = build_demo(pipe, work_dir=tmp_path_factory.mktemp("demo"))
    _app, url, _share = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                                    quiet=True)
    yield url
    demo.close()


def test_gradio_client_calls_restore(served, noisy, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    before_after, path, status = client.predict(handle_file(str(noisy)), "instruction", "denoise", "remove the noise",
                                                api_name="/restore")
    _differs_at_full_size(path, noisy)
    assert len(before_after) == 2 and "denoise" in status and "from the instruction" in status
    # the task list takes several, run in the order picked
    _before_after, path, status = client.predict(handle_file(str(noisy)), "task", ["derain", "denoise"], "",
                                                 api_name="/restore")
    _differs_at_full_size(path, noisy)
    assert "**Ran:** derain, then denoise [as asked]" in status
    refused = client.predict(handle_file(str(noisy)), "instruction", "denoise", "make it sepia", api_name="/restore")
    assert refused[:2] == (None, None) and "Supported tasks" in refused[2]
    text = tmp_path / "notes.png"
    text.write_text("not a picture")  # Gradio's own preprocessing would fail the event; the demo says what is wrong
    assert "`notes.png` is not an image" in client.predict(handle_file(str(text)), "auto", "denoise", "",
                                                            api_name="/restore")[2]
    assert not Path(demo_module.__file__).with_suffix(".pyi").exists()  # Gradio writes one for component subclasses


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium for the browser test: apt-get install chromium")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_browser_upload_describe_restore_download(served, noisy, tmp_path):
    """What a user does: upload, choose "Describe it", type, click Restore, get a full-size result."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    executable = _browser()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served, wait_until="domcontentloaded")
            page.locator("#photo input[type=file]").set_input_files(str(noisy))
            page.locator("#photo img").first.wait_for(timeout=30_000)  # uploaded and shown
            page.locator("#mode").get_by_text("Describe it").click()
            page.locator("#instruction textarea").fill("remove the noise")
            page.locator("#restore").click()
            page.locator("#status").get_by_text("Ran:").wait_for(timeout=60_000)
            assert "from the instruction" in page.locator("#status").inner_text()
            href = page.locator("#download a").first.get_attribute("href")
            response = page.request.get(href)
            assert response.ok, href
            result = tmp_path / "downloaded.png"
            result.write_bytes(response.body())
            _differs_at_full_size(str(result), noisy)
            page.screenshot(path=str(tmp_path / "demo-browser.png"), full_page=True)
        finally:
            browser.close()


def test_a_suggestion_says_how_to_run_it_on_the_page(pipe, noisy, tmp_path, monkeypatch):
    from instruct_ipt.instruct.blind import DegradationClassifier, Detection

    monkeypatch.setattr(DegradationClassifier, "examine", lambda self, rgb, probs=None, restore=None:
                        Detection([("denoise", 0.9)], [("dehaze", 0.6)]))
    status = restore_for_demo(pipe, noisy, "auto", None, None, out_dir=tmp_path)[2]
    assert "possibly also dehaze (not run" in status
    assert "To run it too: **Name the task** and pick *denoise*, then *dehaze*, or **Describe it**: *denoise, then dehaze*." in status
    # both ways it names run both, in that order - after any first task the shipped classifier may name
    status = restore_for_demo(pipe, noisy, "instruction", None, "denoise, then dehaze", out_dir=tmp_path)[2]
    assert "**Ran:** denoise (100%), then dehaze (100%) [from the instruction]" in status
    status = restore_for_demo(pipe, noisy, "task", ["denoise", "dehaze"], None, out_dir=tmp_path)[2]
    assert "**Ran:** denoise, then dehaze [as asked]" in status
    for first in TASKS:
        choice = TaskChoice([first], [0.9], "blind", ["dehaze"] if first != "dehaze" else ["denoise"])
        assert pipe.choose(instruction=", then ".join(choice.with_suggested)).tasks == choice.with_suggested

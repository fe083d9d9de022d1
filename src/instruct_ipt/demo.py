"""A web demo of the pipeline (``instruct-ipt demo``): upload a photo, say how the task is chosen,
compare before and after, download the full-resolution result.

Gradio is an optional extra (``pip install "instruct-ipt[demo]"``), so this module imports it only
inside :func:`build_demo`: ``import instruct_ipt`` never needs it, and :func:`restore_for_demo` -
the one function that both the page's Restore button and its API endpoint (``/restore``) call -
runs and is tested without a browser. The demo adds no restoration logic of its own: it calls
:class:`~instruct_ipt.pipeline.RestorationPipeline` exactly as ``instruct-ipt restore`` does, so the
downloaded file is the file the CLI would write (16-bit PNGs stay 16-bit, grey stays grey, alpha is
kept; images above 1024x1024 pixels are restored in tiles).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .data.images import HeifNeedsExtraError, ImageReadError, LoadedImage, from_array, load_image, save_image, to_uint8
from .inference import AUTO_TILE_PIXELS, DEFAULT_TILE

if TYPE_CHECKING:
    import gradio as gr

    from .pipeline import RestorationPipeline, TaskChoice

#: how the task is chosen: the API's values and the labels the page shows for them
MODES = {"auto": "Detect automatically", "task": "Name the task", "instruction": "Describe it"}
#: the endpoint both the button and gradio_client call
API_NAME = "restore"
#: the before/after slider shows at most this many pixels on the long side (the download is full size):
#: a browser gains nothing from a 6000 px PNG it shows in 800 px, and it costs seconds to send
PREVIEW_MAX_SIDE = 2048
#: the examples are crops this size: restored in a few seconds on a CPU
EXAMPLE_SIZE = 384
#: results and examples older than this are deleted, so a demo left running does not fill the disk
KEEP_SECONDS = 3600
#: one scikit-image photo per task for the examples (none needs a download): its name, and the
#: top-left corner of the crop. astronaut, chelsea, coffee and rocket were among the shipped
#: model's training photos (MODEL.md): the examples show the demo working, they are no benchmark
EXAMPLE_PHOTOS: dict[str, tuple[str, int, int]] = {
    "denoise": ("astronaut", 0, 64),
    "deblur": ("camera", 32, 64),
    "derain": ("coffee", 16, 108),
    "dehaze": ("rocket", 43, 128),
    "desnow": ("chelsea", 0, 33),
    "jpeg": ("astronaut", 128, 128),
}

#: ``progress(fraction, description)`` as the demo reports it (the page feeds it to ``gr.Progress``)
Progress = Callable[[float, str], None]
#: what :func:`restore_for_demo` returns: (before, after) previews or None, the result file or None, status
DemoResult = tuple[tuple[np.ndarray, np.ndarray] | None, str | None, str]


def mode_key(mode: str | None) -> str:
    """``"auto"``, ``"task"`` or ``"instruction"`` from a key or its label (None: auto)."""
    if mode is None or mode == "":
        return "auto"
    for key, label in MODES.items():
        if mode in (key, label):
            return key
    raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)} (or their labels: {', '.join(MODES.values())})")


def restore_for_demo(
    pipe: RestorationPipeline,
    image_path: str | os.PathLike | None,
    mode: str | None = "auto",
    task: str | Sequence[str] | None = None,
    instruction: str | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Restore one uploaded file for the page and its API; never raises for a user's mistake.

    ``mode`` says which of ``task`` / ``instruction`` is used (a key of :data:`MODES` or its
    label); the other is ignored, so the page can always send both. ``task`` is one task or
    several, run in the order given (the page's list keeps the order they were picked in; as
    for ``-t``, one string with commas works too). Returns ``((before, after),
    result_path, status_markdown)``: uint8 RGB previews for the slider (at most
    :data:`PREVIEW_MAX_SIDE` px), the full-resolution result written like ``instruct-ipt restore``
    writes it (``NAME.restored.png`` in ``out_dir``, default a new temporary folder), and the
    chosen task(s) with confidences. A missing or unreadable file, an unknown task or a refused
    instruction gives ``(None, None, message)``: the page shows the message and stays usable.
    """
    if not image_path:
        return None, None, "Upload an image first (or pick one of the examples)."
    try:
        key = mode_key(mode)
    except ValueError as e:
        return None, None, f"**Nothing restored.** {e}"
    name = Path(image_path).name
    try:
        image = load_image(image_path)
    except (ImageReadError, Image.DecompressionBombError) as e:
        if isinstance(e, HeifNeedsExtraError):  # (say what to install)
            return None, None, f"**Nothing restored.** `{name}` is a HEIF/HEIC photo: reading it needs pillow-heif (`pip install 'instruct-ipt[heif]'`)."
        return None, None, (f"**Nothing restored.** `{name}` is not an image this demo can read: upload a "
                            "PNG, JPEG, TIFF, BMP, WebP or HEIC file.")
    if key == "task" and not task:  # (an empty list: nothing picked)
        return None, None, f"**Nothing restored.** Pick a task: {', '.join(pipe.tasks)}."
    start = time.perf_counter()  # (choosing counts: blind mode's peeling restores a crop)
    try:
        choice = pipe.choose(image.rgb, task=task if key == "task" else None,
                             instruction=(instruction or "") if key == "instruction" else None)
    except ValueError as e:  # InstructionError (a refusal, with the tasks and example phrasings) or an unknown task
        return None, None, f"**Nothing restored.** {e}"
    restored = pipe.restore(image, choice=choice, progress=_task_progress(choice, progress))
    seconds = time.perf_counter() - start
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="instruct-ipt-demo-"))
    target = restored.save(folder / f"{Path(image_path).stem}.restored.png")
    previews = (_preview(image.rgb), _preview(restored.image.rgb))
    return previews, str(target), _status(choice, image, seconds, target)


def _task_progress(choice: TaskChoice, progress: Progress | None) -> Callable[[int, int], None] | None:
    """The pipeline reports tiles done per task; the page wants one fraction for all the tasks."""
    if progress is None or not choice.tasks:  # blind mode may find nothing to do
        return None
    state = {"task": 0}
    count = len(choice.tasks)

    def report(done: int, total: int) -> None:
        k = min(state["task"], count - 1)
        progress((k + done / total) / count, f"{choice.tasks[k]}: tile {done}/{total}")
        if done >= total:
            state["task"] += 1

    progress(0.0, f"restoring: {', then '.join(choice.tasks)}")
    return report


def _preview(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB for the slider, at most :data:`PREVIEW_MAX_SIDE` px on the long side."""
    img = to_uint8(rgb)
    h, w = img.shape[:2]
    if max(h, w) <= PREVIEW_MAX_SIDE:
        return img
    scale = PREVIEW_MAX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _status(choice: TaskChoice, image: LoadedImage, seconds: float, target: Path) -> str:
    h, w = image.rgb.shape[:2]
    kind = ("grey" if image.grey else "RGB") + (" + alpha" if image.alpha is not None else "")
    tiled = f", in {DEFAULT_TILE} px tiles" if h * w > AUTO_TILE_PIXELS else ""
    # both ways the page runs a sequence: the task list (in the order picked) and an instruction ("a, then b")
    sequence = choice.with_suggested
    also = (f"To run {'it' if len(choice.suggested) == 1 else 'them'} too: **{MODES['task']}** and pick "
            f"{', then '.join(f'*{t}*' for t in sequence)}, or **{MODES['instruction']}**: "
            f"*{', then '.join(sequence)}*.\n\n" if choice.suggested else "")
    return (f"**Ran:** {choice.describe()}\n\n{also}"
            f"{w} x {h} px, {image.bit_depth}-bit {kind}; {seconds:.1f} s{tiled}. "
            f"Download `{target.name}` below for the full-resolution result ({image.bit_depth}-bit PNG).")


# examples ----------------------------------------------------------------------------------
def write_examples(folder: str | os.PathLike, tasks: Sequence[str], size: int = EXAMPLE_SIZE) -> dict[str, Path]:
    """Degraded crops of scikit-image's bundled photos, one per task that has a photo and a
    synthetic degradation (seed 0: the same files every time), as PNG files in ``folder``.

    Made at start rather than shipped, because the demo must work on a machine without the
    project's photos; scikit-image missing gives no examples rather than no demo."""
    try:
        from skimage import data
    except ImportError:
        return {}
    from .data.degradations import DEGRADATIONS, degrade

    folder = Path(folder)
    written = {}
    for task in tasks:
        if task not in EXAMPLE_PHOTOS or task not in DEGRADATIONS:
            continue
        photo, top, left = EXAMPLE_PHOTOS[task]
        crop = from_array(np.asarray(getattr(data, photo)())[top:top + size, left:left + size]).rgb
        degraded = np.clip(degrade(crop, task, seed=0).image, 0.0, 1.0)
        written[task] = save_image(folder / f"{task}-{photo}.png", degraded)
    return written


def _prune(folder: Path, keep_seconds: float = KEEP_SECONDS) -> None:
    """Delete result folders older than ``keep_seconds`` (their files were already sent)."""
    cutoff = time.time() - keep_seconds
    for sub in folder.iterdir():
        try:
            if sub.is_dir() and sub.stat().st_mtime < cutoff:
                shutil.rmtree(sub)
        except OSError:
            pass  # another request may be using it; the next prune tries again


# the page ----------------------------------------------------------------------------------
def _passing_unreadable(preprocess: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``gr.Image``'s preprocessing, except that an upload Pillow cannot open is passed on as its
    path: :func:`restore_for_demo` then says so in the status area, where Gradio alone would fail
    the event with a bare "Error". (An instance attribute, not a subclass: Gradio writes a ``.pyi``
    file beside the module of every component subclass.)"""

    def tolerant(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Exception:
            path = getattr(payload, "path", None)
            if not path:
                raise
            return str(path)

    return tolerant


def _unlisted(gr: Any) -> dict[str, Any]:
    """Keeps a UI-only event out of the API: Gradio 6 says ``api_visibility``, Gradio 5 ``show_api``."""
    return {"api_visibility": "private"} if int(gr.__version__.split(".")[0]) >= 6 else {"show_api": False}


def build_demo(pipe: RestorationPipeline, work_dir: str | os.PathLike | None = None, examples: bool = True) -> gr.Blocks:
    """The Gradio page around ``pipe``; launch it with ``.launch(server_name=..., server_port=...)``.

    ``work_dir`` holds the examples and the results (default: a new temporary folder, which
    Gradio may serve files from, deleted when Python exits); ``examples=False`` skips making them."""
    import gradio as gr

    if work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="instruct-ipt-demo-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    else:
        work = Path(work_dir)
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    example_files = write_examples(work / "examples", pipe.tasks) if examples else {}

    def on_restore(image_path: str | None, mode: str, task: str | None, instruction: str | None,
                   progress: Any = gr.Progress()) -> DemoResult:  # noqa: B008 (Gradio's idiom)
        # (Gradio evaluates these hints and gr is not a module global here: hence Any, not gr.Progress)
        _prune(results)
        out = Path(tempfile.mkdtemp(dir=results))
        return restore_for_demo(pipe, image_path, mode, task, instruction, out_dir=out,
                                progress=lambda fraction, desc: progress(fraction, desc=desc))

    def on_mode(mode: str) -> tuple[Any, Any]:
        key = mode_key(mode)
        return gr.update(visible=key == "task"), gr.update(visible=key == "instruction")

    tasks = ", ".join(pipe.tasks)
    with gr.Blocks(title="instruct-ipt demo", analytics_enabled=False, delete_cache=(KEEP_SECONDS, KEEP_SECONDS)) as demo:
        gr.Markdown(
            "# instruct-ipt: image restoration you can talk to\n"
            f"One model for {tasks}. Upload a photo, then let the model detect what is wrong with it, "
            "name the task, or describe the problem in your own words."
        )
        with gr.Row():
            with gr.Column():
                # type="filepath", image_mode=None: the uploaded file itself, full size, bit depth kept
                image = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"],
                                 elem_id="photo")
                image.preprocess = _passing_unreadable(image.preprocess)
                mode = gr.Radio([(label, key) for key, label in MODES.items()], value="auto",
                                label="How to choose the task", elem_id="mode")
                # several tasks run one after the other, in the order picked (as -t derain,denoise does)
                task = gr.Dropdown(pipe.tasks, value=[pipe.tasks[0]], multiselect=True, visible=False, elem_id="task",
                                   label="Task(s): several run one after the other, in the order picked")
                instruction = gr.Textbox("", label="Instruction", placeholder='e.g. "remove the rain", "my hand shook"',
                                         visible=False, elem_id="instruction")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                slider = gr.ImageSlider(label="Before / after", type="numpy", format="png", interactive=False,
                                        elem_id="before-after")
                status = gr.Markdown(label="Status", elem_id="status")
                download = gr.File(label="Result (full resolution, PNG)", interactive=False, elem_id="download")
        if example_files:
            from .instruct.interpret import EXAMPLES

            gr.Examples(
                [[str(path), "instruction", [t], EXAMPLES.get(t, "")] for t, path in example_files.items()],
                inputs=[image, mode, task, instruction],
                example_labels=[f"{t}: {EXAMPLES.get(t, t)}" for t in example_files],
                cache_examples=False,
                label="Examples: degraded crops of scikit-image's photos (click one, then Restore)",
            )
        mode.change(on_mode, mode, [task, instruction], **_unlisted(gr))
        gr.on([button.click, instruction.submit], on_restore, [image, mode, task, instruction],
              [slider, download, status], api_name=API_NAME, concurrency_limit=1)
    return demo

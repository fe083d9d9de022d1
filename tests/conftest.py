import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory):
    """Exported ONNX graphs (the default CPU engine caches them) go to a folder of this test run,
    never to the user's ~/.cache; shared by all tests, so one model's graph is exported once.
    ``os.environ`` itself (not monkeypatch, which is per test), restored at the end; subprocesses inherit it."""
    before = os.environ.get("INSTRUCT_IPT_CACHE")
    os.environ["INSTRUCT_IPT_CACHE"] = str(tmp_path_factory.mktemp("instruct-ipt-cache"))
    yield
    if before is None:
        os.environ.pop("INSTRUCT_IPT_CACHE", None)
    else:
        os.environ["INSTRUCT_IPT_CACHE"] = before


def randomize_task_biases(modulation, scale: float = 0.05) -> None:
    """Give every task a distinct, non-zero bias so task-dependent code paths are exercised."""
    with torch.no_grad():
        for p in modulation.task_parameters():
            p.normal_(0.0, scale)

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_task_biases(modulation, scale: float = 0.05) -> None:
    """Give every task a distinct, non-zero bias so task-dependent code paths are exercised."""
    with torch.no_grad():
        for p in modulation.task_parameters():
            p.normal_(0.0, scale)

"""The paper's ablations, one command each: arms trained one after another, evaluated, reported.

``arms`` (what each trained model is), ``tables`` (which arms a table compares and the orderings
the paper claims), ``runner`` (the output folder: training, resume, evaluation) and ``report``
(verdicts, charts, ``report.md``). ``instruct-ipt ablate TABLE`` is :func:`ablate`.
"""

from .arms import ARMS, TASKS, Arm, base_config
from .report import trade_verdict, verdict
from .runner import MIN_BUDGET_MINUTES, Ablation, AblationError, Settings, ablate, check_settings, evaluate_model
from .tables import TABLES, Claim, Table, TradeClaim

__all__ = [
    "ARMS",
    "MIN_BUDGET_MINUTES",
    "TABLES",
    "TASKS",
    "Ablation",
    "AblationError",
    "Arm",
    "Claim",
    "Settings",
    "Table",
    "TradeClaim",
    "ablate",
    "base_config",
    "check_settings",
    "evaluate_model",
    "trade_verdict",
    "verdict",
]

import json
import subprocess
import sys

from instruct_ipt import InstructIPT, __version__
from instruct_ipt.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "instruct-ipt" in out


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "instruct_ipt", "--help"], capture_output=True, text=True, check=True)
    assert "usage: instruct-ipt" in r.stdout


def test_info_for_a_config(capsys):
    assert main(["info", "--size", "tiny", "--rank", "4", "--macs", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = InstructIPT("tiny")
    assert info["version"] == __version__
    assert info["backbone_parameters"] == sum(p.numel() for p in model.backbone.parameters()) - sum(
        p.numel() for p in model.modulation.task_parameters()
    )
    assert info["modulation"]["rank"] == 4
    per_task = info["extra_parameters_per_task"]
    assert info["extra_share_per_task"] == round(per_task / info["backbone_parameters"], 6)
    assert info["gmacs_at_32"] > 0


def test_info_for_a_saved_model(tmp_path, capsys):
    InstructIPT("tiny", tasks=["denoise", "jpeg"]).save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tasks (2): denoise, jpeg" in out
    assert "extra parameters per task" in out


def test_info_bad_model_dir_is_one_line_error(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instruct-ipt info: error:") and "config.json" in err
    assert len(err.splitlines()) == 1


def test_eval_bad_composite_is_one_line_error(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["eval", "--photos", str(tmp_path / "photos"), "--peers", "--composite", "rain+derain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "instruct-ipt eval: error: 'rain+derain' names rain (derain) twice: a composite applies each degradation once"


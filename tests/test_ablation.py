"""``instruct-ipt ablate``: arms, verdicts, the resumable runner and its report (a few steps per arm)."""

import json
import math
import shutil

import pytest
from PIL import Image
from skimage import data

from instruct_ipt.ablation import (
    ARMS,
    TABLES,
    Ablation,
    AblationError,
    Settings,
    TradeClaim,
    ablate,
    base_config,
    check_settings,
    trade_verdict,
    verdict,
)
from instruct_ipt.cli import main
from instruct_ipt.train import Trainer, config_from_dict, plan_stages


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation-photos")
    (root / "train").mkdir()
    (root / "val").mkdir()
    Image.fromarray(data.astronaut()[:192, :192]).save(root / "train/a.png")  # 9 patches of 64 px
    Image.fromarray(data.coffee()[:80, :96]).save(root / "train/b.png")
    Image.fromarray(data.rocket()[:64, :80]).save(root / "val/r.png")
    Image.fromarray(data.chelsea()[:48, :64]).save(root / "val/c.png")
    return root


def settings(photos, **over):
    d = {"size": "tiny", "budget_minutes": None, "steps": 2, "train": (str(photos / "train"),),
         "val": str(photos / "val"), "device": "cpu", "workers": 0}
    return Settings(**{**d, **over})


def test_verdict_rule():
    assert verdict([30.5, 30.7], [30.0, 30.1]) == pytest.approx(
        {"difference": 0.55, "noise": 2 * math.sqrt(0.005) / math.sqrt(2), "verdict": "holds"})
    assert verdict([30.0, 30.1], [30.5, 30.7])["verdict"] == "does not hold"
    assert verdict([30.0, 31.0], [30.4, 30.2])["verdict"] == "within noise"  # +0.2 mean, spread 0.8
    assert verdict([30.0], [29.0]) == {"difference": 1.0, "noise": None, "verdict": "holds (one seed)"}
    assert verdict([29.0], [30.0])["verdict"] == "does not hold (one seed)"
    assert verdict([29.0], [29.0])["verdict"] == "tie (one seed)"
    assert verdict([math.nan, 0.5], [0.4, 0.4])["verdict"] == "no data"


def test_trade_verdict():
    plain = {"denoise": [30.0, 30.1], "deblur": [28.0, 28.2]}
    trades = {"denoise": [29.6, 29.6], "deblur": [28.5, 28.6]}
    assert trade_verdict(trades, plain)["verdict"] == "holds"
    gains_deblur = {"denoise": [30.0, 30.1], "deblur": [28.5, 28.6]}
    assert trade_verdict(gains_deblur, plain)["verdict"] == "does not hold"  # an improvement, not a trade
    both = {"denoise": [30.5, 30.5], "deblur": [28.5, 28.6]}
    assert trade_verdict(both, plain)["verdict"] == "does not hold"  # better on both: no trade
    loses = {"denoise": [29.5, 29.6], "deblur": [28.0, 28.2]}
    assert trade_verdict(loses, plain)["verdict"] == "does not hold"  # worse, nothing gained
    assert trade_verdict(plain, plain)["verdict"] == "within noise"
    one = trade_verdict({"denoise": [30.0], "deblur": [29.0]}, {"denoise": [30.2], "deblur": [28.0]})
    assert one["verdict"] == "holds (one seed)" and one["difference"] == "denoise -0.200, deblur +1.000"


def test_every_arm_is_a_valid_config_of_what_its_table_varies(photos):
    base = base_config("tiny", [str(photos / "train")], seed=3, out="x", steps=400)
    cfgs = {name: config_from_dict(arm.build(base, {"plain": "runs/plain/seed3/model"})) for name, arm in ARMS.items()}
    for cfg in cfgs.values():  # what an ablation holds fixed
        assert (cfg.seed, cfg.data.patch_size, cfg.data.batch_size, cfg.optim.lr) == (3, 64, 8, 5e-4)
        assert cfg.tasks["denoise"].degradation == {"sigma": 25.0} and list(cfg.tasks) == ["denoise", "deblur"]
    assert cfgs["plain"].mode == "plain" and cfgs["sync"].mode == "sync"
    stages = plan_stages(cfgs["two-stage"])  # plain, then each task's biases on their own
    assert [(s.mode, s.tasks, s.iterations) for s in stages] == [
        ("plain", ["denoise", "deblur"], 200), ("bias-only", ["denoise"], 100), ("bias-only", ["deblur"], 100)]
    ft = cfgs["ft-deblur"]
    assert (ft.mode, ft.train_tasks, ft.model.init) == ("single", ["deblur"], "runs/plain/seed3/model")
    assert ARMS["ft-deblur"].needs == ("plain",)
    assert (cfgs["replace-output"].model.modulation_kind, cfgs["replace-output"].model.targets) == ("replace", ["output"])
    assert cfgs["proportional-output"].model.strategy == "proportional"
    assert cfgs["constant-output"].model.targets == ["output"] and cfgs["constant-output"].model.rank == 8
    for name in ("prompt", "gating", "external"):  # Table 1: trained as the plain model is, with an adaptation
        assert (cfgs[name].mode, cfgs[name].model.adaptation) == ("plain", name)
    for table in TABLES.values():
        assert all(a in ARMS for a in table.arms)
        named = {f"psnr:{a}:{t}" for a in table.arms for t in ("denoise", "deblur")}
        for claim in table.claims:
            if isinstance(claim, TradeClaim):
                assert {claim.arm, claim.baseline} <= set(table.arms)
            elif table.analysis is None:
                assert {claim.higher, claim.lower} <= named, claim
            else:  # the analyses' figures (report.similarity_figures / rank_energy_figures)
                kind = {"similarity": "similarity", "rank-energy": "energy"}[table.analysis]
                assert {claim.higher.split(":")[0], claim.lower.split(":")[0]} == {kind}, claim


def test_bad_settings_are_refused_before_training(photos, tmp_path):
    with pytest.raises(AblationError, match=r"--budget-minutes 0.2 is too small: every arm needs at least 1 minute"):
        check_settings(settings(photos, steps=None, budget_minutes=0.2), seeds=2)
    with pytest.raises(AblationError, match="not both"):
        check_settings(settings(photos, budget_minutes=3.0), seeds=2)
    with pytest.raises(AblationError, match="--seeds 0"):
        check_settings(settings(photos), seeds=0)
    with pytest.raises(AblationError, match="--size 'huge'"):
        check_settings(settings(photos, size="huge"), seeds=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AblationError, match="--val .*empty: no images"):
        check_settings(settings(photos, val=str(tmp_path / "empty")), seeds=1)
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        check_settings(settings(photos, train=(str(tmp_path / "nowhere"),)), seeds=1)
    # through the CLI: exit 2 and one line, nothing trained
    out = tmp_path / "out"
    code = main(["ablate", "table9", "--budget-minutes", "0.1", "--train", str(photos / "train"), "--val",
                 str(photos / "val"), "--out", str(out), "--quiet"])
    assert code == 2 and not (out / "runs").exists()


def test_table_runs_reports_and_resumes_where_it_stopped(photos, tmp_path, monkeypatch):
    out = tmp_path / "ab"
    said = []
    summary = ablate("table9", out, settings(photos), seeds=2, say=said.append, progress=False)
    assert [m.split(":")[0] for m in said if "training" in m] == [
        "[table9 1/4] plain, seed 0", "[table9 2/4] replace-output, seed 0",
        "[table9 3/4] plain, seed 1", "[table9 4/4] replace-output, seed 1"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"plain/seed0", "plain/seed1", "replace-output/seed0", "replace-output/seed1"}
    run = results["runs"]["replace-output/seed1"]
    assert run["steps"] == 2 and set(run["psnr"]) == {"denoise", "deblur"} and run["parameters"]["per_task"] > 0
    assert results["runs"]["plain/seed0"]["parameters"]["per_task"] == 0
    assert summary["arms"]["plain"]["psnr"]["deblur"][0] == pytest.approx(
        (results["runs"]["plain/seed0"]["psnr"]["deblur"] + results["runs"]["plain/seed1"]["psnr"]["deblur"]) / 2)
    assert [c["verdict"] in ("holds", "does not hold", "within noise") for c in summary["claims"]] == [True, True]
    report = (out / "report.md").read_text()
    assert "## Table 9" in report and "| plain: plain" in report and "32.81" in report  # the paper's figure beside ours
    assert (out / "table9.png").stat().st_size > 1000

    # an interrupted ablation: killed in the middle of one run (after its first step's checkpoint)
    before = results["runs"].pop("replace-output/seed1")
    (out / "results.json").write_text(json.dumps(results))
    shutil.rmtree(out / "runs/replace-output/seed1")
    run = Trainer.run

    def killed(self, stop_after=None):
        if "replace-output" in str(self.cfg.out):
            self.cfg.ckpt_every = 1
            run(self, stop_after=1)  # one step, a checkpoint, then the "kill"
            raise KeyboardInterrupt
        return run(self, stop_after)

    monkeypatch.setattr(Trainer, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        ablate("table9", out, settings(photos), seeds=2, say=said.append, progress=False)
    monkeypatch.undo()
    assert (out / "runs/replace-output/seed1/checkpoints/last.pt").exists()
    assert not (out / "runs/replace-output/seed1/model").exists()
    said.clear()
    ablate("table9", out, settings(photos), seeds=2, say=said.append, progress=False)
    assert [m for m in said if "training" in m] == ["[table9 4/4] replace-output, seed 1: resuming its training (2 steps)"]
    again = json.loads((out / "results.json").read_text())["runs"]["replace-output/seed1"]
    assert again["psnr"] == before["psnr"]  # the resumed run is the run it would have been

    # the folder keeps its settings; a table sharing arms reuses them
    with pytest.raises(AblationError, match=r"other settings \(steps: 2 there, 3 now\)"):
        ablate("table9", out, settings(photos, steps=3), seeds=2, say=said.append, progress=False)
    said.clear()
    ablate("table10", out, settings(photos), seeds=1, say=said.append, progress=False)
    trained = [m.split(":")[0] for m in said if "training" in m]
    assert trained == ["[table10 2/3] proportional-output, seed 0", "[table10 3/3] constant-output, seed 0"]
    report = (out / "report.md").read_text()
    assert report.index("## Table 9") < report.index("## Table 10") and "(one seed)" in report
    ablate("table9", out, settings(photos), seeds=2, say=said.append, progress=False)  # reloads table10 from JSON
    table10 = (out / "report.md").read_text().split("## Table 10")[1]
    assert table10.index("| plain:") < table10.index("| proportional-output:") < table10.index("| constant-output:")


def test_weight_analyses_share_their_arms(photos, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["ablate", "table2", "--steps", "2", "--seeds", "1", "--train", str(photos / "train"), "--val",
                 str(photos / "val"), "--out", str(out), "--quiet", "--device", "cpu", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "layers the method modulates move more" in printed and "(one seed)" in printed
    assert {p.name for p in (out / "table2").iterdir()} == {"similarity.md", "similarity.csv", "similarity.png"}
    said = []
    summary = Ablation(out, settings(photos), say=said.append, progress=False).run_table("fig2", seeds=1)
    assert not [m for m in said if "training" in m]  # plain and both fine-tunes came from table2
    assert (out / "fig2/deblur/rank_energy.csv").exists() and (out / "fig2/denoise/rank_energy_constant.png").exists()
    energy = summary["figures"]["energy:constant:deblur"]
    assert len(energy) == 1 and 0 < energy[0] <= 1
    report = (out / "report.md").read_text()
    assert "## Fig. 2" in report and "| encoder 1 |" in report and "| output layer |" in report


def test_a_damaged_settings_or_results_file_is_an_ablation_error_naming_it(tmp_path):
    from instruct_ipt.ablation.runner import RESULTS_NAME, SETTINGS_NAME, open_folder, save_results

    settings = {"steps": 2}
    assert open_folder(tmp_path, settings) is None  # a new folder: its settings written
    save_results(tmp_path, {"runs": {}, "tables": {}})
    assert open_folder(tmp_path, settings) == {"runs": {}, "tables": {}}
    cases = [(SETTINGS_NAME, "[1]", "damaged settings (a JSON list, not an object)"),
             (SETTINGS_NAME, '{"steps": ', "damaged settings (not JSON"),
             (RESULTS_NAME, "[1]", "damaged results (a JSON list, not an object)"),
             (RESULTS_NAME, '{"runs": [1]}', "damaged results (no 'runs' or 'tables' mapping)")]
    for name, text, says in cases:
        good = (tmp_path / name).read_text()
        (tmp_path / name).write_text(text)
        with pytest.raises(AblationError, match=f"^{tmp_path / name}: " + says.replace("(", r"\(").replace(")", r"\)")):
            open_folder(tmp_path, settings)
        (tmp_path / name).write_text(good)

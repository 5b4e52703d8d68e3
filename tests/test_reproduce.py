"""training/reproduce.py: flag handling, the report's verdicts, and a smoke run of the program."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import training_module

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO_ROOT, "training", "reproduce.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, PROGRAM, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def test_unknown_experiment_is_a_usage_error():
    result = _run("--experiments=depth_sweep,warp_drive", "--output_dir=/nonexistent")
    assert result.returncode != 0
    assert "warp_drive" in result.stderr and "depth_sweep" in result.stderr


def test_report_verdicts_follow_the_numbers():
    reproduce = training_module("reproduce")
    flat = {"5": [0.95, 0.96, 0.95], "160": [0.95, 0.94, 0.96]}
    collapsed = {"5": [0.95, 0.95, 0.94], "160": [0.10, 0.11, 0.10]}
    results = {
        "depth_sweep": dict(
            seconds=60.0, mode="full", seeds=[0, 1, 2], budget=reproduce.BUDGETS["full"],
            mlp={"GloNet": flat, "ResNet-v2 (BN)": flat, "ResNet (no BN)": collapsed, "Plain": collapsed},
            mlp_nonfinite_runs={"GloNet": {}, "ResNet-v2 (BN)": {}, "ResNet (no BN)": {"160": 3},
                                "Plain": {}},
            cnn={},
        ),
        "early_exit": dict(seconds=1.0, mode="full", depth=10, full_accuracy=[0.9, 0.9],
                           curves=[[0.5, 0.895] + [0.9] * 8, [0.5, 0.9] + [0.9] * 8]),
        "_run": dict(command="python training/reproduce.py", seconds=61.0, machine="test", finished="now"),
    }
    report = reproduce.render_report(results)
    assert "**Depth resilience, GloNet (held)**: GloNet MLP 95.3 % at 5 blocks, 95.0 % at 160" in report
    assert "ResNet (no BN) 10.3 % (collapsed, below 50 % from 160 blocks)" in report
    assert "ResNet-v2 (BN) 95.0 % (did not collapse)" in report
    assert "(3 NaN)" in report
    assert "**Early exit (held)**: 2 of 10 blocks" in report

    results["depth_sweep"]["mlp"]["GloNet"] = {"5": [0.95] * 3, "160": [0.91] * 3}
    assert "**Depth resilience, GloNet (mostly held)**" in reproduce.render_report(results)
    results["depth_sweep"]["mlp"]["GloNet"] = collapsed
    assert "**Depth resilience, GloNet (did not hold)**" in reproduce.render_report(results)


def test_smoke_run_writes_report_figures_and_merges_results(tmp_path):
    result = _run("--smoke", "--seeds=1", "--experiments=self_regulation,speed",
                  f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total run time" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"self_regulation", "speed", "_run"} <= set(results)
    assert results["speed"]["results"][0]["ratio"] > 0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## 3. Self-regulation" in report and "## 4. Speed" in report
    for name in ("self_regulation_2.png", "self_regulation_3.png", "speed.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == PNG_SIGNATURE


def test_verdicts_say_inconclusive_near_the_threshold_and_label_single_runs():
    common = training_module("experiment_common")
    rules = lambda values: [("held", values, 2.0), ("mostly held", values, 5.0)]  # noqa: E731
    assert common.verdict(rules([0.5, 1.0, 1.5])) == "held"
    assert common.verdict(rules([3.0, 4.0, 4.5])) == "mostly held"
    assert common.verdict(rules([8.0, 9.0, 10.0])) == "did not hold"
    # A mean on either side of a threshold, within one std of it, settles nothing.
    assert common.verdict(rules([1.0, 3.0, 1.5])) == "inconclusive at the held threshold"
    assert common.verdict(rules([1.0, 3.5, 3.0])) == "inconclusive at the held threshold"
    assert common.verdict(rules([4.0, 6.5, 5.0])) == "inconclusive at the mostly held threshold"
    # One run has no spread: its verdict and its cells say so.
    assert common.verdict(rules([2.1])) == "mostly held; 1 seed"
    assert common.verdict(rules([2.1]), label_seeds=False) == "mostly held"
    assert common.fmt([0.651]) == "65.1 (1 seed)"
    assert common.fmt([0.5, 0.7]) == "60.0 ± 10.0"


def test_fashion_cnn_sweep_is_judged_by_the_two_point_rule_alone():
    reproduce = training_module("reproduce")
    fashion = training_module("fashion_experiments")
    cnn = {"GloNet": {"20": [0.651], "110": [0.396]}, "Plain": {"20": [0.70], "110": [0.10]}}
    result = dict(cnn=cnn, seeds=[0], train_examples=5000, epochs=3)
    findings = []
    lines = fashion.cnn_sweep_section(result, findings)
    assert "**Fashion-MNIST CNN depth resilience (did not hold; 1 seed)**" in findings[0]
    assert "at chance while GloNet still trains" in findings[0]  # reported beside, not folded in
    assert "± 0.0" not in "\n".join(lines) and "65.1 (1 seed)" in "\n".join(lines)
    assert "## Verdict rules" in reproduce.render_report({"_run": {}})


@pytest.mark.slow
def test_smoke_run_of_every_experiment(tmp_path):
    result = _run("--smoke", "--seeds=2", f"--output_dir={tmp_path}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    # Every experiment runs by default, the Fashion-MNIST ones included (make data installs it).
    assert set(results) == set(training_module("reproduce").EXPERIMENTS) | {"_run"}
    assert len(results["depth_sweep"]["mlp"]["GloNet"]["2"]) == 2  # one score per seed
    report = (tmp_path / "RESULTS.md").read_text()
    for section in ("## 1. Depth", "## 2. Early exit", "## 3. Self-regulation", "## 4. Speed",
                    "## 5. MNIST-1D", "## 6. Fashion-MNIST", "## 7. Fashion-MNIST",
                    "## 8. Fashion-MNIST"):
        assert section in report
    figures = set(os.listdir(tmp_path / "figures"))
    assert {"depth_sweep_cnn.png", "depth_sweep_mlp.png", "early_exit.png", "self_regulation_2.png",
            "self_regulation_3.png", "speed.png"} <= figures
    assert len(figures) > 6  # and the Fashion-MNIST experiments' own


def test_kept_sections_are_included_verbatim_before_the_method_notes():
    reproduce = training_module("reproduce")
    report = reproduce.render_report({"_run": {}}, kept_sections=["## 9. Kept\n\nIts text.\n"])
    assert "\n## 9. Kept\n\nIts text.\n\n## Method notes" in report


KEPT_SECTION = """## 14. A kept experiment (issue 99)

**Verdict rules.**

- **Not a verdict**: a rule's bullet, before any number: held = at least 1.

### MLP

**Verdicts** (the rules above):

- **Depth resilience** (held = at most 2 points): **did not hold**: 4.0, 2.8 points per seed.
  A continuation line: **held** here is not a verdict of its own.
- **Exit at L/2 within 1 point: held.** Full model minus exit 4: 0.1 points.
- **Early exit** (rule): **inconclusive (within one std of the threshold)**: 38, 21, 20.

**Reading.**

- **Not a verdict either**: a bullet of the next paragraph: **did not hold**.

### ViT

**Verdicts**:

- **Self-regulation**: **partly held**: 0.95.
"""


def test_kept_section_findings_name_each_verdict_block_and_point_at_the_section():
    reproduce = training_module("reproduce")
    assert reproduce.kept_section_findings(KEPT_SECTION) == [
        "**A kept experiment — MLP** (section 14, its own rules and seeds): Depth resilience: did "
        "not hold; Exit at L/2 within 1 point: held; Early exit: inconclusive.",
        "**A kept experiment — ViT** (section 14, its own rules and seeds): Self-regulation: partly "
        "held.",
    ]
    pending = "## 15. Registered (issue 99)\n\n**Results.** Pending: no run yet.\n"
    assert reproduce.kept_section_findings(pending) == [
        "**Registered**: rules written before any run; results pending (section 15)."]
    assert reproduce.kept_section_findings("No heading: not a section.\n") == []
    report = reproduce.render_report({"_run": {}}, kept_sections=[KEPT_SECTION, pending])
    findings = report.split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert "- **A kept experiment — ViT** (section 14" in findings
    assert "- **Registered**: rules written" in findings


def test_the_published_report_holds_every_kept_section():
    # A re-render that forgot docs/sections/ would drop them: the published report must hold each.
    reproduce = training_module("reproduce")
    docs = Path(REPO_ROOT) / "docs"
    sections = sorted((docs / reproduce.KEPT_SECTIONS_DIR).glob("*.md"))
    assert sections, "docs/sections/ holds the anytime experiment's section"
    report = (docs / "RESULTS.md").read_text()
    findings = report.split("## Findings", 1)[1].split("\n## ", 1)[0]
    for section in sections:
        assert section.read_text().strip("\n") in report, section.name
        for line in reproduce.kept_section_findings(section.read_text()):
            assert f"- {line}\n" in findings, (section.name, line)


def test_every_program_imports_beside_every_other():
    # The tests import the training/ and benchmarks/ programs into one process for their functions;
    # a program that defines at import a flag another also defines (make_zoo's and reproduce's
    # --seeds) breaks whichever is imported second, and only where xdist happens to put both tests
    # on one worker. Programs whose flags collide define them in define_flags(), when they run.
    code = (
        "import glob, importlib, os, sys\n"
        "sys.path[:0] = ['training', '.']\n"
        "names = [os.path.basename(p)[:-3] for p in sorted(glob.glob('training/*.py'))]\n"
        "names += ['benchmarks.' + os.path.basename(p)[:-3]\n"
        "          for p in sorted(glob.glob('benchmarks/*.py')) if not p.endswith('__init__.py')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 10  # the globs found the programs (20 today)

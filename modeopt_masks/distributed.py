"""Helpers for masks under ``torch.distributed``: DDP, FSDP2 (``fully_shard``), checkpoints.

The recipe for FSDP2 (``docs/distributed.md`` has it in full): ``mm.convert`` the
whole model on every rank, then [`shard_masked_model`][modeopt_masks.distributed.shard_masked_model] (``fully_shard`` per
block and on the root, after checking the ranks hold the same masks), then build
the optimizer. [`save_sharded`][modeopt_masks.distributed.save_sharded] / [`load_sharded`][modeopt_masks.distributed.load_sharded] checkpoint with
``torch.distributed.checkpoint``; [`gather_to`][modeopt_masks.distributed.gather_to] copies the trained state onto
an unsharded model for ``mm.save`` and ``mm.export``.

Mask parameters are ordinary parameters and buffers, so DDP broadcasts them
from rank 0 when it wraps the model and all-reduces their gradients: masks
trained under DDP stay identical on every rank with nothing extra to do.

Ablation *draws* are not parameters. ``random_ablate`` (a fresh init of the
circuit's weights), ``randomly_sampled`` and ``complement_sampled`` (which
entries are removed) are drawn from the process's own random generator the
first time a layer needs them, so two ranks draw different subnetworks unless
they were seeded identically. [`sync_ablation_draws`][modeopt_masks.distributed.sync_ablation_draws] makes every rank
use rank ``src``'s draws (it draws where needed, then broadcasts). Call it
after ``set_ablation`` (and again after ``force_resample=True``).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> from modeopt_masks.distributed import sync_ablation_draws
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning").eval()
    >>> mm.set_ablation(net, "randomly_sampled")
    >>> sync_ablation_draws(net)  # no process group: one process, nothing to agree on
    0
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

#: the file `save_sharded` writes next to the ``torch.distributed.checkpoint`` shards
SHARDED_STATE_FILE = "modeopt_state.json"


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch.distributed`` ``DTensor`` (an FSDP2-sharded parameter).

    Examples:
        >>> import torch
        >>> from modeopt_masks.distributed import is_dtensor
        >>> is_dtensor(torch.zeros(2))
        False
    """
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a plain tensor: a ``DTensor`` (sharded or partial) is gathered.

    Differentiable; a collective for a ``DTensor`` (every rank of its mesh must call
    it), the tensor itself otherwise. L0 terms and statistics go through it, so a
    sum over sharded mask logits is the global sum on every rank.

    Examples:
        >>> import torch
        >>> from modeopt_masks.distributed import full_value
        >>> t = torch.ones(3); full_value(t) is t
        True
    """
    return tensor.full_tensor() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def match_placement(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` made combinable with ``like`` (the weight or bias it gates) under FSDP2.

    * ``like`` sharded (a ``DTensor``: a product outside the forward, e.g.
      ``effective_weight()`` or export), ``mask`` plain (a bool buffer, or a mask
      kept out of FSDP with ``ignored_params``): the mask becomes a replicated
      ``DTensor`` on the weight's mesh (no communication; every rank holds it);
    * ``like`` plain (inside the forward FSDP has unsharded it), ``mask`` a
      ``DTensor`` (its module not unsharded): the mask is gathered, and its
      gradient is averaged over the ranks as FSDP averages the weights' gradients;
    * otherwise ``mask`` unchanged.

    Examples:
        >>> import torch
        >>> from modeopt_masks.distributed import match_placement
        >>> m = torch.ones(2); match_placement(m, torch.zeros(2)) is m
        True
    """
    mask_d, like_d = is_dtensor(mask), is_dtensor(like)
    if mask_d == like_d:
        return mask
    from torch.distributed.tensor import DTensor, Partial, Replicate

    if like_d:
        mesh = like.device_mesh  # type: ignore[attr-defined]
        return DTensor.from_local(mask, mesh, [Replicate()] * mesh.ndim, run_check=False)
    placements = [Partial("avg")] * mask.device_mesh.ndim  # type: ignore[attr-defined]
    return mask.full_tensor(grad_placements=placements)  # type: ignore[attr-defined]


def sync_ablation_draws(model: nn.Module, src: int = 0, group: Any = None) -> int:
    """Give every rank rank ``src``'s ablation draws; returns how many tensors were broadcast.

    A collective: every rank of ``group`` must call it with the same model
    structure and the same ablation per layer (an error says where they
    differ). Layers must be in eval mode (ablations need hard masks). Without
    an initialised process group (or with one process) it only draws and
    returns ``0``.

    Args:
        model: A model with masked layers in eval mode.
        src: The rank whose draws everyone gets.
        group: The process group (default: the world).

    Returns:
        The number of tensors broadcast.

    Raises:
        RuntimeError: When the ranks' models or ablations differ, or a layer is in training.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import sync_ablation_draws
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 3)), "hard_concrete").eval()
        >>> mm.set_ablation(net, "random_ablate"); sync_ablation_draws(net)
        0
    """
    from .mask_controls import masked_modules
    from .masking import DRAWN_ABLATIONS

    entries: list[tuple[str, Any, torch.Tensor]] = []  # (layer name, draw key, tensor)
    layers = masked_modules(model)
    with torch.no_grad(), unsharded(model):  # FSDP2: draw from whole tensors
        for name, layer in layers.items():
            if not layer.use_masks or layer.ablation not in DRAWN_ABLATIONS:
                continue
            layer._effective_tensors()  # draws what is missing (raises clearly in training)
            if layer.ablation == "random_ablate":
                entries += [(name, key, t) for key, t in sorted(layer._mm_random.items())]
            else:
                entries += [
                    (name, key, v[1]) for key, v in sorted(layer._mm_sampled.items())
                    if key[1] == layer.ablation
                ]
    if not dist.is_available() or not dist.is_initialized():
        return 0
    if dist.get_world_size(group) == 1:
        return 0
    signature = [(n, str(k), tuple(t.shape), str(t.dtype)) for n, k, t in entries]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, signature, group=group)
    for rank, other in enumerate(gathered):
        if other != gathered[src]:
            raise RuntimeError(
                f"sync_ablation_draws: rank {rank} has draws {other} but rank {src} has "
                f"{gathered[src]}; every rank needs the same model and the same set_ablation"
            )
    for name, key, tensor in entries:
        buffer = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
        dist.broadcast(buffer, src=src, group=group)
        layer = layers[name]
        if layer.ablation == "random_ablate":
            layer._mm_random[key] = buffer
        else:
            version = layer._mm_sampled[key][0]
            layer._mm_sampled[key] = (version, buffer.to(tensor.dtype))
    return len(entries)


# -- FSDP2 ---------------------------------------------------------------------------------
def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    if not dist.is_available():
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied anywhere in ``model`` (or a parameter is a DTensor).

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.distributed import is_sharded
        >>> is_sharded(nn.Linear(2, 2))
        False
    """
    return bool(_fsdp_modules(model)) or any(is_dtensor(p) for p in model.parameters())


def check_not_sharded(model: nn.Module, verb: str = "convert") -> None:
    """A ``ValueError`` if ``model`` is already sharded by FSDP2: ``verb`` must come first.

    Converting a sharded model would build masks from each rank's shard of the
    weights (wrong shapes, rank-local magnitudes) and leave them outside FSDP.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.distributed import check_not_sharded
        >>> check_not_sharded(nn.Linear(2, 2))  # a plain model: nothing to say
    """
    if is_sharded(model):
        raise ValueError(
            f"{verb}: the model is already sharded with fully_shard (FSDP2); {verb} the whole "
            "model on every rank first, then call fully_shard (or "
            "modeopt_masks.distributed.shard_masked_model), then build the optimizer"
        )


def _mask_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    from .masking import MaskTechnique

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, MaskTechnique):
            for key, t in [*module.named_parameters(recurse=False),
                           *module.named_buffers(recurse=False)]:
                out[f"{name}.{key}"] = t
    return out


def _fingerprint(tensor: torch.Tensor) -> str:
    data = full_value(tensor.detach()).cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def check_masks_match(model: nn.Module, group: Any = None, include_base: bool = True) -> None:
    """A ``RuntimeError`` naming what differs if the ranks hold different masks (a collective).

    Compares names, shapes, dtypes and contents of every mask tensor (and, with
    ``include_base``, every other parameter and buffer) across the ranks of
    ``group``. ``fully_shard`` keeps each rank's own chunk of whatever that rank
    holds, so ranks that converted differently (another config, another seed)
    would otherwise train a silent mixture. Nothing to check without a process group.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import check_masks_match
        >>> check_masks_match(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete"))
    """
    tensors = dict(_mask_tensors(model))
    if include_base:
        masks = set(tensors)
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name not in masks:
                tensors[name] = t
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    mine = {n: (tuple(t.shape), str(t.dtype), _fingerprint(t)) for n, t in sorted(tensors.items())}
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    reference = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        if other == reference:
            continue
        only = sorted(set(other) ^ set(reference))
        differ = sorted(n for n in set(other) & set(reference) if other[n] != reference[n])
        raise RuntimeError(
            f"check_masks_match: rank {rank} and rank 0 hold different models: "
            + (f"tensors on one rank only {only[:8]}; " if only else "")
            + (f"different shape/dtype/values in {differ[:8]}; " if differ else "")
            + "convert with the same config on every rank, from the same weights (same seed "
            "or loaded checkpoint), before fully_shard"
        )


def _default_blocks(model: nn.Module) -> list[nn.Module]:
    """HF ``_no_split_modules`` blocks (transformer layers), else every masked layer."""
    from .masking import MaskedLayer

    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names] if names else []
    if not blocks:
        blocks = [m for m in model.modules() if isinstance(m, MaskedLayer)]
    return [m for m in blocks if m is not model]


def shard_masked_model(
    model: nn.Module,
    mesh: Any = None,
    blocks: Iterable[nn.Module] | Callable[[nn.Module], bool] | None = None,
    separate_masks: bool = False,
    mp_policy: Any = None,
    reshard_after_forward: bool = True,
    check: bool = True,
) -> nn.Module:
    """``fully_shard`` a converted model: each block, then the root; returns ``model``.

    Call it after ``mm.convert`` and before building the optimizer, on every rank.
    ``blocks``: the modules that become FSDP units (a list, or a predicate on
    modules; default: the HF ``_no_split_modules`` blocks, else every masked layer).
    A mask lives in the unit of the layer whose weight it gates, so inside the
    forward mask and weight are unsharded together and every product is plain.

    ``separate_masks=True`` makes every mask its own FSDP unit instead, with its
    own dtype: the way to train fp32 mask logits on a bf16 model whose base is
    trained too (FSDP2 requires one dtype for the trainable parameters of a unit;
    with ``freeze_base`` the fp32 masks are the only trainable ones and the
    default works). Their ``mask``/``circuit``/``l0`` methods are registered as
    FSDP forward methods, so they unshard when the layer asks for the mask.
    ``mp_policy`` is the ``MixedPrecisionPolicy`` of the block and root units
    (mask units keep their own dtype). With ``check``, [`check_masks_match`][modeopt_masks.distributed.check_masks_match]
    runs first.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import shard_masked_model
        >>> try:
        ...     shard_masked_model(nn.Linear(2, 2))
        ... except ValueError as e:
        ...     print(str(e)[:42])
        shard_masked_model: the model has no modes
    """
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    from .conversion import mode_history
    from .masking import MaskedLayer, MaskTechnique

    if not mode_history(model):
        raise ValueError(
            "shard_masked_model: the model has no modes; mm.convert it (on every rank, whole) "
            "before sharding"
        )
    check_not_sharded(model, "shard_masked_model")
    if check:
        check_masks_match(model)
    if blocks is None:
        units = _default_blocks(model)
    elif callable(blocks):
        units = [m for m in model.modules() if m is not model and blocks(m)]
    else:
        units = list(blocks)
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    for layer in model.modules():
        if isinstance(layer, MaskedLayer):
            layer.__dict__["_mm_sharded"] = True
    if separate_masks:
        for module in model.modules():
            if isinstance(module, MaskTechnique) and any(True for _ in module.parameters()):
                fully_shard(module, mp_policy=MixedPrecisionPolicy(), **kwargs)
                for method in ("mask", "circuit", "l0"):
                    register_fsdp_forward_method(module, method)
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """Every FSDP2 unit of ``model`` unsharded (full plain parameters) inside the block.

    For work outside the forward that needs whole tensors: ``effective_weight()``,
    ablation draws, reading masks. A collective (every rank enters it); memory
    for the whole model. A model without FSDP units passes through unchanged.

    Examples:
        >>> import torch.nn as nn
        >>> from modeopt_masks.distributed import unsharded
        >>> net = nn.Linear(2, 2)
        >>> with unsharded(net) as m:
        ...     m is net
        True
    """
    units = _fsdp_modules(model)
    for unit in units:
        unit.unshard()  # type: ignore[operator]
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()  # type: ignore[operator]


# -- checkpoints -----------------------------------------------------------------------------
def _mode_document(model: nn.Module) -> list[dict[str, Any]]:
    from .conversion import mode_history

    history = mode_history(model)
    with unsharded(model):
        for state in history:
            state.descriptor.update_metadata(model, state.config, state.metadata)
    return [{"mode": s.mode, "config": s.config.to_dict(), "metadata": s.metadata}
            for s in history]


def _apply_metadata(model: nn.Module, saved: list[dict[str, Any]]) -> None:
    """Put the saved metadata that lives outside tensors back (temperatures, gradnas choices)."""
    from .conversion import mode_history

    _mode_check(model, saved)
    history = mode_history(model)
    modules = dict(model.named_modules())
    for state, entry in zip(history, saved, strict=True):
        meta = entry["metadata"]
        for name, temperature in meta.get("temperatures", {}).items():
            for _, tech in modules[name]._mask_modules():  # type: ignore[operator]
                tech.temperature = float(temperature)
        if state.mode == "gradnas":
            from .structured import gradnas_hparams

            for name, hp in gradnas_hparams(model).items():
                if name in meta.get("scores", {}):
                    hp.importance = torch.tensor(meta["scores"][name], dtype=torch.float64)
                if name in meta.get("selection", {}):
                    hp.keep(meta["selection"][name])
        state.metadata.update(meta)


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Without a process group DCP warns that it saves/loads in one process: that is intended."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(
    model: nn.Module, directory: str | os.PathLike[str], optimizer: Any = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save a (sharded) converted model with ``torch.distributed.checkpoint``: a collective.

    Every rank writes its shards of the model (masks included) and, if given, of the
    optimizer's state; rank 0 writes the mode history (configs, temperatures,
    gradnas selections) as ``modeopt_state.json``. ``extra``: more
    ``Stateful``/tensor entries to checkpoint along (e.g. a ``DensityController``'s
    ``state_dict()``). Load with [`load_sharded`][modeopt_masks.distributed.load_sharded] into a model converted and
    sharded the same way (the world size may differ).

    Examples:
        >>> import tempfile, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import load_sharded, save_sharded
        >>> d = tempfile.mkdtemp(); net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> save_sharded(net, d); mm.set_temperature(net, 0.3)
        >>> load_sharded(net, d); mm.get_temperature(net)
        0.6666666666666666
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    document = _mode_document(model)
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    if extra:
        state["extra"] = extra
    root = Path(directory)
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=str(root))
    if not dist.is_initialized() or dist.get_rank() == 0:
        tmp = root / (SHARDED_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"format": "modeopt-masks-sharded", "modes": document},
                                  indent=2, sort_keys=True))
        os.replace(tmp, root / SHARDED_STATE_FILE)
    if dist.is_initialized():
        dist.barrier()


def load_sharded(
    model: nn.Module, directory: str | os.PathLike[str], optimizer: Any = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Load what [`save_sharded`][modeopt_masks.distributed.save_sharded] wrote into ``model`` (and ``optimizer``, ``extra``).

    ``model`` must be converted with the same modes and configs (a ``ValueError``
    says how they differ, before any tensor is read) and sharded (or not) as
    this job wants; the optimizer built after sharding. A collective.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    root = Path(directory)
    state_file = root / SHARDED_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} is missing: was {root} written by save_sharded?")
    saved = json.loads(state_file.read_text())["modes"]
    _mode_check(model, saved)
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    if extra:
        state["extra"] = extra
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(root))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    _apply_metadata(model, saved)


def _mode_check(model: nn.Module, saved: list[dict[str, Any]]) -> None:
    from .conversion import mode_history

    mine = json.loads(json.dumps([(s.mode, s.config.to_dict()) for s in mode_history(model)]))
    theirs = [[e["mode"], e["config"]] for e in saved]
    if [list(m) for m in mine] != theirs:
        raise ValueError(
            f"the checkpoint was saved from a model with modes {theirs}, this model has {mine}: "
            "convert it the same way before loading"
        )


def full_state_dict(model: nn.Module, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded model, on the CPU: a collective.

    ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``: with
    ``rank0_only`` only rank 0 gets the tensors (the others an empty dict).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import full_state_dict
        >>> sorted(full_state_dict(mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")))
        ['0.bias', '0.weight', '0.weight_mask.log_alpha']
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    out = get_model_state_dict(model, options=options)
    return {k: v.cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}


def gather_to(model: nn.Module, target: nn.Module) -> nn.Module:
    """Copy a sharded model's full state onto ``target`` (the same architecture, converted
    the same way, not sharded) and return it: then ``mm.save(target, dir)`` or
    ``mm.export(target)`` on rank 0. A collective; only rank 0's ``target`` is filled
    (the others are returned unchanged).

    Examples:
        >>> import torch, torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.distributed import gather_to
        >>> a = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> b = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> torch.equal(gather_to(a, b)[0].weight, a[0].weight)
        True
    """
    document = _mode_document(model)
    _mode_check(target, document)
    state = full_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0 and is_sharded(model):
        return target
    target.load_state_dict(state)
    _apply_metadata(target, document)
    return target

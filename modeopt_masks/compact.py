"""Compact eval masks: every mask's hard circuit packed 8 entries per byte.

A converted model keeps its masks' tensors resident: ``continuous_sparsification`` and
``hard_concrete`` one float32 logit per masked entry (as much memory again as float32
weights), ``magnitude_pruning`` a bool per entry. For evaluation only the hard circuit is
needed. [`compact_masks`][modeopt_masks.compact.compact_masks] replaces each layer's technique by a [`CompactMask`][modeopt_masks.compact.CompactMask]
holding that circuit as a ``uint8`` bit field (1/32 of a float32 weight); each eval
forward unpacks one layer's circuit straight into the weight's dtype and multiplies, so
no second full-size weight stays alive and nothing derived from the weight is cached.

One-way unless asked otherwise: by default the replaced techniques (the logits) are
dropped, the model is for evaluation only (a training forward raises), and ``mm.save``
refuses it (the checkpoint would restore learned masks that are gone). With
``keep_logits=True`` the replaced techniques are kept in CPU memory, off any accelerator
and outside ``state_dict``; [`expand_masks`][modeopt_masks.compact.expand_masks] puts them back, exactly as they were.
Compaction changes no output: the compact model computes what the eval model did.

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(64, 64)), "magnitude_pruning").eval()
    >>> x = torch.randn(2, 64)
    >>> before = net(x)
    >>> net = mm.compact_masks(net, keep_logits=True)
    >>> type(net[0].weight_mask).__name__, net[0].weight_mask.bits.numel()
    ('CompactMask', 512)
    >>> torch.equal(net(x), before)
    True
    >>> type(mm.expand_masks(net)[0].weight_mask).__name__
    'MagnitudeMask'
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import cast

import torch
import torch.nn as nn

from .distributed import is_dtensor
from .masking import MaskedLayer, MaskTechnique

__all__ = ["CompactMask", "compact_masks", "expand_masks", "is_compacted"]

_BITS = 8


def release_freed_heap() -> bool:
    """Hand memory the process has freed back to the OS (glibc ``malloc_trim(0)``).

    Freed CPU tensors of a few MB (the per-layer logits) live in the C heap, and glibc keeps
    such memory resident after ``free``: without this, a one-way ``compact_masks`` frees the
    logits yet the process's RSS stays where it was. Returns whether a trim ran (``False``
    off glibc, where nothing is done).

    Returns:
        ``True`` when ``malloc_trim`` was called.

    Examples:
        >>> isinstance(release_freed_heap(), bool)
        True
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim(0)
    return True


def pack_bits(circuit: torch.Tensor) -> torch.Tensor:
    """A bool tensor as ``uint8``, 8 entries per byte (entry ``i`` is bit ``i % 8`` of byte ``i // 8``).

    Examples:
        >>> import torch
        >>> from modeopt_masks.compact import pack_bits
        >>> pack_bits(torch.tensor([True, False, True] + [False] * 6 + [True]))
        tensor([5, 2], dtype=torch.uint8)
    """
    flat = circuit.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % _BITS
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(_BITS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, _BITS) << shifts).sum(-1, dtype=torch.uint8)


_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _byte_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row ``b``: the 8 bits of byte ``b`` as 0/1 of ``dtype`` (a constant, kept per dtype)."""
    table = _TABLES.get((dtype, device))
    if table is None:
        byte = torch.arange(256, device=device).unsqueeze(-1)
        table = (byte >> torch.arange(_BITS, device=device) & 1).to(dtype)
        table = _TABLES.setdefault((dtype, device), table)
    return table


def unpack_bits(bits: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The inverse of [`pack_bits`][modeopt_masks.compact.pack_bits]: a tensor of ``shape`` with 0/1 (``True``/``False``)
    of ``dtype``, gathered straight into that dtype (one lookup of each byte's 8 values;
    4x faster than shifting and comparing).

    Examples:
        >>> import torch
        >>> from modeopt_masks.compact import pack_bits, unpack_bits
        >>> c = torch.rand(3, 5) > 0.5
        >>> torch.equal(unpack_bits(pack_bits(c), (3, 5), torch.bool), c)
        True
    """
    rows = _byte_table(dtype, bits.device).index_select(0, bits.to(torch.int32))
    return rows.view(-1)[: torch.Size(shape).numel()].view(shape)


class CompactMask(MaskTechnique):
    """A hard circuit stored as a packed ``uint8`` buffer ``bits``; evaluation only.

    ``source`` names the technique it replaced. ``mask()``/``hard_mask()`` unpack the
    circuit on every call (nothing cached); a training forward raises.

    Args:
        shape: The shape of the masked tensor.
        bits: The packed circuit, 8 entries per byte.
        source: The name of the technique it replaced.

    Examples:
        >>> import torch
        >>> from modeopt_masks.compact import CompactMask
        >>> m = CompactMask.of(torch.tensor([[True, False], [False, True]]), "Example")
        >>> m.hard_mask(torch.float32), int(m.l0())
        (tensor([[1., 0.],
                [0., 1.]]), 2)
    """

    learnable = False
    eval_only = True
    bits: torch.Tensor

    def __init__(self, shape: tuple[int, ...], bits: torch.Tensor, source: str) -> None:
        super().__init__(shape)
        expected = -(-torch.Size(shape).numel() // _BITS)
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != expected:
            raise ValueError(f"bits for a mask of shape {shape} must be a 1-d uint8 tensor of "
                             f"{expected} bytes, got {bits.dtype} of shape {tuple(bits.shape)}")
        self.register_buffer("bits", bits)
        self.source = source

    @classmethod
    def of(cls, circuit: torch.Tensor, source: str) -> CompactMask:
        """The compact form of the bool ``circuit`` (a technique's ``circuit()``)."""
        if is_dtensor(circuit):
            circuit = circuit.full_tensor()  # type: ignore[attr-defined]
        return cls(tuple(circuit.shape), pack_bits(circuit.detach()), source)

    def circuit(self) -> torch.Tensor:
        return unpack_bits(self.bits, self.shape, torch.bool)

    def hard_mask(self, dtype: torch.dtype) -> torch.Tensor:
        return unpack_bits(self.bits, self.shape, dtype)

    def mask(self) -> torch.Tensor:
        return self.hard_mask(torch.float32)

    def l0(self) -> torch.Tensor:
        return self.circuit().sum().float()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, from={self.source}"


def _layers(model: nn.Module) -> dict[str, MaskedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}


def is_compacted(model: nn.Module) -> bool:
    """Whether any masked layer of ``model`` holds a [`CompactMask`][modeopt_masks.compact.CompactMask].

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.compact import is_compacted
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> is_compacted(net), is_compacted(mm.compact_masks(net))
        (False, True)
    """
    return any(isinstance(tech, CompactMask) for layer in _layers(model).values()
               for _, tech in layer._mask_modules())


def compact_masks(model: nn.Module, *, keep_logits: bool = False) -> nn.Module:
    """Replace every mask of ``model`` by its packed hard circuit (see the module docstring).

    The circuits are taken as they are now (the hard masks, whatever the train/eval
    state). ``keep_logits=False`` frees the replaced techniques (one-way: eval only, no
    ``mm.save``); ``keep_logits=True`` keeps them in CPU memory for [`expand_masks`][modeopt_masks.compact.expand_masks].
    All circuits are packed before any layer changes, so a failure leaves the model as it
    was. Already compact masks are left alone. Returns ``model``, put in eval mode.

    Args:
        model: A model with masked layers.
        keep_logits: Keep the replaced techniques (CPU) so that
            [`expand_masks`][modeopt_masks.compact.expand_masks] can undo it.

    Returns:
        ``model``, in eval mode.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.compact_masks(mm.convert(nn.Sequential(nn.Linear(8, 8)),
        ...                                   "continuous_sparsification"))
        >>> [name for name, _ in net.named_parameters()]
        ['0.weight', '0.bias']
    """
    if not isinstance(keep_logits, bool):
        raise TypeError(f"keep_logits must be True or False, got {keep_logits!r}")
    layers = _layers(model)
    if not layers:
        raise ValueError("compact_masks: the model has no masked layers (convert it with a "
                         "mask mode such as 'continuous_sparsification' first)")
    plan = _compaction_plan(layers)
    _install(plan, keep_logits)
    if not keep_logits:
        del plan  # the last references to the replaced techniques (helpers hold no others)
        release_freed_heap()
    return model.eval()


def _compaction_plan(layers: dict[str, MaskedLayer]
                     ) -> list[tuple[MaskedLayer, str, MaskTechnique, CompactMask]]:
    plan: list[tuple[MaskedLayer, str, MaskTechnique, CompactMask]] = []
    with torch.no_grad():
        for layer in layers.values():
            for what, tech in layer._mask_modules():
                if isinstance(tech, CompactMask):
                    continue
                compact = CompactMask.of(tech.circuit(), type(tech).__name__)
                compact.temperature, compact.rule = tech.temperature, tech.rule
                compact.spread = tech.spread  # a head circuit is unit-shaped
                plan.append((layer, f"{what}_mask", tech, compact))
    return plan


def _install(plan: list[tuple[MaskedLayer, str, MaskTechnique, CompactMask]],
             keep_logits: bool) -> None:
    for layer, attr, tech, compact in plan:
        if keep_logits:
            # a plain attribute: outside state_dict, parameters() and .to()
            compact.__dict__["_mm_original"] = tech.to("cpu")
        setattr(layer, attr, compact)


def expand_masks(model: nn.Module) -> nn.Module:
    """Undo [`compact_masks`][modeopt_masks.compact.compact_masks] made with ``keep_logits=True``: the original techniques
    are put back (on the device of the tensor they mask), exactly as they were compacted.

    Raises ``ValueError`` (the model unchanged) if a compact mask kept no original.

    Args:
        model: A model compacted with ``keep_logits=True``.

    Returns:
        ``model``, with its original techniques.

    Raises:
        ValueError: When a compact mask kept no original (the model unchanged).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "hard_concrete")
        >>> net = mm.expand_masks(mm.compact_masks(net, keep_logits=True))
        >>> type(net[0].weight_mask).__name__
        'HardConcreteMask'
    """
    plan: list[tuple[MaskedLayer, str, MaskTechnique]] = []
    missing: list[str] = []
    for name, layer in _layers(model).items():
        for what, tech in layer._mask_modules():
            if not isinstance(tech, CompactMask):
                continue
            original = tech.__dict__.get("_mm_original")
            if original is None:
                missing.append(f"{name}.{what}_mask" if name else f"{what}_mask")
            else:
                plan.append((layer, what, cast(MaskTechnique, original)))
    if missing:
        raise ValueError(
            f"expand_masks: {missing[:10]} were compacted without keep_logits=True, so their "
            "learned masks are gone; restore a checkpoint saved before compact_masks instead")
    for layer, what, original in plan:
        tensor = getattr(layer, what)
        setattr(layer, f"{what}_mask", original.to(tensor.device))
        original.train(cast(nn.Module, layer).training)
    return model

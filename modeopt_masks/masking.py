"""Masked layers: the machinery shared by every unstructured mask mode.

A converted layer keeps its own parameters and gains a ``weight_mask`` (and,
with ``mask_bias``, a ``bias_mask``) child: a :class:`MaskTechnique` that holds
the mask's parameters. The layer's forward runs its original computation on
``weight * mask``. Ablations and per-layer switches live here, once, for every
technique and every layer kind.

Ablation modes (evaluation only, on the hard circuit ``c``):

* ``none``: the mask as learned (soft in training, hard in eval);
* ``zero_ablate``: ``w * (1 - c)``: the circuit removed;
* ``random_ablate``: the circuit's weights replaced by a fresh draw of the
  layer's usual init (drawn once, never written over the original);
* ``randomly_sampled``: ``|c|`` entries drawn from the whole tensor removed;
* ``complement_sampled``: ``|c|`` entries drawn from outside the circuit removed.

Eval path (every mode): nothing is cached. With hard masks each forward multiplies the
weight by :meth:`MaskTechnique.hard_mask`, the circuit as 0/1 in the weight's dtype,
computed from the mask's current tensors (``continuous_sparsification`` and
``hard_concrete`` threshold their logits straight into that dtype; ``magnitude_pruning``
converts its ``keep`` buffer). The only extra memory is one layer's mask and masked
weight, freed after the layer runs, so writes of any kind (``w.data.zero_()``, a replaced
mask parameter, an EMA, a new ``keep``) show in the next forward and no copy of the
weights is kept. A multiply, not ``torch.where(circuit, w, 0)``: on CPU ``where`` with a
bool condition is ~10x slower than a same-dtype product, the whole eval overhead. (So a
removed entry whose weight is ``inf``/``NaN`` gives ``NaN``, as ``weight * mask`` does.)

The masks' own memory stays resident (``continuous_sparsification``: a float32 logit per
weight). :func:`modeopt_masks.compact.compact_masks` swaps every technique for a
:class:`~modeopt_masks.compact.CompactMask`: the circuit packed 8 entries per byte,
unpacked per forward (eval only; see that module for reversibility and saving).

Examples:
    >>> import torch, torch.nn as nn, modeopt_masks as mm
    >>> net = mm.convert(nn.Sequential(nn.Linear(4, 4)), "magnitude_pruning")
    >>> layer = net[0]
    >>> torch.equal(layer.effective_weight(), layer.weight * layer.weight_mask.mask())
    True
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import torch
import torch.nn as nn

from .distributed import is_dtensor, match_placement
from .layer_kinds import LayerKind, kind_of

Ablation = Literal["none", "zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"]
ABLATIONS: tuple[str, ...] = (
    "none",
    "zero_ablate",
    "random_ablate",
    "randomly_sampled",
    "complement_sampled",
)
#: the ablations that use random draws (redrawn by ``force_resample``; the others are
#: functions of the masks).
DRAWN_ABLATIONS: tuple[str, ...] = ("random_ablate", "randomly_sampled", "complement_sampled")


def check_ablation(ablation: str) -> str:
    """``ablation`` if it is one of ``ABLATIONS``, else a ``ValueError`` naming them.

    Examples:
        >>> from modeopt_masks.masking import check_ablation
        >>> try:
        ...     check_ablation("zero")
        ... except ValueError as e:
        ...     print(e)
        unknown ablation 'zero'; choose one of ['none', 'zero_ablate', 'random_ablate', 'randomly_sampled', 'complement_sampled']
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {list(ABLATIONS)}")
    return ablation


_F = TypeVar("_F", bound=Callable[..., Any])


def run_eagerly(fn: _F) -> _F:
    """``torch.compiler.disable(fn)``, built on the first call made once dynamo is loaded.

    Decorating with ``torch.compiler.disable`` at import time imports ``torch._dynamo``
    (seconds); nothing can be compiling before ``torch.compile`` has loaded it.

    Examples:
        >>> from modeopt_masks.masking import run_eagerly
        >>> run_eagerly(lambda x: x + 1)(1)
        2
    """
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not disabled:
            if "torch._dynamo" not in sys.modules:
                return fn(*args, **kwargs)
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class MaskTechnique(nn.Module):
    """A mask over one tensor. Subclasses hold the parameters and define the mask.

    ``mask()`` is soft while ``self.training`` (learnable techniques) and hard in
    eval; ``circuit()`` is the hard boolean subnetwork; ``l0()`` the expected
    number of kept entries, differentiable where the technique learns.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 2)), "continuous_sparsification")
        >>> isinstance(net[0].weight_mask, mm.MaskTechnique)
        True
    """

    #: whether ``temperature`` means something for this technique.
    has_temperature: bool = False
    #: whether the mask has trainable parameters.
    learnable: bool = True
    #: whether the mask exists for evaluation only (a training forward is refused).
    eval_only: bool = False

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.temperature = 1.0
        self.rule: Any = None  # the merged rule that created this mask
        #: head units (:mod:`modeopt_masks.heads`): ``(tensor axis, entries per unit, tensor
        #: dims)`` the 1-D unit mask is spread over; ``None``: the mask broadcasts as it is
        self.spread: tuple[int, int, int] | None = None

    def full(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` (a mask or circuit of ``self.shape``) in a shape that broadcasts
        against the masked tensor."""
        if self.spread is None:
            return units
        from .heads import spread_units

        return spread_units(units, *self.spread)

    @classmethod
    def from_rule(
        cls, kind: LayerKind, tensor: torch.Tensor, shape: tuple[int, ...], rule: Any
    ) -> MaskTechnique:
        """The technique of mask ``shape`` for ``tensor`` (a weight or bias of a ``kind``
        layer) under the merged ``rule``; what :func:`~modeopt_masks.modes.mask_mode.register_mask_mode`
        calls for every converted tensor."""
        raise NotImplementedError

    def mask(self) -> torch.Tensor:
        """The mask in the current train/eval state, float, broadcastable to the tensor."""
        raise NotImplementedError

    def circuit(self) -> torch.Tensor:
        """The hard subnetwork as a bool tensor of ``self.shape``."""
        raise NotImplementedError

    def hard_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The circuit as 0/1 of ``dtype`` (what eval multiplies the tensor by), fresh per call.

        Subclasses whose circuit is a threshold override it to skip the bool step
        (see :func:`positive`).

        Examples:
            >>> import torch, torch.nn as nn, modeopt_masks as mm
            >>> tech = mm.convert(nn.Sequential(nn.Linear(3, 2)), "magnitude_pruning")[0].weight_mask
            >>> torch.equal(tech.hard_mask(torch.float16), tech.circuit().half())
            True
        """
        return self.circuit().to(dtype)

    def l0(self) -> torch.Tensor:
        """Expected number of kept entries (float32 scalar; float64 for float64 masks)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        temp = f", temperature={self.temperature:g}" if self.has_temperature else ""
        return f"shape={self.shape}{temp}"


def compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the dtype masks are computed in: float32, or wider if ``tensor`` is.

    Half-precision mask parameters are upcast (a soft mask in fp16 loses its small
    gradients); float64 ones stay float64 (``.float()`` would silently drop them to
    float32 in a float64 model).

    Examples:
        >>> import torch
        >>> from modeopt_masks.masking import compute_dtype
        >>> [compute_dtype(torch.zeros(1, dtype=d)).dtype for d in (torch.bfloat16, torch.float64)]
        [torch.float32, torch.float64]
    """
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def positive(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(tensor > 0)`` as 0/1 of ``dtype``, thresholded straight into that dtype.

    ``(t > 0).to(dtype)`` costs a bool tensor and a conversion (the conversion alone
    takes longer than the product it feeds); ``torch.gt(..., out=)`` writes the floats
    directly. DTensors and traced code take the plain formula (same values).

    Examples:
        >>> import torch
        >>> from modeopt_masks.masking import positive
        >>> positive(torch.tensor([-1.0, 0.0, 2.0, float("nan")]), torch.bfloat16)
        tensor([0., 0., 1., 0.], dtype=torch.bfloat16)
    """
    if is_dtensor(tensor) or torch.compiler.is_compiling():
        return (tensor > 0).to(dtype)
    out = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)
    return torch.gt(tensor.detach(), 0, out=out)


@contextmanager
def hard_masks(module: nn.Module) -> Iterator[None]:
    """Every :class:`MaskTechnique` under ``module`` in eval (hard masks) inside the block.

    Only the techniques' own ``training`` flags change, and they are put back
    afterwards; the rest of the model keeps its train/eval state.

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> from modeopt_masks.masking import hard_masks
        >>> net = mm.convert(nn.Sequential(nn.Linear(2, 2)), "continuous_sparsification")
        >>> with hard_masks(net):
        ...     net[0].weight_mask.training
        False
        >>> net[0].weight_mask.training
        True
    """
    techniques = [m for m in module.modules() if isinstance(m, MaskTechnique)]
    states = [t.training for t in techniques]
    try:
        for t in techniques:
            t.training = False
        yield
    finally:
        for t, state in zip(techniques, states, strict=True):
            t.training = state


class MaskedLayer:
    """Mixin put in front of a layer's class by ``convert`` (see :mod:`modeopt_masks.dynamic`).

    Examples:
        >>> import torch.nn as nn, modeopt_masks as mm
        >>> net = mm.convert(nn.Sequential(nn.Linear(3, 2)), "hard_concrete")
        >>> isinstance(net[0], mm.MaskedLayer), isinstance(net[0], nn.Linear)
        (True, True)
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_mask: MaskTechnique
    bias_mask: MaskTechnique | None
    training: bool
    _modules: dict[str, nn.Module | None]

    # -- set up / tear down -------------------------------------------------------------
    def _mm_init(self, weight_mask: MaskTechnique, bias_mask: MaskTechnique | None) -> None:
        self.weight_mask = weight_mask
        self.bias_mask = bias_mask
        self._mm_use_masks = True
        self._mm_ablation: str = "none"
        # per (tensor, ablation): the circuit the draw was made for, and the draw
        self._mm_sampled: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._mm_random: dict[str, torch.Tensor] = {}

    def _mm_teardown(self) -> None:
        for name in ("weight_mask", "bias_mask"):
            if name in self._modules:
                del self._modules[name]
            self.__dict__.pop(name, None)
        for attr in ("_mm_use_masks", "_mm_ablation", "_mm_sampled", "_mm_random"):
            self.__dict__.pop(attr, None)

    @property
    def layer_kind(self) -> LayerKind:
        kind = kind_of(self)  # type: ignore[arg-type]
        assert kind is not None
        return kind

    # -- switches ----------------------------------------------------------------------
    @property
    def ablation(self) -> str:
        """The current ablation mode (one of ``ABLATIONS``)."""
        return self._mm_ablation

    def set_ablation(self, ablation: str, force_resample: bool = False) -> None:
        """Choose the ablation mode; ``force_resample`` redraws sampled/random tensors."""
        self._mm_ablation = check_ablation(ablation)
        if force_resample:
            self._mm_sampled.clear()
            self._mm_random.clear()

    @property
    def use_masks(self) -> bool:
        """``False`` makes the layer compute exactly its original output."""
        return self._mm_use_masks

    @use_masks.setter
    def use_masks(self, value: bool) -> None:
        self._mm_use_masks = bool(value)

    def _mask_modules(self) -> list[tuple[str, MaskTechnique]]:
        out = [("weight", self.weight_mask)]
        if self.bias_mask is not None:
            out.append(("bias", self.bias_mask))
        return out

    # -- the masked tensors ------------------------------------------------------------
    def _masks_soft(self) -> bool:
        return self.weight_mask.training and self.weight_mask.learnable

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses now (masked, ablated or original)."""
        return self._effective_tensors()[0]

    def effective_bias(self) -> torch.Tensor | None:
        """The bias the forward uses now."""
        return self._effective_tensors()[1]

    def _effective_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._mm_use_masks:
            return self.weight, self.bias
        if self._mm_ablation != "none" and self._masks_soft():
            raise RuntimeError(
                f"ablation {self._mm_ablation!r} needs hard masks: call model.eval() first "
                "(ablations are for evaluating a discovered circuit)"
            )
        return self._compute_tensors()

    def _compute_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = self._apply_mask("weight", self.weight, self.weight_mask)
        bias: torch.Tensor | None = self.bias
        if bias is not None and self.bias_mask is not None:
            bias = self._apply_mask("bias", bias, self.bias_mask)
        return weight, bias

    def _apply_mask(self, name: str, tensor: torch.Tensor, technique: MaskTechnique) -> torch.Tensor:
        ablation = self._mm_ablation
        if technique.training and technique.eval_only:
            raise RuntimeError(
                f"the {name} mask of this layer is a {type(technique).__name__} (eval only: "
                "mm.compact_masks kept just the hard circuit); call model.eval(), or "
                "mm.expand_masks(model) to train again (needs keep_logits=True)"
            )
        full = technique.full  # head units: spread over their columns (else the identity)
        if ablation == "none" and technique.training and technique.learnable:
            return tensor * match_placement(full(technique.mask()), tensor).to(tensor.dtype)
        if ablation == "none":  # hard mask, computed now from the mask's current tensors
            return tensor * match_placement(full(technique.hard_mask(tensor.dtype)), tensor)
        circuit = match_placement(technique.circuit(), tensor)
        if ablation == "zero_ablate":
            return tensor * full(~circuit).to(tensor.dtype)
        if ablation == "random_ablate":
            return torch.where(full(circuit), self._random_tensor(name, tensor), tensor)
        sampled = self._sampled_mask(name, ablation, technique, circuit)  # drawn over units
        return tensor * full(sampled).to(tensor.dtype)

    # Draws run eagerly even inside torch.compile: traced, the draw became part of the
    # graph (a fresh draw every call, and ``Tensor._version`` is not the real one there).
    @run_eagerly
    def _random_tensor(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        cached = self._mm_random.get(name)
        if cached is None or cached.shape != tensor.shape or cached.device != tensor.device:
            with torch.no_grad():
                fresh = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
                if name == "weight":
                    self.layer_kind.init_weight(fresh)
                else:
                    fan_in = self.weight.numel() // self.weight.shape[self.layer_kind.out_dim]
                    bound = 1 / fan_in**0.5 if fan_in > 0 else 0.0
                    nn.init.uniform_(fresh, -bound, bound)
            cached = self._mm_random[name] = fresh
        return cached.to(tensor.dtype)

    @run_eagerly
    def _sampled_mask(
        self, name: str, ablation: str, technique: MaskTechnique, circuit: torch.Tensor
    ) -> torch.Tensor:
        key = (name, ablation)  # one draw per tensor *and* mode: modes never share a draw
        entry = self._mm_sampled.get(key)
        # redrawn when the circuit's content changes (compared, not versioned: `.data`
        # writes and replaced parameters do not bump a version)
        if entry is not None and entry[0].shape == circuit.shape and torch.equal(entry[0], circuit):
            return entry[1]
        flat = circuit.reshape(-1)
        k = int(flat.sum())
        if ablation == "randomly_sampled":
            pool = torch.arange(flat.numel(), device=flat.device)
        else:
            pool = torch.nonzero(~flat).reshape(-1)
            if k > pool.numel():
                raise ValueError(
                    f"complement_sampled needs |circuit| <= |complement| but {name} of this layer "
                    f"has {k} circuit entries and {pool.numel()} outside it; use randomly_sampled"
                )
        choice = pool[torch.randperm(pool.numel(), device="cpu")[:k].to(pool.device)]
        keep = torch.ones_like(flat)
        keep[choice] = False
        sampled = keep.reshape(circuit.shape)
        self._mm_sampled[key] = (circuit.clone(), sampled)
        return sampled

    # -- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._effective_tensors()
        return self.layer_kind.forward(self, x, weight, bias)  # type: ignore[arg-type]

    def _apply(self, fn, recurse=True):  # noqa: D102 - ablation draws follow .to()/.half()
        self._mm_random = {k: fn(v) for k, v in self._mm_random.items()}
        self._mm_sampled = {k: (fn(c), fn(v)) for k, (c, v) in self._mm_sampled.items()}
        return super()._apply(fn, recurse)  # type: ignore[misc]

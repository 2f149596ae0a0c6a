"""Calibration for one-shot pruning: per-layer input statistics, block by block.

A layer is seen as a matrix ``[outputs, input features]`` (``weight_matrix``):
a Linear as it is, a ``Conv1D`` transposed, a convolution flattened over
``(in_channels / groups, *kernel)`` with one matrix block per group; its inputs
become rows of input features (``input_features``: tokens, or ``unfold``-ed
patches for convolutions). Statistics accumulate over those rows:
[`SquaredNorms`][modeopt_masks.calibration.SquaredNorms] (Wanda's ``||X_j||_2^2``) and [`Hessian`][modeopt_masks.calibration.Hessian]
(SparseGPT's ``X^T X``).

[`calibrate`][modeopt_masks.calibration.calibrate] runs the calibration data through the model and hands each
group of layers' statistics to a callback that prunes them. With
``sequential=True`` it works as the reference implementations do: the inputs of
the first repeated block (a decoder layer) are captured once, then each block
runs on them on its own, its layers are pruned, and its outputs (computed again
with the pruned layers when ``pruned_inputs``) become the next block's inputs;
memory stays near one block's activations for the calibration set. The blocks
are the children of the ``nn.ModuleList`` / ``nn.Sequential`` that holds the most
pruned layers (or ``blocks=`` its dotted name); every block gets the keyword
arguments the first one got (as in the references: the position embeddings and
attention mask of a decoder). Layers outside the blocks are calibrated on the
unpruned model in one pass first. Non-finite statistics raise a ``ValueError``
naming the layer.

Examples:
    >>> import torch, torch.nn as nn
    >>> from modeopt_masks.calibration import SquaredNorms, calibrate
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> seen = {}
    >>> calibrate(net, {"0": net[0], "2": net[2]}, lambda n, m: SquaredNorms(m),
    ...           lambda stats: seen.update(stats), [torch.ones(4, 3)], progress=False)
    >>> seen["0"].value.tolist()
    [[4.0, 4.0, 4.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .layer_kinds import kind_of
from .structured.scores import model_device, run_model, to_device


# -- layers as matrices ------------------------------------------------------------------
def n_groups(layer: nn.Module) -> int:
    """Convolution groups (1 for other layers)."""
    return int(getattr(layer, "groups", 1)) if isinstance(layer, nn.modules.conv._ConvNd) else 1


def _transposed(layer: Any) -> bool:
    key = layer if isinstance(layer, str) else getattr(kind_of(layer), "key", None)
    return key == "hf.Conv1D"  # stores [in, out]


def weight_matrix(layer: Any, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor`` (default the layer's weight) as ``[outputs, input features]`` (a view).

    ``layer`` is the layer or its type key (``"nn.Linear"``, ``"hf.Conv1D"``, ...).

    Examples:
        >>> import torch.nn as nn
        >>> weight_matrix(nn.Conv2d(3, 4, 2)).shape
        torch.Size([4, 12])
    """
    w: torch.Tensor = layer.weight if tensor is None else tensor
    if _transposed(layer):
        return w.t()
    return w.reshape(w.shape[0], -1)


def from_matrix(layer: Any, matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of [`weight_matrix`][modeopt_masks.calibration.weight_matrix]: ``matrix`` in the weight layout ``shape``."""
    if _transposed(layer):
        return matrix.t().contiguous()
    return matrix.reshape(shape)


def _conv_patches(layer: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    """``[batch * positions, in_channels * prod(kernel)]`` patches the convolution sees."""
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(-2)  # a 1-D conv is a 2-D one of height 1
        kernel, dilation, stride = (1, *layer.kernel_size), (1, *layer.dilation), (1, *layer.stride)
        padding: Any = layer.padding if isinstance(layer.padding, str) else (0, *layer.padding)
    else:
        kernel, dilation, stride, padding = (
            layer.kernel_size, layer.dilation, layer.stride, layer.padding)
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = (0, 0)
    elif padding == "same":
        pads: list[int] = []
        for k, d in zip(reversed(kernel), reversed(dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        x, padding = F.pad(x, pads), (0, 0)
    elif padding == "valid":
        padding = (0, 0)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_features(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input ``x`` as ``[groups, rows, input features]`` in float32.

    Examples:
        >>> import torch, torch.nn as nn
        >>> input_features(nn.Linear(3, 2), torch.zeros(5, 7, 3)).shape
        torch.Size([1, 35, 3])
    """
    if isinstance(layer, nn.modules.conv._ConvNd):
        rows = _conv_patches(layer, x.float())
    else:
        rows = x.reshape(-1, x.shape[-1]).float()
    g = n_groups(layer)
    return rows.reshape(rows.shape[0], g, -1).transpose(0, 1)


# -- statistics --------------------------------------------------------------------------
class Statistic(Protocol):
    """Accumulates input features of one layer."""

    value: torch.Tensor

    def add(self, features: torch.Tensor) -> None:
        """Add a batch of ``[groups, rows, features]``."""


class SquaredNorms:
    """``sum over rows of x_j^2`` per input feature, ``[groups, features]`` (float64).

    Examples:
        >>> import torch, torch.nn as nn
        >>> s = SquaredNorms(nn.Linear(2, 1)); s.add(torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
        >>> s.value.tolist()
        [[10.0, 4.0]]
    """

    def __init__(self, layer: nn.Module) -> None:
        self.value = torch.zeros(0)

    def add(self, features: torch.Tensor) -> None:
        sq = features.double().square().sum(1)
        self.value = sq if self.value.numel() == 0 else self.value + sq


class Hessian:
    """``X^T X`` of the input features, ``[groups, features, features]`` (float32).

    Examples:
        >>> import torch, torch.nn as nn
        >>> h = Hessian(nn.Linear(2, 1)); h.add(torch.tensor([[[1.0, 2.0]]]))
        >>> h.value.tolist()
        [[[1.0, 2.0], [2.0, 4.0]]]
    """

    def __init__(self, layer: nn.Module) -> None:
        self.value = torch.zeros(0)

    def add(self, features: torch.Tensor) -> None:
        if self.value.numel() == 0:
            self.value = features.transpose(1, 2) @ features
        else:  # in place: no second [features, features] matrix per batch
            self.value.baddbmm_(features.transpose(1, 2), features)


def check_statistics(stats: dict[str, Statistic]) -> None:
    """A ``ValueError`` naming the layers whose calibration inputs held NaN/inf."""
    bad = [n for n, s in stats.items() if not bool(torch.isfinite(s.value).all())]  # one pass each
    if bad:
        raise ValueError(
            f"the calibration inputs of {bad} contain NaN/inf (or overflow): nothing was pruned. "
            "Check the calibration data and run the model in float32 or bfloat16"
        )
    empty = [n for n, s in stats.items() if s.value.numel() == 0]
    if empty:
        raise ValueError(f"the calibration data never reached {empty}: check collect_func")


# -- the driver --------------------------------------------------------------------------
def calibration_inputs(
    model: nn.Module,
    data_loader: Iterable[Any],
    collect_func: Callable[[Any], Any] | None = None,
    max_iter_data_loader: int | None = None,
    progress: bool = True,
    desc: str = "calibration",
) -> Iterator[Any]:
    """The model inputs of each batch (``collect_func(batch)``, on the model's device)."""
    device = model_device(model)
    total = max_iter_data_loader
    if total is None and hasattr(data_loader, "__len__"):
        total = len(data_loader)  # type: ignore[arg-type]
    for step, batch in enumerate(tqdm(data_loader, total=total, desc=desc, disable=not progress)):
        if max_iter_data_loader is not None and step >= max_iter_data_loader:
            break
        batch = to_device(batch, device)
        yield collect_func(batch) if collect_func is not None else batch


class _Stop(Exception):
    """Ends a forward once the inputs of the first block are captured."""


def find_blocks(model: nn.Module, layers: dict[str, nn.Module], name: str | None = None
                ) -> tuple[str, list[nn.Module]] | None:
    """``(container name, blocks)``: the ``ModuleList``/``Sequential`` whose children hold the
    most of ``layers`` (``name``: that container), or ``None`` if none holds two."""
    modules = dict(model.named_modules())
    if name is not None:
        container = modules.get(name)
        if not isinstance(container, nn.ModuleList | nn.Sequential):
            raise ValueError(
                f"blocks={name!r} is not an nn.ModuleList / nn.Sequential of the model; "
                f"candidates: {[n for n, m in modules.items() if isinstance(m, nn.ModuleList | nn.Sequential)]}"
            )
        return name, list(container)
    best: tuple[int, str] | None = None
    for cname, module in modules.items():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        prefix = f"{cname}." if cname else ""
        covered = sum(1 for n in layers if n.startswith(prefix) and n != cname)
        children = {f"{prefix}{c}" for c, _ in module.named_children()}
        holding = sum(1 for c in children if any(n == c or n.startswith(c + ".") for n in layers))
        if holding >= 2 and (best is None or covered > best[0]):
            best = (covered, cname)
    if best is None:
        return None
    return best[1], list(modules[best[1]])


@contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """HF models run without a KV cache (a cache would grow on every block re-run)."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if old:
            config.use_cache = old  # type: ignore[union-attr]


def _stream(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _collect(layers: dict[str, nn.Module], new_stat: Callable[[str, nn.Module], Statistic],
             run: Callable[[], None]) -> dict[str, Statistic]:
    stats = {name: new_stat(name, layer) for name, layer in layers.items()}
    handles = [
        layer.register_forward_hook(
            lambda mod, args, out, s=stats[name]: s.add(input_features(mod, args[0])))
        for name, layer in layers.items()
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    check_statistics(stats)
    return stats


def calibrate(
    model: nn.Module,
    layers: dict[str, nn.Module],
    new_stat: Callable[[str, nn.Module], Statistic],
    prune: Callable[[dict[str, Statistic]], None],
    data_loader: Iterable[Any],
    collect_func: Callable[[Any], Any] | None = None,
    max_iter_data_loader: int | None = None,
    progress: bool = True,
    sequential: bool = True,
    pruned_inputs: bool = True,
    blocks: str | None = None,
    desc: str = "calibration",
) -> None:
    """Collect ``new_stat`` statistics of ``layers`` on the data and call ``prune`` per group.

    ``prune(stats)`` gets a dict of layer name -> statistic, once per block (sequential)
    or once for all (one pass), and should apply the masks: with ``pruned_inputs`` the
    next block sees them. The model runs in eval mode under ``no_grad`` and is put back
    in its train/eval state.
    """
    found = find_blocks(model, layers, blocks) if sequential else None
    options = {"collect_func": collect_func, "max_iter_data_loader": max_iter_data_loader,
               "progress": progress, "desc": desc}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _no_cache(model):
            if found is None:
                def one_pass() -> None:
                    for inputs in calibration_inputs(model, data_loader, **options):  # type: ignore[arg-type]
                        run_model(model, inputs)
                prune(_collect(layers, new_stat, one_pass))
                return
            cname, block_list = found
            prefix = f"{cname}." if cname else ""
            inside = {n: m for n, m in layers.items() if n.startswith(prefix) and n != cname}
            outside = {n: m for n, m in layers.items() if n not in inside}
            if outside:
                def outside_pass() -> None:
                    for inputs in calibration_inputs(model, data_loader, **options):  # type: ignore[arg-type]
                        run_model(model, inputs)
                prune(_collect(outside, new_stat, outside_pass))
            streams, extra_args, kwargs = _capture(model, block_list, data_loader, options)
            _sequential(model, block_list, inside, new_stat, prune, streams, extra_args,
                        kwargs, pruned_inputs, progress, desc)
    finally:
        model.train(was_training)


def _capture(model: nn.Module, block_list: list[nn.Module], data_loader: Iterable[Any],
             options: dict[str, Any]) -> tuple[list[torch.Tensor], tuple[Any, ...], dict[str, Any]]:
    """The first block's input stream per batch and its other arguments (from batch 0)."""
    streams: list[torch.Tensor] = []
    saved: dict[str, Any] = {}

    def first(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not args:
            raise ValueError("sequential calibration needs the blocks' input as their first "
                             "positional argument; pass sequential=False")
        streams.append(args[0])
        if "args" not in saved:
            saved["args"], saved["kwargs"] = args[1:], kwargs
            if len(block_list) > 1:
                return  # batch 0 runs block 0 to check that block 1 takes its output
        raise _Stop

    def first_output(_mod: nn.Module, _args: Any, output: Any) -> None:
        if "out0" not in saved:
            saved["out0"] = _stream(output)

    def second(_mod: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
        if "out0" in saved and "in1" not in saved:
            saved["in1"] = args[0] if args else None
        raise _Stop

    handles = [block_list[0].register_forward_pre_hook(first, with_kwargs=True),
               block_list[0].register_forward_hook(first_output)]
    if len(block_list) > 1:
        handles.append(block_list[1].register_forward_pre_hook(second, with_kwargs=True))
    try:
        for inputs in calibration_inputs(model, data_loader, **options):
            try:
                run_model(model, inputs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if not streams:
        raise ValueError("the calibration data never reached the first block (an empty "
                         "data_loader, or check collect_func)")
    in1, out0 = saved.get("in1"), saved.get("out0")
    chained = (isinstance(in1, torch.Tensor) and isinstance(out0, torch.Tensor)
               and in1.shape == out0.shape and (in1 is out0 or torch.equal(in1, out0)))
    if len(block_list) > 1 and not chained:
        raise ValueError(
            "sequential calibration: the second block does not take the first block's output "
            "as its input, so the blocks are not a chain; pass sequential=False or blocks=..."
        )
    return streams, saved["args"], saved["kwargs"]


def _sequential(model: nn.Module, block_list: list[nn.Module], layers: dict[str, nn.Module],
                new_stat: Callable[[str, nn.Module], Statistic],
                prune: Callable[[dict[str, Statistic]], None], streams: list[torch.Tensor],
                extra_args: tuple[Any, ...], kwargs: dict[str, Any], pruned_inputs: bool,
                progress: bool, desc: str) -> None:
    ids = {id(m): n for n, m in layers.items()}
    for block in tqdm(block_list, desc=f"{desc} (blocks)", disable=not progress):
        mine = {ids[id(m)]: m for m in block.modules() if id(m) in ids}
        outs: list[torch.Tensor] = []

        def run(keep: bool, blk: nn.Module = block, into: list[torch.Tensor] = outs) -> None:
            for x in streams:
                y = _stream(blk(x, *extra_args, **kwargs))
                if keep:
                    into.append(y)

        if mine:
            prune(_collect(mine, new_stat, lambda: run(not pruned_inputs)))
            if pruned_inputs:
                run(True)
        else:
            run(True)
        streams[:] = outs
        block.train(False)  # drops the masked layers' eval caches (one weight copy each)

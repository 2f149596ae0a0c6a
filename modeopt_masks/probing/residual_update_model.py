"""``ResidualUpdateModel``: forward hooks that cache attention/MLP updates and residual streams.

On every forward the chosen vectors are put in ``vector_cache`` under
``attn_update_{i}``, ``mlp_update_{i}``, ``attn_stream_{i}``, ``mlp_stream_{i}``
(``[batch, seq, hidden]``, still attached to the autograd graph so masks and
probes can train through them). What "update" and "stream" mean for post-LN
(BERT-family) and pre-LN (GPT-2, GPT-NeoX, Llama-style, ViT) models is defined
in [`modeopt_masks.probing.residual_layouts`][modeopt_masks.probing.residual_layouts].

Examples:
    >>> import torch, transformers
    >>> from modeopt_masks.probing import ResidualUpdateModel, ResidualUpdateModelConfig
    >>> gpt = transformers.GPT2Model(transformers.GPT2Config(
    ...     n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    >>> rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[1], stream=True), gpt)
    >>> _ = rum(input_ids=torch.tensor([[1, 2, 3]]))
    >>> sorted(rum.vector_cache), tuple(rum.vector_cache["mlp_update_1"].shape)
    (['attn_stream_1', 'attn_update_1', 'mlp_stream_1', 'mlp_update_1'], (1, 3, 32))
    >>> rum.remove_hooks(); _ = rum(input_ids=torch.tensor([[1, 2]])); rum.vector_cache
    {}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from pydantic import ConfigDict, field_validator, model_validator

from ..rules import StrictModel
from .residual_layouts import HookPoint, ResidualLayout, layout_candidates, structural_layout


class ResidualUpdateModelConfig(StrictModel):
    """Which vectors [`ResidualUpdateModel`][modeopt_masks.probing.residual_update_model.ResidualUpdateModel] caches.

    Attributes:
        model_type: A family (``bert``, ``mpnet``, ``gpt2``, ``gpt_neox``, ``llama``,
            ``vit``) or an HF ``config.model_type`` such as ``roberta`` (``None``: read
            from the model).
        target_layers: Layer indices whose vectors are cached.
        mlp: Cache the MLP sub-block's vectors.
        attn: Cache the attention sub-block's vectors.
        updates: Cache the updates the sub-blocks add.
        stream: Cache the residual stream after each sub-block.

    Examples:
        >>> from modeopt_masks.probing import ResidualUpdateModelConfig
        >>> ResidualUpdateModelConfig(target_layers=[0, 2], attn=False).vector_names()
        ['mlp_update_0', 'mlp_update_2']
    """

    model_config = ConfigDict(frozen=True)

    model_type: str | None = None
    target_layers: list[int]
    mlp: bool = True
    attn: bool = True
    updates: bool = True
    stream: bool = False

    @field_validator("target_layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("target_layers must name at least one layer index")
        if any(i < 0 for i in v):
            raise ValueError(f"target_layers must be non-negative layer indices, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _something(self) -> ResidualUpdateModelConfig:
        if not (self.mlp or self.attn):
            raise ValueError("choose at least one of attn=True, mlp=True")
        if not (self.updates or self.stream):
            raise ValueError("choose at least one of updates=True, stream=True")
        return self

    def vector_names(self) -> list[str]:
        """The ``vector_cache`` keys one forward produces."""
        blocks = [b for b, on in (("attn", self.attn), ("mlp", self.mlp)) if on]
        kinds = [k for k, on in (("update", self.updates), ("stream", self.stream)) if on]
        return [f"{b}_{k}_{i}" for i in self.target_layers for b in blocks for k in kinds]


def find_model_type(model: nn.Module) -> str:
    """The HF ``config.model_type`` of ``model`` or of the first submodule that has one."""
    for module in model.modules():
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(model_type, str) and model_type:
            return model_type
    raise ValueError(
        "cannot detect the model type (no submodule has config.model_type); pass model_type="
        "one of bert, mpnet, gpt2, gpt_neox, llama, vit"
    )


def find_layers(model: nn.Module, layout: ResidualLayout) -> tuple[str, nn.ModuleList]:
    """The (shallowest) ``nn.ModuleList`` of transformer layers named by ``layout.layers``."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and any(name == s or name.endswith("." + s) for s in layout.layers)
    ]
    if not found:
        lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
        raise ValueError(
            f"no layer list {list(layout.layers)} for family {layout.family!r} in this model "
            f"(module lists: {lists}); is model_type right?"
        )
    return min(found, key=lambda item: item[0].count("."))


def select_layout(model: nn.Module, model_type: str) -> ResidualLayout:
    """The first of [`layout_candidates`][modeopt_masks.probing.residual_layouts.layout_candidates] whose layers and hook points exist in ``model``.

    When none fits, the transformers 5 layout is returned (the errors then name what is missing).

    Args:
        model: The model.
        model_type: A family or HF ``model_type``.

    Returns:
        The fitting [`ResidualLayout`][modeopt_masks.structured.families.ResidualLayout].

    Examples:
        >>> import transformers
        >>> from modeopt_masks.probing import select_layout
        >>> vit = transformers.ViTModel(transformers.ViTConfig(
        ...     hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...     image_size=8, patch_size=4, num_channels=1))
        >>> layout = select_layout(vit, "vit")  # 5.x: ``layers``; 4.x: ``encoder.layer``
        >>> (layout.family, layout.layers[0] in ("layers", "encoder.layer"))
        ('vit', True)
    """
    try:
        candidates = layout_candidates(model_type)
    except ValueError:  # not a known model type: a Llama-like decoder is recognised by its modules
        found = _structural(model)
        if found is None:
            raise
        return found
    for layout in candidates:
        try:
            _, layers = find_layers(model, layout)
        except ValueError:
            continue
        if len(layers) and all(_has(layers[0], p.path) for p in layout.hook_points()):
            return layout
    return candidates[0]


def _structural(model: nn.Module) -> ResidualLayout | None:
    """The structural family layout of the first ``layers`` list of ``model``, if any fits."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers" and len(module):
            return structural_layout(module[0])
    return None


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class ResidualUpdateModel(nn.Module):
    """Wraps ``model`` and caches residual updates/streams of ``config.target_layers``.

    Mirrors NeuroSurgeon's ``ResidualUpdateModel``: ``wrapped_model``,
    ``vector_cache``, ``hooks``. ``forward`` clears the cache and calls the
    wrapped model; the hooks also fire when the model is called directly.
    ``remove_hooks()`` removes them (nothing is cached afterwards),
    ``add_hooks()`` puts them back, ``with rum.disabled():`` pauses them.

    Args:
        config: A [`ResidualUpdateModelConfig`][modeopt_masks.probing.residual_update_model.ResidualUpdateModelConfig]
            or its fields as a dict.
        model: The model to hook (not modified otherwise).

    Examples:
        >>> import torch, transformers
        >>> from modeopt_masks.probing import ResidualUpdateModel, ResidualUpdateModelConfig
        >>> bert = transformers.BertModel(transformers.BertConfig(
        ...     hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...     intermediate_size=64, vocab_size=50)).eval()
        >>> rum = ResidualUpdateModel(ResidualUpdateModelConfig(target_layers=[1], stream=True), bert)
        >>> out = rum(input_ids=torch.tensor([[1, 2, 3]]))
        >>> torch.equal(rum.vector_cache["mlp_stream_1"], out.last_hidden_state)
        True
    """

    def __init__(self, config: ResidualUpdateModelConfig | dict, model: nn.Module) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ResidualUpdateModelConfig.model_validate(config)
        self.config = config
        self.wrapped_model = model
        self.layout = select_layout(model, config.model_type or find_model_type(model))
        self.layers_name, layers = find_layers(model, self.layout)
        bad = [i for i in config.target_layers if i >= len(layers)]
        if bad:
            raise ValueError(
                f"target_layers {bad} out of range: the model has {len(layers)} layers "
                f"(0..{len(layers) - 1})"
            )
        for i in config.target_layers:
            self._check_layer(i, layers[i])
        self.vector_cache: dict[str, torch.Tensor] = {}
        #: per target layer: the layer input and hook call counts of the running forward
        self._layer_state: dict[int, dict[str, Any]] = {}
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._enabled = True
        self.add_hooks()

    # -- hooks ----------------------------------------------------------------------------
    def _layers(self) -> nn.ModuleList:
        return self.wrapped_model.get_submodule(self.layers_name)  # type: ignore[return-value]

    def _check_layer(self, index: int, layer: nn.Module) -> None:
        chunk = getattr(getattr(self.wrapped_model, "config", None), "chunk_size_feed_forward", 0)
        if self.layout.post_ln and chunk:
            raise ValueError("chunk_size_feed_forward > 0 calls the MLP per chunk; set it to 0")
        for point in self.layout.hook_points():
            try:
                layer.get_submodule(point.path)
            except AttributeError:
                children = [n for n, _ in layer.named_modules() if n]
                raise ValueError(
                    f"layer {index} ({type(layer).__name__}) has no submodule {point.path!r} "
                    f"expected for family {self.layout.family!r}; "
                    f"its submodules: {children}"
                ) from None

    def add_hooks(self) -> None:
        """Register the hooks (a no-op if they are registered already)."""
        if self.hooks:
            return
        cfg, lay = self.config, self.layout
        for i in cfg.target_layers:
            layer = self._layers()[i]
            self._layer_state[i] = {}
            self.hooks.append(
                layer.register_forward_pre_hook(_LayerStart(self, i), with_kwargs=True)
            )
            wanted: dict[str, HookPoint | None] = {}
            if cfg.attn:
                if cfg.updates or (cfg.stream and lay.attn_stream is None):
                    wanted[f"attn_update_{i}"] = lay.attn_update
                if cfg.stream:
                    wanted[f"attn_stream_{i}"] = lay.attn_stream  # None: input + update
            if cfg.mlp:
                if cfg.updates:
                    wanted[f"mlp_update_{i}"] = lay.mlp_update
                if cfg.stream:
                    wanted[f"mlp_stream_{i}"] = lay.mlp_stream
            keep = set(cfg.vector_names())
            by_module: dict[str, list[tuple[str, HookPoint]]] = {}
            for key, point in wanted.items():
                if point is not None:
                    by_module.setdefault(point.path, []).append((key, point))
            for path, points in by_module.items():
                module = layer.get_submodule(path)
                scale = float(getattr(layer, lay.scale)) if lay.scale else None
                hook = _Capture(self, i, path, points, keep, scale)
                self.hooks.append(module.register_forward_hook(hook))

    def remove_hooks(self) -> None:
        """Remove every hook and clear the cache; the model computes as if never wrapped."""
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
        self.vector_cache = {}
        self._layer_state = {}

    @property
    def enabled(self) -> bool:
        """Whether the hooks are registered and not paused."""
        return bool(self.hooks) and self._enabled

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Pause caching inside a ``with`` block (the hooks stay registered)."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    # -- nn.Module --------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Clear ``vector_cache`` and run the wrapped model."""
        self.vector_cache = {}
        return self.wrapped_model(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle: the hooks are module-level callables holding this object, so the
        # copy's hooks cache into the copy. Cached vectors (and the layer inputs kept between
        # hooks) are activations of a past forward, usually non-leaf tensors that cannot be
        # deep-copied: the copy starts with an empty cache.
        state = super().__getstate__()  # type: ignore[misc]
        state["vector_cache"] = {}
        state["_layer_state"] = {i: {} for i in self._layer_state}
        return state


class _LayerStart:
    """Forward pre-hook of a target layer: remembers its input, resets the call counts.

    A class, not a closure, so that the wrapped model pickles and deep-copies with its hooks.
    """

    def __init__(self, owner: ResidualUpdateModel, index: int) -> None:
        self.owner, self.index = owner, index

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self.owner._layer_state.setdefault(self.index, {})
        state.clear()
        if self.owner._enabled:
            state["input"] = args[0] if args else kwargs.get("hidden_states")
            state["calls"] = {}


class _Capture:
    """Forward hook of one submodule of a target layer: caches the vectors it produces."""

    def __init__(
        self,
        owner: ResidualUpdateModel,
        index: int,
        path: str,
        points: list[tuple[str, HookPoint]],
        keep: set[str],
        scale: float | None = None,
    ) -> None:
        self.owner, self.index, self.path, self.points, self.keep = owner, index, path, points, keep
        #: the layer multiplies its updates by this before adding them (Granite)
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        owner, index, path = self.owner, self.index, self.path
        state = owner._layer_state.get(index, {})
        if not owner._enabled or "calls" not in state:
            return
        call = state["calls"][path] = state["calls"].get(path, -1) + 1
        for key, point in self.points:
            if point.call != call:
                continue
            value = _first(output)
            if self.scale is not None and "_update_" in key:
                value = value * self.scale
            if key in self.keep:
                owner.vector_cache[key] = value
            if (key == f"attn_update_{index}" and owner.config.stream
                    and owner.layout.attn_stream is None):
                # pre-LN: the stream after attention is the layer input plus the update
                owner.vector_cache[f"attn_stream_{index}"] = state["input"] + value

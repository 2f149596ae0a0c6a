"""``TinyTransformer``: a plain pre-norm transformer for ground-truth circuits (Tracr, induction).

Attention-only when ``d_mlp == 0``; no layer norms when ``norm=False`` (Tracr's
compiled models have none); the norms are then ``nn.Identity`` so that the same
hook points exist in every configuration. Heads, q/k/v/o projections and the
layer list follow the Llama naming (``layers.N.self_attn.q_proj`` ...), which
is what [`EdgeMaskedModel`][modeopt_masks.circuits.edges.EdgeMaskedModel] reads.

Examples:
    >>> import torch
    >>> from modeopt_masks.circuits import TinyTransformer, TinyTransformerConfig
    >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=10, d_model=16, n_layers=2,
    ...                                              n_heads=2, d_head=4, d_mlp=0, max_len=8))
    >>> tuple(net(torch.tensor([[1, 2, 3]])).shape)
    (1, 3, 10)
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from pydantic import Field

from ..rules import StrictModel


class TinyTransformerConfig(StrictModel):
    """Sizes of a [`TinyTransformer`][modeopt_masks.circuits.tiny_transformer.TinyTransformer] (``d_mlp=0``: attention only).

    ``attn_scale`` multiplies the attention logits after the usual ``1/sqrt(d_head)``
    (``None`` for the usual scale); Tracr's compiled heads need ``1.0`` without it
    (see ``scaled``). ``n_out`` is the unembedding width (defaults to ``vocab_size``).

    Attributes:
        vocab_size: Number of input tokens.
        d_model: Residual width.
        n_layers: Number of blocks.
        n_heads: Attention heads per block.
        d_head: Width of one head.
        d_mlp: MLP width (0: attention only).
        max_len: Longest input (position embeddings).
        norm: Use layer norms.
        causal: Causal attention.
        scaled: Scale attention logits by ``1/sqrt(d_head)``.
        n_out: Unembedding width (``None``: ``vocab_size``).
        unembed_bias: Give the unembedding a bias.

    Examples:
        >>> from modeopt_masks.circuits import TinyTransformerConfig
        >>> TinyTransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, d_head=4).d_mlp
        0
    """

    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    d_head: int = Field(gt=0)
    d_mlp: int = Field(0, ge=0)
    max_len: int = Field(64, gt=0)
    norm: bool = True
    causal: bool = True
    scaled: bool = True
    n_out: int | None = None
    unembed_bias: bool = False


class TinyAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections (Llama names)."""

    def __init__(self, cfg: TinyTransformerConfig) -> None:
        super().__init__()
        self.num_heads = self.num_key_value_heads = cfg.n_heads
        self.head_dim = cfg.d_head
        inner = cfg.n_heads * cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, inner)
        self.k_proj = nn.Linear(cfg.d_model, inner)
        self.v_proj = nn.Linear(cfg.d_model, inner)
        self.o_proj = nn.Linear(inner, cfg.d_model)
        self.causal, self.scaled = cfg.causal, cfg.scaled
        self.last_pattern: torch.Tensor | None = None  # [batch, head, query, key] of the last call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, h, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)
        if self.scaled:
            scores = scores / d**0.5
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        pattern = scores.softmax(-1)
        self.last_pattern = pattern.detach()
        z = (pattern @ v).transpose(1, 2).reshape(b, t, h * d)
        return self.o_proj(z)


class TinyBlock(nn.Module):
    """``x + attn(norm1(x))`` then, with an MLP, ``+ mlp(norm2(.))``."""

    def __init__(self, cfg: TinyTransformerConfig) -> None:
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.norm else nn.Identity
        self.input_layernorm = norm()
        self.self_attn = TinyAttention(cfg)
        self.post_attention_layernorm = norm()
        self.mlp: nn.Sequential | None = None
        if cfg.d_mlp:
            self.mlp = nn.Sequential(
                nn.Linear(cfg.d_model, cfg.d_mlp), nn.ReLU(), nn.Linear(cfg.d_mlp, cfg.d_model)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, final norm, unembedding.

    Args:
        cfg: Its sizes and options.
    """

    def __init__(self, cfg: TinyTransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_positions = nn.Embedding(cfg.max_len, cfg.d_model)
        self.layers = nn.ModuleList([TinyBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.n_out or cfg.vocab_size, bias=cfg.unembed_bias)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config with the weights, so that ``load`` restates no sizes.

        Examples:
            >>> import tempfile, torch
            >>> from modeopt_masks.circuits import TinyTransformer, TinyTransformerConfig
            >>> net = TinyTransformer(TinyTransformerConfig(vocab_size=5, d_model=8, n_layers=1,
            ...                                              n_heads=2, d_head=4)).eval()
            >>> path = tempfile.mkdtemp() + "/tiny.pt"
            >>> net.save(path)
            >>> ids = torch.tensor([[1, 2]])
            >>> torch.equal(TinyTransformer.load(path)(ids), net(ids))
            True
        """
        torch.save({"config": self.config.model_dump(), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TinyTransformer:
        """The model ``save`` wrote, in eval mode (weights only: no code is unpickled)."""
        saved = torch.load(path, weights_only=True)
        net = cls(TinyTransformerConfig(**saved["config"]))
        net.load_state_dict(saved["state_dict"])
        return net.eval()

    def blocks(self) -> list[TinyBlock]:
        """The layers, typed."""
        return list(self.layers)  # type: ignore[arg-type]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, n_out]``."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(pos)
        for layer in self.layers:
            x = layer(x)
        return self.unembed(self.norm(x))

"""Attention-pooling probe over patch tokens: transformer blocks, a learned query, a linear classifier."""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.layers import AttentionPoolLatent
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import ConfigError
from .linear import float32_logits

__all__ = ["AttentionPoolHead", "default_num_heads"]


def default_num_heads(width: int) -> int:
    """``width // 64`` attention heads, at least one, lowered until it divides ``width``."""
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


class AttentionPoolHead(nn.Module):
    """Classify frozen patch tokens ``[B, T, D]`` by attention pooling.

    Tokens (float16 from the cache, cast to float32) are projected ``D -> width`` (default ``min(D, 256)``,
    so a grid of heads over ViT-L tokens stays cheap; no projection when ``width == D``) and normalized;
    a learned query cross-attends to them, followed by an MLP on the pooled vector (timm's
    :class:`~timm.layers.AttentionPoolLatent`, SigLIP's MAP head), and a LayerNorm + linear layer map the
    pooled vector to ``num_outputs`` logits. ``num_heads`` defaults to :func:`default_num_heads`.

    ``depth`` timm ViT :class:`~timm.models.vision_transformer.Block` s of self-attention over the tokens
    may come before the pooling. The default is none (``depth=0``): the pooling alone is the attentive
    probe of SigLIP, AIM and V-JEPA (whose probe's one block is this cross-attention), and Psomas et al.
    (*Attention, Please! Revisiting Attentive Probing*, 2025) report lighter attentive probes matching
    heavier ones on frozen tokens. A self-attention block costs about six times the pooling per token (12 vs 2 matmuls of
    ``width^2``), which a grid of probes pays in every cell. (Until 2026-12-07 the default was ``depth=1``.)

    Example:
        >>> head = AttentionPoolHead(384, 9)
        >>> head(torch.zeros(4, 256, 384, dtype=torch.float16)).shape
        torch.Size([4, 9])
    """

    input_key: ClassVar[str] = "tokens"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        num_outputs: int,
        *,
        width: int | None = None,
        depth: int = 0,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        width = width or min(dim, 256)
        num_heads = num_heads or default_num_heads(width)
        _check_args(width, depth, num_heads)
        self.proj = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.norm_in = nn.LayerNorm(width)
        self.blocks = nn.Sequential(
            *[Block(width, num_heads, mlp_ratio, qkv_bias=True, proj_drop=drop) for _ in range(depth)]
        )
        self.pool = AttentionPoolLatent(
            width, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm, drop=drop
        )
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(self.proj(tokens.float()))
        x = self.pool(self.blocks(x))
        return float32_logits(self.fc, self.norm(x))


def _check_args(width: int, depth: int, num_heads: int) -> None:
    if depth < 0:
        raise ConfigError(f"attention head depth must be >= 0, got {depth}")
    if width < 1 or width % num_heads:
        raise ConfigError(
            f"attention head width {width} must be positive and divisible by num_heads={num_heads}; "
            f"pick num_heads among the divisors of {width} (default: {default_num_heads(max(width, 1))})"
        )

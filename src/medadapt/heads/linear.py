"""Linear probe on the global embedding."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

__all__ = ["LinearHead", "float32_logits"]


class LinearHead(nn.Module):
    """``nn.Linear`` on the global embedding ``[B, D]``, with an optional fixed standardization.

    :meth:`standardize_with` stores the per-feature mean and std of the *train* embeddings as buffers, so the
    head sees zero-mean, unit-variance inputs (a BatchNorm-free whitening that makes one LR grid fit
    backbones whose feature scales differ by orders of magnitude). The buffers travel with the state dict;
    until it is called the head is a plain linear layer.

    Example:
        >>> head = LinearHead(384, 2)
        >>> head(torch.zeros(8, 384)).shape
        torch.Size([8, 2])
    """

    input_key: ClassVar[str] = "embeddings"
    outputs: ClassVar[str] = "logits"
    trainable: ClassVar[bool] = True

    def __init__(self, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.fc = nn.Linear(dim, num_outputs)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    @torch.no_grad()
    def standardize_with(self, embeddings: np.ndarray) -> LinearHead:
        """Fix the input standardization to the statistics of ``embeddings`` ``[N, D]`` (train features)."""
        x = torch.tensor(np.asarray(embeddings, dtype=np.float32))  # a copy: inputs may be read-only
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_logits(self.fc, (x.float() - self.mean) / self.std)


def float32_logits(fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``fc(x)`` in float32 even under autocast.

    bf16 logits keep 8 bits of mantissa (a step of 1/32 for logits between 4 and 8), so images the model
    ranks apart can get the same score, and AUC counts such pairs as half right; the head's one small
    matrix product costs nothing in float32. (Scores within about 1e-7 of 0 or 1 still tie in float32, as
    in the official MedMNIST evaluation.)
    """
    with torch.autocast(x.device.type, enabled=False):
        return fc(x.float())

"""Weighted k-nearest-neighbour classifier on L2-normalized embeddings (DINOv2's kNN evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["KNNHead", "knn_scores"]


class KNNHead(nn.Module):
    """Cosine kNN: each of the ``k`` nearest train embeddings votes with weight ``exp(sim / temperature)``.

    The output is a probability-like score matrix ``[B, C]``: the normalized weighted vote over one-hot
    class targets (multi-class) or the weighted average of the neighbours' 0/1 labels (multi-label). Call
    :meth:`fit` with the train embeddings and a target matrix ``[N, C]`` first; the bank is kept in buffers.

    Example:
        >>> head = KNNHead(8, 2, k=3).fit(np.eye(4, 8), np.eye(2)[[0, 0, 1, 1]])
        >>> head(torch.eye(4, 8)).shape
        torch.Size([4, 2])
    """

    input_key: ClassVar[str] = "embeddings"
    outputs: ClassVar[str] = "scores"
    trainable: ClassVar[bool] = False

    def __init__(self, dim: int, num_outputs: int, *, k: int = 20, temperature: float = 0.07) -> None:
        super().__init__()
        if k < 1 or temperature <= 0:
            raise ConfigError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.k, self.temperature = k, temperature
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("targets", torch.zeros(0, num_outputs))

    def fit(self, embeddings: np.ndarray, targets: np.ndarray) -> KNNHead:
        """Store L2-normalized ``embeddings`` ``[N, D]`` and float ``targets`` ``[N, C]`` as the neighbour bank."""
        x = torch.tensor(np.asarray(embeddings, dtype=np.float32))  # a copy: inputs may be read-only
        self.bank = F.normalize(x, dim=1).to(self.bank.device)
        self.targets = torch.tensor(np.asarray(targets, dtype=np.float32)).to(self.bank.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # similarities need float32
            scores = knn_scores(x, self.bank, self.targets, ks=(self.k,), temperature=self.temperature)
        return scores[self.k]


@torch.no_grad()
def knn_scores(
    queries: torch.Tensor,
    bank: torch.Tensor,
    targets: torch.Tensor,
    *,
    ks: Sequence[int],
    temperature: float = 0.07,
    max_elements: int = 2**24,
) -> dict[int, torch.Tensor]:
    """Scores ``[B, C]`` for every ``k`` in ``ks`` from one neighbour search.

    ``bank`` must be L2-normalized; ``queries`` are normalized here. Queries go in chunks so that the
    similarity block holds at most ``max_elements`` values (64 MiB in float32). A ``k`` larger than the
    bank uses the whole bank.
    """
    if len(bank) == 0:
        raise ConfigError("the kNN bank is empty; call KNNHead.fit(train_embeddings, targets) first")
    k_max = min(max(ks), len(bank))
    rows = max(1, max_elements // len(bank))
    known = ~torch.isnan(targets)  # multilabel: nan marks an unknown label, which casts no vote
    values = targets.nan_to_num(0.0)
    # a label none of the k neighbours knows gets the bank's rate of that label (0.5 if nobody knows it)
    prior = (values.sum(0) / known.sum(0)).nan_to_num(0.5)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for chunk in torch.split(queries.to(bank.device, torch.float32), rows):
        sims, idx = (F.normalize(chunk, dim=1) @ bank.T).topk(k_max, dim=1)
        weights = ((sims - sims[:, :1]) / temperature).exp()[..., None]  # shifted by the top: no overflow
        votes, voters = weights * values[idx], weights * known[idx]  # [b, k_max, C], sorted by similarity
        for k in ks:
            kk = min(k, k_max)
            total = voters[:, :kk].sum(1)
            score = torch.where(total > 0, votes[:, :kk].sum(1) / total.clamp_min(1e-30), prior)
            out[k].append(score.clamp_(0, 1))
    return {k: torch.cat(parts) for k, parts in out.items()}

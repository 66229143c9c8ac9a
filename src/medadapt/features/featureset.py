"""Cached frozen features of one split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureSet"]


@dataclass
class FeatureSet:
    """Frozen features of one split, row-aligned with the dataset.

    ``embeddings`` is ``[N, D]`` float32 in memory; ``tokens`` is ``[N, T, D]`` float16, usually a read-only
    ``np.memmap`` so that attention probes over patch tokens stay within bounded memory; ``None`` when
    tokens were not extracted. ``labels`` follows the dataset layout (``[N, 1]`` or ``[N, L]``).

    ``levels`` (extracted with ``extract_features(..., levels=k)``, for the ``multiscale`` segmentation
    head): ``k`` pairs ``(tokens [N, T_i, D_i] float16, usually memory-mapped, grid_i)`` from the input to
    the output of the backbone; the last pair is ``(tokens, grid)``. ``None`` when not extracted.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    tokens: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    levels: list[tuple[np.ndarray, tuple[int, int]]] | None = None

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        assert len(self.labels) == n, (len(self.labels), n)
        assert self.tokens is None or len(self.tokens) == n, (len(self.tokens), n)
        for tokens, grid in self.levels or ():
            assert len(tokens) == n and tokens.shape[1] == grid[0] * grid[1], (tokens.shape, grid, n)

    def __len__(self) -> int:
        return len(self.embeddings)

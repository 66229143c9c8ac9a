"""Helpers shared by the training benchmarks: clocks, the model a run builds, and hooks that time ``fit``.

``fit`` is timed from the outside without changing it: a ``progress`` callback stamps the end of every
epoch, and :class:`EvalClock` wraps ``medadapt.training.loop.evaluate`` (the per-epoch validation pass) while
active, so the training part of an epoch is *end of the previous epoch -> start of its validation* and the
validation pass is measured on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

import medadapt.training.loop as loop
from medadapt._device import seeded
from medadapt.backbones import Backbone, create_backbone
from medadapt.data import MedicalDataset, Preprocess
from medadapt.strategies import build_classifier


class Seconds(NamedTuple):
    """A wall-clock and a process-CPU reading (or span): CPU time is what the work costs, whatever else runs."""

    wall: float
    cpu: float

    def __sub__(self, other: Seconds) -> Seconds:  # type: ignore[override]
        return Seconds(self.wall - other.wall, self.cpu - other.cpu)

    def __add__(self, other: Seconds) -> Seconds:  # type: ignore[override]
        return Seconds(self.wall + other.wall, self.cpu + other.cpu)


ZERO = Seconds(0.0, 0.0)


def now() -> Seconds:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return Seconds(time.perf_counter(), time.process_time())


def total(spans: list[Seconds]) -> Seconds:
    out = ZERO
    for span in spans:
        out = out + span
    return out


def build_model(
    address: str,
    *,
    img_size: int,
    data_chans: int,
    num_outputs: int,
    channel_mode: str = "sum",
    interpolation: str = "bicubic",
    seed: int = 0,
) -> tuple[nn.Module, Backbone, Preprocess]:
    """``create_backbone`` (random init) + ``build_classifier(linear)`` under ``seed``, and the preprocessing
    derived from the backbone's spec, as ``medadapt.api`` builds them for a fine-tuning run."""
    with seeded(seed):
        backbone = create_backbone(
            address, pretrained=False, img_size=img_size, data_chans=data_chans, channel_mode=channel_mode
        )
        model = build_classifier(backbone, "linear", num_outputs)
    preprocess = Preprocess.for_backbone(backbone.spec, (img_size, img_size), interpolation=interpolation)
    return model, backbone, preprocess


def stacked_images(ds: MedicalDataset) -> torch.Tensor:
    """The whole split as one uint8 ``[N, C, H, W]`` tensor (what a hand-written loop slices batches from)."""
    return torch.stack([ds.image(i) for i in range(len(ds))])


class EvalClock:
    """While active, times every call of ``medadapt.training.loop.evaluate`` (fit's validation pass).

    ``probe`` (optional) is called as each validation starts, i.e. right after the epoch's training part;
    its values are kept in ``probed`` (e.g. the peak memory of the training steps).
    """

    def __init__(self, probe: Callable[[], float] | None = None) -> None:
        self.starts: list[Seconds] = []
        self.spans: list[Seconds] = []
        self.probe, self.probed = probe, []
        self._original = loop.evaluate

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        if self.probe is not None:
            self.probed.append(self.probe())
        t0 = now()
        self.starts.append(t0)
        out = self._original(*args, **kwargs)
        self.spans.append(now() - t0)
        return out

    def __enter__(self) -> EvalClock:
        self.starts, self.spans, self.probed = [], [], []
        loop.evaluate = self
        return self

    def __exit__(self, *exc: object) -> None:
        loop.evaluate = self._original


class EpochClock:
    """A ``fit`` progress callback: stamps the end of every epoch (after its validation and checkpoint)."""

    def __init__(self) -> None:
        self.start = now()
        self.ends: list[Seconds] = []
        self.records: list[dict[str, Any]] = []

    def __call__(self, epoch: int, epochs: int, record: dict[str, Any]) -> None:
        self.ends.append(now())
        self.records.append(record)

    def epochs(self) -> list[Seconds]:
        """Whole epochs: end of the previous epoch (or of the clock's start) to the end of this one."""
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]

    def train_parts(self, evals: EvalClock) -> list[Seconds]:
        """Training part of each epoch: end of the previous epoch -> start of this epoch's validation.

        Needs one validation per epoch (``eval_every=1``), as fit does by default.
        """
        if len(evals.starts) != len(self.ends):
            raise RuntimeError(f"{len(evals.starts)} validations for {len(self.ends)} epochs")
        marks = [self.start, *self.ends[:-1]]
        return [s - m for m, s in zip(marks, evals.starts)]

"""The frozen teacher: one saved classifier or an ensemble of them, giving logits for a batch or a dataset.

A teacher is built from saved-model folders (see :mod:`medadapt.saved`): a probe or fine-tune run directory
holds one per seed (and arm), and every model found under the given paths joins the teacher. Several
models form an ensemble whose prediction is the mean of their probabilities, returned as logits
(``log mean softmax``, or ``logit(mean sigmoid)`` per label), so the distillation loss treats one model and
an ensemble alike.

Teacher logits of a whole split go through the feature cache: each member's backbone features come from
:func:`~medadapt.features.extract_features` (computed once per backbone, preprocessing and dataset, then
read from disk), and only the small head runs again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._device import autocast_context
from ..data.base import MedicalDataset
from ..data.transforms import Preprocess
from ..errors import ConfigError
from ..features import extract_features
from ..features.cache import state_digest
from ..saved import ModelInfo, find_saved, load_classifier, read_info
from ..tasks import get_task

__all__ = ["Teacher", "TeacherMember", "combine_logits"]


@dataclass
class TeacherMember:
    """One frozen classifier of a teacher, its preprocessing and where it was loaded from."""

    model: nn.Module
    preprocess: Preprocess
    info: ModelInfo
    source: str


class Teacher:
    """A frozen classifier, or an ensemble of them, that gives soft targets.

    Example:
        >>> teacher = Teacher.from_paths(["runs/medmnist_v2_breast"])  # doctest: +SKIP
        >>> teacher.dataset_logits(train_ds).shape  # doctest: +SKIP
        torch.Size([546, 2])
    """

    def __init__(self, members: Sequence[TeacherMember]) -> None:
        if not members:
            raise ConfigError("a teacher needs at least one model")
        first = members[0].info
        for m in members[1:]:
            if (m.info.task, m.info.num_outputs) != (first.task, first.num_outputs):
                raise ConfigError(
                    f"teacher models disagree: {members[0].source} is {first.task} with {first.num_outputs} "
                    f"outputs, {m.source} is {m.info.task} with {m.info.num_outputs}; an ensemble needs one task"
                )
        self.members = list(members)
        self.task, self.num_outputs = first.task, first.num_outputs
        for m in self.members:
            m.model.eval().requires_grad_(False)

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], *, seed: int | None = None) -> Teacher:
        """Every saved model at or under ``paths`` (run directories or model folders) as one teacher.

        With ``seed``, only the models trained with that seed (``model.json``'s ``seed``) join.
        """
        folders: list[Path] = []
        for path in paths:
            found = find_saved(path)
            if not found:
                raise ConfigError(
                    f"no saved model at or under {str(path)!r}: a teacher is a probe / finetune run directory "
                    "(each seed folder holds model.json + model.safetensors) or a backbone address such as "
                    "timm:vit_base_patch14_dinov2.lvd142m, whose linear probe is then trained first"
                )
            folders += found
        if seed is not None:  # read the descriptions only; build just the models of this seed
            seeds = {f: read_info(f).seed for f in folders}
            folders = [f for f in folders if seeds[f] == seed]
            if not folders:
                raise ConfigError(
                    f"no teacher model of seed {seed} under {[str(p) for p in paths]} (their seeds: "
                    f"{sorted(set(seeds.values()), key=str)}); run the teacher with that seed, or use "
                    "--teacher-pairing ensemble"
                )
        members = []
        for folder in folders:
            model, preprocess, info = load_classifier(folder)
            members.append(TeacherMember(model, preprocess, info, str(folder)))
        return cls(members)

    def describe(self) -> str:
        """One line: the members' backbones and heads, and where they came from."""
        kinds = sorted({f"{m.info.backbone} + {m.info.head}" for m in self.members})
        size = f"ensemble of {len(self.members)}" if len(self.members) > 1 else "single model"
        return f"{size}: {', '.join(kinds)}"

    def check_dataset(self, ds: MedicalDataset) -> None:
        if (ds.task, ds.num_outputs) != (self.task, self.num_outputs):
            raise ConfigError(
                f"the teacher ({self.describe()}) is a {self.task} model with {self.num_outputs} outputs, "
                f"but {ds.name} is {ds.task} with {ds.num_outputs}: train the teacher on the same labels"
            )
        classes = [str(c) for c in ds.classes]
        for m in self.members:  # same count, other meaning (another dataset's classes) is as wrong
            if m.info.classes is not None and [str(c) for c in m.info.classes] != classes:
                raise ConfigError(
                    f"the teacher {m.source} was trained on the classes {list(m.info.classes)}, but {ds.name} "
                    f"has {list(ds.classes)}: train the teacher on the same labels"
                )

    def to(self, device: torch.device | str) -> Teacher:
        for m in self.members:
            m.model.to(device)
        return self

    def digest(self) -> str:
        """Identifies the teacher's weights and preprocessing (part of a distillation run's fingerprint)."""
        h = hashlib.sha256()
        for m in self.members:
            h.update(state_digest(m.model).encode())
            h.update(repr(m.preprocess).encode())
        return h.hexdigest()

    @torch.no_grad()
    def logits(self, images: torch.Tensor, *, autocast: bool = True) -> torch.Tensor:
        """Float32 logits ``[B, C]`` of raw (or augmented) ``images``, each member with its own preprocessing."""
        outs = []
        for m in self.members:
            with autocast_context(images.device, autocast):
                outs.append(m.model(m.preprocess(images)).float())
        return combine_logits(outs, self.task)

    @torch.no_grad()
    def dataset_logits(
        self,
        ds: MedicalDataset,
        *,
        cache_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        autocast: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Float32 logits ``[N, C]`` of the whole (un-augmented) dataset, and the first member's embeddings.

        Backbone features come from the feature cache; the heads run on them.
        """
        self.check_dataset(ds)
        outs, embeddings = [], None
        for m in self.members:
            head = m.model.head
            needs_tokens = getattr(head, "input_key", "embeddings") == "tokens"
            fs = extract_features(m.model.backbone, ds, m.preprocess, cache_dir=cache_dir, with_tokens=needs_tokens,
                                  batch_size=batch_size, device=device, autocast=autocast,
                                  num_workers=num_workers)  # fmt: skip
            x = fs.tokens if needs_tokens else fs.embeddings
            head.to(device)
            chunks = []
            for i in range(0, len(x), 1024):
                xb = torch.as_tensor(np.asarray(x[i : i + 1024], dtype=np.float32), device=device)
                chunks.append(head(xb).float().cpu())
            outs.append(torch.cat(chunks) if chunks else torch.zeros(0, self.num_outputs))
            if embeddings is None:
                embeddings = np.asarray(fs.embeddings, dtype=np.float32)
        return combine_logits(outs, self.task), embeddings


def combine_logits(logits: Sequence[torch.Tensor], task: str) -> torch.Tensor:
    """One model's logits as they are; several: the mean of their probabilities, as logits.

    Softmax tasks: ``log(mean_i softmax(z_i))`` (a valid logit vector: softmax of it is the mean). Multi-label:
    ``logit(mean_i sigmoid(z_i))`` per label, computed in log space so confident members do not overflow.
    """
    if len(logits) == 1:
        return logits[0]
    return get_task(task).mean_logits(torch.stack([x.float() for x in logits]))

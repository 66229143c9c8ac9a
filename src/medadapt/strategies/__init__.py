"""Strategies: how a classifier (backbone + head) is trained, as registered plug-ins.

``create_strategy(name, **options)`` builds one; ``strategy.configure(model, lr=..., weight_decay=...)``
freezes / wraps the model and returns the optimizer groups (see :mod:`.base` for the contract).

=================  ========================================================================================
``frozen``         backbone frozen, the head (linear or attention probe) trains
``full``           everything trains at one LR
``scratch``        ``full`` from a random init
``differential``   a tiny encoder LR and a head LR (1e-7 / 1e-4 at ``lr=1e-4``)
``llrd``           layer-wise LR decay over the backbone's layer groups
``unfreeze``       gradual unfreezing, top stage down, by time or on a plateau
``lora``           low-rank adapters (peft) on attention / MLP / conv layers
``ia3``            (IA)^3 scaling vectors (peft)
``ln_tune``        normalization layers + head
=================  ========================================================================================

Example:
    >>> from medadapt.strategies import STRATEGIES, create_strategy
    >>> create_strategy("llrd", decay=0.65)
    LayerDecay(decay=0.65)
"""

from . import finetune, peft, unfreeze  # noqa: F401 - registration
from .base import STRATEGIES, Strategy, create_strategy
from .finetune import Differential, Frozen, Full, LayerDecay, Scratch
from .model import NATIVE_HEAD, Classifier, Segmenter, build_classifier, build_model, build_segmenter
from .peft import IA3, LoRA, NormTune, merge_adapters, resolve_targets
from .unfreeze import GradualUnfreeze

__all__ = [
    "IA3",
    "STRATEGIES",
    "Classifier",
    "Differential",
    "Frozen",
    "Full",
    "GradualUnfreeze",
    "LayerDecay",
    "LoRA",
    "NormTune",
    "Scratch",
    "Strategy",
    "build_classifier",
    "build_model",
    "build_segmenter",
    "NATIVE_HEAD",
    "Segmenter",
    "create_strategy",
    "merge_adapters",
    "resolve_targets",
]

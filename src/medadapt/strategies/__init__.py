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

from .._lazy import lazy_exports
from ..heads import NATIVE_HEAD
from .base import STRATEGIES, Strategy, create_strategy

# The registrations, one line per strategy: lazy, so that the names (and a config naming one) are known
# without importing torch; a strategy's module is imported when it is built. Its class's ``name`` must be
# the registered name (tests/test_strategies.py checks it).
STRATEGIES.register_lazy("full", "medadapt.strategies.finetune:Full")
STRATEGIES.register_lazy("scratch", "medadapt.strategies.finetune:Scratch")
STRATEGIES.register_lazy("frozen", "medadapt.strategies.finetune:Frozen")
STRATEGIES.register_lazy("differential", "medadapt.strategies.finetune:Differential")
STRATEGIES.register_lazy("llrd", "medadapt.strategies.finetune:LayerDecay")
STRATEGIES.register_lazy("unfreeze", "medadapt.strategies.unfreeze:GradualUnfreeze")
STRATEGIES.register_lazy("lora", "medadapt.strategies.peft:LoRA")
STRATEGIES.register_lazy("ia3", "medadapt.strategies.peft:IA3")
STRATEGIES.register_lazy("ln_tune", "medadapt.strategies.peft:NormTune")

#: where the names exported here live (imported on first use)
_EXPORTS = {
    **dict.fromkeys(("Differential", "Frozen", "Full", "LayerDecay", "Scratch"), "finetune"),
    **dict.fromkeys(
        ("Classifier", "Segmenter", "build_classifier", "build_model", "build_segmenter"), "model"
    ),
    **dict.fromkeys(("IA3", "LoRA", "NormTune", "merge_adapters", "resolve_targets"), "peft"),
    "GradualUnfreeze": "unfreeze",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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

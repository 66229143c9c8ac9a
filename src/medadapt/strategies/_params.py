"""Shared machinery of the strategies: which parameters train, and their optimizer groups.

Every strategy ends in :func:`select`: all parameters are frozen, the chosen ones get ``requires_grad=True``
and are split into optimizer groups, each chosen parameter in exactly one group. Weight decay follows timm's
convention: none on biases, norm weights and other 1-D parameters, none on the names a module lists in its
``no_weight_decay()`` (timm's and open_clip's position embeddings and [CLS] tokens), and none on peft's
scaling vectors (IA3 ``ia3_l``, DoRA magnitudes), which are 2-D in shape but 1-D in meaning.

Parameters the classifier's output does not depend on never train (:func:`unreachable_names`): with an
attention head, which reads the patch tokens, a backbone's pooling-only parts (timm SigLIP's attention-pool
head, EVA02's ``fc_norm``, ConvNeXt's and Hiera's ``head.norm``) would otherwise count as trainable, sit in
the optimizer without ever getting a gradient, and carry adapters that cannot learn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # a strategy's options are checked without torch; its methods import it
    import torch
    from torch import nn

__all__ = [
    "backbone_names",
    "backbone_stages",
    "check_number",
    "check_training_args",
    "classifier_parts",
    "eval_frozen",
    "head_names",
    "no_weight_decay_names",
    "param_groups",
    "select",
    "unreachable_names",
]

log = logging.getLogger(__name__)

#: Parameter-name fragments of peft vectors that scale activations (initialised at 1): never decayed.
_NO_DECAY_FRAGMENTS = ("ia3_l.", "lora_magnitude_vector.")


def classifier_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` of a :class:`~medadapt.strategies.model.Classifier`-like model."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    from torch import nn

    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        raise ConfigError(
            f"strategies configure a classifier with .backbone and .head modules (build_classifier), "
            f"got {type(model).__name__}"
        )
    return backbone, head


def check_training_args(lr: float, weight_decay: float) -> None:
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")


def check_number(
    strategy: str, option: str, value: Any, *, low: float, high: float | None = None, integer: bool = False
) -> None:
    """Raise a :class:`ConfigError` naming ``strategy.option`` unless ``low <= value (<= high)``."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{strategy} option {option!r} must be {what} {bound}, got {value!r}")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of parameters that modules list in ``no_weight_decay()`` (timm / open_clip convention)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            try:
                listed = fn()
            except TypeError:  # a same-named attribute with another meaning
                continue
            names.update(f"{prefix}.{n}" if prefix else n for n in listed)
    return names


def _decays(name: str, ndim: int, skip: set[str]) -> bool:
    if ndim <= 1 or name.endswith(".bias") or name in skip:
        return False
    return not any(f in name for f in _NO_DECAY_FRAGMENTS)


def param_groups(
    model: nn.Module, names: Iterable[str], *, label: str, lr: float, weight_decay: float, skip: set[str]
) -> list[dict[str, Any]]:
    """Up to two groups (``label`` with decay, ``label_no_decay`` without) for the parameters ``names``."""
    params = dict(model.named_parameters())
    decay, no_decay = [], []
    for n in names:
        (decay if _decays(n, params[n].ndim, skip) else no_decay).append(params[n])
    groups = [
        {"name": label, "params": decay, "lr": lr, "weight_decay": weight_decay},
        {"name": f"{label}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def unreachable_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that the output of the classifier ``model`` does not depend on.

    Found by autograd, not by name: one forward of a zero image of the backbone's input size (eval mode,
    fp32, no backward pass), and every parameter that is not a leaf of the output's autograd graph is
    unreachable. The answer is cached on the model for its current set of parameter names (adapters change
    it). A model whose backbone has no ``spec`` (not built by medadapt) is taken as fully reachable.
    """
    params = dict(model.named_parameters())
    cached = model.__dict__.get("_medadapt_unreachable")
    if cached is not None and cached[0] == tuple(params):
        return set(cached[1])
    backbone, _ = classifier_parts(model)
    spec = getattr(backbone, "spec", None)
    if spec is None or not params:
        return set()
    import torch

    first = next(iter(params.values()))
    x = torch.zeros(1, spec.in_chans, *spec.input_size, device=first.device)
    flags = {n: p.requires_grad for n, p in params.items()}
    modes = {m: m.training for m in model.modules()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad(), torch.autocast(first.device.type, enabled=False):
            leaves = _graph_leaves(model(x))
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        for m, mode in modes.items():
            m.training = mode
    dead = {n for n, p in params.items() if id(p) not in leaves}
    model.__dict__["_medadapt_unreachable"] = (tuple(params), frozenset(dead))
    if dead:
        log.info("%d parameter tensors do not reach the output and never train: %s", len(dead),
                 sorted(dead)[:6] + (["..."] if len(dead) > 6 else []))  # fmt: skip
    return dead


def _graph_leaves(out: torch.Tensor) -> set[int]:
    """``id``s of the leaf tensors (parameters) the autograd graph of ``out`` accumulates gradients into.

    A walk over ``grad_fn`` to its ``AccumulateGrad`` nodes: what a backward pass would reach, without
    running one (no gradient memory, a third of the compute).
    """
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def select(
    model: nn.Module, parts: Sequence[tuple[str, Sequence[str], float]], *, weight_decay: float
) -> list[dict[str, Any]]:
    """Train exactly the parameters of ``parts`` (``(label, names, lr)`` each) and return their groups.

    All other parameters are frozen, and so are those the output does not depend on
    (:func:`unreachable_names`). A name must exist and appear in one part only.
    """
    params = dict(model.named_parameters())
    dead = unreachable_names(model)
    parts = [(label, [n for n in names if n not in dead], lr) for label, names, lr in parts]
    chosen = [n for _, names, _ in parts for n in names]
    unknown = sorted(set(chosen) - params.keys())
    assert not unknown, f"parameters not in the model: {unknown[:5]}"
    assert len(chosen) == len(set(chosen)), "a parameter is in two groups"
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        params[n].requires_grad_(True)
    skip = no_weight_decay_names(model)
    groups: list[dict[str, Any]] = []
    for label, names, lr in parts:
        groups += param_groups(model, names, label=label, lr=lr, weight_decay=weight_decay, skip=skip)
    return groups


def eval_frozen(module: nn.Module) -> bool | None:
    """Put every frozen sub-module (it has parameters, none trainable) in eval mode (call it after
    ``model.train()``); returns whether ``module`` trains, ``None`` when it has no parameters at all.

    A frozen part then computes what it did before training: its BatchNorm layers keep their running
    statistics and the dropout / drop-path layers inside it stay off. Parameter-free modules (dropout,
    drop-path, activations) follow the part they sit in, so a block that trains keeps its regularisation.
    """
    own = [p.requires_grad for p in module.parameters(recurse=False)]
    children = [eval_frozen(child) for child in module.children()]
    states = [s for s in children if s is not None] + own
    if not states:
        return None
    trains = any(states)
    if not trains:
        module.eval()
    return trains


def _is_norm_only(model: nn.Module, names: Sequence[str]) -> bool:
    params = dict(model.named_parameters())
    return all(params[n].ndim <= 1 for n in names)


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """The classifier's backbone layer groups, input → output, as full parameter names.

    A top group holding only 1-D parameters (a final norm on its own, as convnext's ``head.norm``) is merged
    into the group below it: unfreezing or decaying a lone norm is not a stage of its own (timm's ViT
    grouping already puts the final norm with the last block). Parameters the output does not depend on
    (:func:`unreachable_names`) are in no stage, and a group made only of them is no stage.
    """
    dead = unreachable_names(model)
    groups = [[n for n in g if n not in dead] for g in model.layer_groups()[:-1]]  # the last is the head
    groups = [g for g in groups if g]
    if len(groups) > 1 and _is_norm_only(model, groups[-1]):
        last = groups.pop()
        groups[-1] += last
    backbone, _ = classifier_parts(model)
    covered = {n for g in groups for n in g}
    expected = {f"backbone.{n}" for n, _ in backbone.named_parameters()} - dead
    assert covered == expected, f"layer groups miss {sorted(expected - covered)[:5]}"
    return groups


def head_names(model: nn.Module) -> list[str]:
    _, head = classifier_parts(model)
    return [f"head.{n}" for n, _ in head.named_parameters()]


def backbone_names(model: nn.Module) -> list[str]:
    backbone, _ = classifier_parts(model)
    return [f"backbone.{n}" for n, _ in backbone.named_parameters()]

"""Channel and resolution adaptation: pure tensor functions applied at load time, logging what they change.

Single-channel adaptation folds the model's per-channel input normalisation into the first convolution:
for a gray image ``g`` in [0, 1] copied to RGB and normalised per channel, the first convolution computes
``sum_c W_c * (g - m_c) / s_c + b``. Rewriting it as ``W' * g + b'`` with ``W' = sum_c a_c W_c / s_c`` and
``b' = b - sum_c a_c (W_c m_c / s_c).sum()`` is *exactly* the RGB computation for ``a = (1, 1, 1)``
(``sum``) whenever the convolution has no zero padding, as in every ViT/Hiera patch embedding (for padded CNN
stems it differs only within the padding distance of the border). ``mean`` uses ``a = 1/3`` and ``first``
``a = (1, 0, 0)`` (only the first channel's filters, as in the fine-tuning study of natural-domain models).
timm's ``adapt_input_conv`` sums or repeats weights but ignores the normalisation, which is why this is
written here.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["fold_gray_conv", "adapt_first_conv", "find_first_conv"]

log = logging.getLogger(__name__)

_CHANNEL_WEIGHTS = {"sum": (1.0, 1.0, 1.0), "mean": (1 / 3, 1 / 3, 1 / 3), "first": (1.0, 0.0, 0.0)}


def fold_gray_conv(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight [O, 1, kh, kw], bias [O])`` of a 1-channel conv equivalent to RGB input (see module doc)."""
    if mode not in _CHANNEL_WEIGHTS:
        raise ConfigError(f"channel mode {mode!r} cannot fold a conv; valid: {sorted(_CHANNEL_WEIGHTS)}")
    if weight.shape[1] != 3 or len(mean) != 3 or len(std) != 3:
        raise ConfigError(
            f"expected a 3-channel conv and stats, got weight {tuple(weight.shape)}, mean {mean}"
        )
    w = weight.detach().double()
    a = torch.tensor(_CHANNEL_WEIGHTS[mode], dtype=torch.float64).view(1, 3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    new_w = (a * w / s).sum(1, keepdim=True)
    shift = (a * w * m / s).sum((1, 2, 3))
    b0 = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return new_w.to(weight.dtype), (b0 - shift).to(weight.dtype)


def find_first_conv(model: nn.Module, in_chans: int = 3) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` (in registration order) that reads ``in_chans`` channels: the stem/patch embed."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_chans:
            return name, module
    raise ConfigError(f"{type(model).__name__} has no Conv2d with {in_chans} input channels to adapt")


def adapt_first_conv(model: nn.Module, *, mode: str, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """Replace the model's first 3-channel conv by a 1-channel one (in place); returns the module's name."""
    name, conv = find_first_conv(model)
    weight, bias = fold_gray_conv(conv.weight, conv.bias, mean, std, mode)
    new = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    # Some sources validate the channel count at forward time (e.g. transformers' patch embeddings).
    if hasattr(parent, "num_channels"):
        parent.num_channels = 1
    log.info("adapted %s to 1 input channel (mode=%s, normalisation folded into the conv)", name, mode)
    return name

"""YAML read as people write numbers: ``1e-4`` is a float.

PyYAML implements YAML 1.1, whose float pattern needs a dot (``1.0e-4``), so ``lr: 1e-4`` in a config, or
``--option encoder_lr=1e-7``, arrived as the *string* ``"1e-4"``. YAML 1.2 reads it as a number, and so does
everyone writing a learning rate. PyYAML has no 1.2 mode (ruamel.yaml would be a dependency for one regex),
so this loader swaps the float resolver of :class:`yaml.SafeLoader` for one that also takes exponents
without a dot; everything else is SafeLoader's.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["load"]

_FLOAT_TAG = "tag:yaml.org,2002:float"
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse ``text`` like :func:`yaml.safe_load`, with ``1e-4`` (no dot) read as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

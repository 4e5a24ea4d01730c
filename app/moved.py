"""Names that moved to another distribution, still importable from their old module for one release.

``app.client`` and ``app.resource`` held the client and resource-server libraries; they are now
``token_broker_client`` and ``token_broker_resource``. Each old package's module ``__getattr__``
(PEP 562) is built here: the old name is looked up in the new module, with a ``DeprecationWarning``
that names both, and only when it is used (importing ``app.client.admin`` warns about nothing).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def forwarder(old: str, new: str, distribution: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that returns ``new.<name>`` for each of ``names``."""
    moved = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {new}.{name} (distribution {distribution}); the {old} name goes in the "
                      "next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__

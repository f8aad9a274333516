"""Old module paths (before the subpackages) keep working for one release, with a warning."""

from __future__ import annotations

import warnings


def warn_moved(old: str, new: str) -> None:
    """Warn that ``old`` is now ``new``; the stack level points at the importer."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; import {new} instead",
                  DeprecationWarning, stacklevel=3)


def reexport(namespace: dict, *modules: str) -> None:
    """Copy every public name of ``modules`` into the shim's ``namespace``."""
    import importlib

    for name in modules:
        module = importlib.import_module(name)
        namespace.update({key: value for key, value in vars(module).items() if not key.startswith("_")})

"""Pre-training methods as plug-ins (core layer: torch only).

``METHODS`` maps ``loss.mode`` to a :class:`~pipeline.methods.base.Method`; the step, the
schedules, the config check and the cost model read it. To add a method, write one module in
this folder that defines ``METHOD``: every module here except ``base`` is registered, in the
order of ``ORDER`` and then by name (docs/architecture.md "Adding a method").
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from pipeline.methods.base import PARTS, Method, Views

ORDER = ("simclr", "acl", "dynacl", "air")  # the papers' order; other modules follow by name

_found = [m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")]
METHODS: dict[str, Method] = {}
for _m in sorted(_found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
    _method = import_module(f"pipeline.methods.{_m}").METHOD
    if _method.name in METHODS:
        raise ValueError(f"pre-training method {_method.name!r} is registered twice")
    METHODS[_method.name] = _method


def get_method(name: str) -> Method:
    """The method called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown pre-training method {name!r}: one of {', '.join(METHODS)}") from None


def uses_dynaug(method: Method, override: bool | None) -> bool:
    """DynAug on for this run: ``loss.dynaug`` when set, else the method's default."""
    return method.dynaug if override is None else bool(override)


__all__ = ["METHODS", "PARTS", "Method", "Views", "get_method", "uses_dynaug"]

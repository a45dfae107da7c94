"""Routers of the MoE literature, one per file, each registered by name in :data:`circuitml.moe.ROUTERS`.

Every module in this folder is imported here so that its ``@register_router`` runs; adding a router is adding
a file.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

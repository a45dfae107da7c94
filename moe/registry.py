"""One registry of routers, built by name: ``build_router("topk", d_model=64, num_experts=8)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from circuitml.errors import ConfigError

if TYPE_CHECKING:
    from circuitml.moe.config import RouterConfig
    from circuitml.moe.router import Router

ROUTERS: dict[str, type[Router]] = {}


def register_router(name: str) -> Callable[[type[Router]], type[Router]]:
    """Class decorator adding a :class:`Router` subclass to :data:`ROUTERS` under ``name``."""

    def deco(cls: type[Router]) -> type[Router]:
        if name in ROUTERS and ROUTERS[name] is not cls:
            raise ValueError(f"router name {name!r} is already registered by {ROUTERS[name].__qualname__}")
        cls.name = name
        ROUTERS[name] = cls
        return cls

    return deco


def _load_builtin_routers() -> None:
    # Routers register themselves on import; importing the package pulls in every module of moe/routers/.
    import circuitml.moe.routers  # noqa: F401


def router_class(name: str) -> type[Router]:
    """The registered class for ``name``, or :class:`ConfigError` listing the known names."""
    _load_builtin_routers()
    try:
        return ROUTERS[name]
    except KeyError:
        raise ConfigError(f"router: unknown name {name!r} (expected one of {sorted(ROUTERS)})") from None


def build_router(name: str | dict[str, Any] | RouterConfig, config: Any = None, **cfg: Any) -> Router:
    """Build a router by name.

    Accepted forms::

        build_router("topk", d_model=64, num_experts=8, top_k=2)
        build_router("topk", TopKConfig(...))              # a config object (extra kwargs override fields)
        build_router("topk", {"d_model": 64, ...})        # a plain dict, e.g. read from JSON
        build_router({"name": "topk", "d_model": 64, ...})

    Unknown keys raise :class:`ConfigError` naming the key.
    """
    if isinstance(name, dict):
        values = dict(name)
        if "name" not in values:
            raise ConfigError("router config: missing key 'name' (the registered router name)")
        name = values.pop("name")
        values.update(cfg)
        cfg = values
    if not isinstance(name, str):
        raise ConfigError(f"router: expected a registered router name, got {type(name).__name__}")
    cls = router_class(name)
    config_class = cls.config_class
    if config is None:
        values = dict(cfg)
    elif isinstance(config, dict):
        values = {**config, **cfg}
    elif dataclasses.is_dataclass(config):
        values = {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, **cfg}
    else:
        raise ConfigError(f"router {name!r}: config must be a dict or dataclass, got {type(config).__name__}")
    return cls(config_class.from_dict(values, where=f"router {name!r} config"))

"""One registry of encoder kinds and the one builder that turns a config into an encoder."""

from __future__ import annotations

import importlib
from typing import Any

from circuitml.encoders.base import Encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.errors import ConfigError

ENCODERS: dict[str, type[Encoder]] = {}

# Families register themselves on import; dgl_backend is optional (needs dgl), so it loads lazily.
_FAMILY_MODULES = ("deepgcn", "dag", "pyg_stacks", "moe_gnn")
_LAZY_KINDS = {"dgl_gcn": "dgl_backend", "dgl_sage": "dgl_backend"}


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: make ``cls`` buildable as ``build_encoder(cls.kind)``."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.kind in ENCODERS and ENCODERS[cls.kind] is not cls:
        raise ValueError(f"encoder kind {cls.kind!r} is registered twice")
    ENCODERS[cls.kind] = cls
    return cls


def _load_families() -> None:
    for name in _FAMILY_MODULES:
        importlib.import_module(f"circuitml.encoders.{name}")


def available_encoders() -> list[str]:
    """Registered kinds, plus the DGL ones when dgl is importable."""
    _load_families()
    kinds = set(ENCODERS)
    for kind, module in _LAZY_KINDS.items():
        try:
            importlib.import_module(f"circuitml.encoders.{module}")
            kinds.add(kind)
        except ImportError:
            pass
    return sorted(kinds)


def build_encoder(config: EncoderConfig | dict[str, Any] | str, **overrides: Any) -> Encoder:
    """Build an encoder from a config, a dict (JSON form) or a kind name, with field overrides.

    ``build_encoder("deepgcn", hidden=128)`` and ``build_encoder({"kind": "gat", "options": {"heads": 2}})``
    are both fine; unknown kinds, fields and options raise :class:`ConfigError` naming them.
    """
    if isinstance(config, str):
        config = EncoderConfig(kind=config)
    elif isinstance(config, dict):
        config = EncoderConfig.from_dict(config)
    elif not isinstance(config, EncoderConfig):
        raise ConfigError(
            f"encoder config: expected EncoderConfig, dict or kind name, got {type(config).__name__}"
        )
    if overrides:
        config = config.replace(**overrides)
    _load_families()
    if config.kind not in ENCODERS and config.kind in _LAZY_KINDS:
        try:
            importlib.import_module(f"circuitml.encoders.{_LAZY_KINDS[config.kind]}")
        except ImportError as exc:
            raise ConfigError(
                f"encoder kind {config.kind!r} needs dgl: pip install 'circuitml[dgl]' ({exc})"
            ) from None
    cls = ENCODERS.get(config.kind)
    if cls is None:
        known = ", ".join(sorted(set(ENCODERS) | set(_LAZY_KINDS)))
        raise ConfigError(f"encoder config: kind {config.kind!r} is unknown (expected one of {known})")
    return cls(config)

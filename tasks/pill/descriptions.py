"""English descriptions of generated circuits, made from the generator's own parameters.

Every built-in family (:mod:`circuitml.datasets.generate`) opens its Verilog with a one-line header comment that
it formats from the parameters it drew (``// 16-bit ripple-carry adder: sum = a + b + cin.``). :func:`attributes`
reads those parameters back, one pattern per family, into a flat dict (``{"width": 16, "carry_in": True}``), and
:func:`describe` renders the dict through one of several templates per family (``"a 16-bit ripple-carry adder
with carry-in"``, ``"ripple-carry addition of two 16-bit operands plus a carry input"``, ...). Two circuits of a
family match the same descriptions exactly when their attribute dicts are equal; the matching task's hard
negatives are circuits of the same family whose attributes differ.

``random_control`` is left out: its parameters (a random gate network) have no description beyond its size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from circuitml.errors import DatasetError

__all__ = ["DESCRIBED_FAMILIES", "attributes", "describe", "num_templates"]

Attrs = dict[str, Any]


def _an(n: int | str) -> str:
    """The article before a number read aloud: "an 8-bit", "an 11-bit", "a 16-bit"."""
    s = str(n)
    return "an" if s.startswith("8") or s in ("11", "18") else "a"


def _yes(flag: bool, yes: str, no: str) -> str:
    return yes if flag else no


@dataclass(frozen=True)
class _Spec:
    pattern: str  # matched against the header comment (without "// ")
    parse: Callable[[re.Match], Attrs]
    templates: tuple[Callable[[Attrs], str], ...]


_SPECS: dict[str, _Spec] = {
    "adder_rc": _Spec(
        r"(\d+)-bit ripple-carry adder: sum = a \+ b( \+ cin)?\.",
        lambda m: {"width": int(m[1]), "carry_in": m[2] is not None},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit ripple-carry adder "
                + _yes(a["carry_in"], "with carry-in", "without carry-in")
            ),
            lambda a: (
                f"ripple-carry addition of two {a['width']}-bit operands"
                + _yes(a["carry_in"], " plus a carry input", ", no carry input")
            ),
            lambda a: (
                f"{a['width']}-bit adder whose carries ripple from bit to bit, "
                + _yes(a["carry_in"], "taking a carry-in", "with no carry-in")
            ),
        ),
    ),
    "adder_cla": _Spec(
        r"(\d+)-bit carry-lookahead adder with (\d+)-bit lookahead blocks\.",
        lambda m: {"width": int(m[1]), "block": int(m[2])},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit carry-lookahead adder with "
                f"{a['block']}-bit lookahead blocks"
            ),
            lambda a: (
                f"carry-lookahead addition of two {a['width']}-bit numbers in blocks of {a['block']} bits"
            ),
            lambda a: (
                f"{a['width']}-bit fast adder, lookahead over groups of {a['block']} bits, with carry-in"
            ),
        ),
    ),
    "comparator": _Spec(
        r"(\d+)-bit (signed|unsigned) comparator \(([\w-]+)\)\.",
        lambda m: {"width": int(m[1]), "signed": m[2] == "signed"},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit {_yes(a['signed'], 'signed', 'unsigned')} comparator"
            ),
            lambda a: (
                f"compares two {a['width']}-bit {_yes(a['signed'], 'signed', 'unsigned')} numbers "
                "for equal, less and greater"
            ),
            lambda a: (
                f"magnitude comparator of {a['width']}-bit "
                + _yes(a["signed"], "two's-complement", "unsigned")
                + " operands"
            ),
        ),
    ),
    "subtractor": _Spec(
        r"(\d+)-bit (ripple-borrow|behavioral) subtractor: ",
        lambda m: {"width": int(m[1]), "ripple": m[2] == "ripple-borrow"},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit "
                + _yes(a["ripple"], "ripple-borrow", "behavioral")
                + " subtractor"
            ),
            lambda a: (
                f"subtracts two {a['width']}-bit numbers "
                + _yes(a["ripple"], "with a rippling borrow chain", "with the minus operator")
            ),
            lambda a: (
                f"{a['width']}-bit difference and borrow out, "
                + _yes(a["ripple"], "borrow rippling bit by bit", "written behaviorally")
            ),
        ),
    ),
    "parity": _Spec(
        r"(odd|even) parity of a (\d+)-bit word\.",
        lambda m: {"width": int(m[2]), "odd": m[1] == "odd"},
        (
            lambda a: f"{_yes(a['odd'], 'odd', 'even')} parity of {_an(a['width'])} {a['width']}-bit word",
            lambda a: (
                f"{_an(a['width'])} {a['width']}-input {_yes(a['odd'], 'odd', 'even')} parity generator"
            ),
            lambda a: f"xor of {a['width']} bits giving {_yes(a['odd'], 'odd', 'even')} parity",
        ),
    ),
    "mux": _Spec(
        r"(\d+)-to-1 multiplexer of (\d+)-bit words\.",
        lambda m: {"inputs": int(m[1]), "width": int(m[2])},
        (
            lambda a: f"{_an(a['inputs'])} {a['inputs']}-to-1 multiplexer of {a['width']}-bit words",
            lambda a: f"selects one of {a['inputs']} {a['width']}-bit inputs",
            lambda a: f"{a['width']}-bit wide mux with {a['inputs']} data inputs",
        ),
    ),
    "decoder": _Spec(
        r"(\d+)-to-(\d+) decoder( with enable)?\.",
        lambda m: {"width": int(m[1]), "enable": m[3] is not None},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-to-{1 << a['width']} decoder"
                + _yes(a["enable"], " with enable", " without enable")
            ),
            lambda a: (
                f"binary decoder from {a['width']} bits to {1 << a['width']} one-hot outputs"
                + _yes(a["enable"], ", gated by an enable", ", always enabled")
            ),
            lambda a: (
                f"{a['width']}-bit address decoder"
                + _yes(a["enable"], " with an enable input", " without an enable input")
            ),
        ),
    ),
    "priority_encoder": _Spec(
        r"(\d+)-bit priority encoder: index of the (highest|lowest) set bit",
        lambda m: {"width": int(m[1]), "highest": m[2] == "highest"},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit priority encoder, "
                + _yes(a["highest"], "highest", "lowest")
                + " bit wins"
            ),
            lambda a: (
                f"index of the {_yes(a['highest'], 'highest', 'lowest')} set bit of "
                f"{_an(a['width'])} {a['width']}-bit request"
            ),
            lambda a: (
                f"{a['width']}-input priority encoder favouring the "
                + _yes(a["highest"], "most", "least")
                + " significant request"
            ),
        ),
    ),
    "mult_array": _Spec(
        r"(\d+)x(\d+)-bit unsigned array multiplier",
        lambda m: {"width": int(m[1]), "width_b": int(m[2])},
        (
            lambda a: f"{_an(a['width'])} {a['width']}x{a['width_b']}-bit unsigned array multiplier",
            lambda a: (
                f"multiplies {_an(a['width'])} {a['width']}-bit by {_an(a['width_b'])} "
                f"{a['width_b']}-bit unsigned number"
            ),
            lambda a: f"array multiplier, operands of {a['width']} and {a['width_b']} bits",
        ),
    ),
    "mult_booth": _Spec(
        r"(\d+)x\d+-bit signed radix-4 Booth multiplier: p = a \* b \((2\*)?WIDTH product bits\)",
        lambda m: {"width": int(m[1]), "full_product": m[2] is not None},
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit signed radix-4 Booth multiplier"
                + _yes(a["full_product"], " with the full product", " with a truncated product")
            ),
            lambda a: (
                f"Booth multiplication of two signed {a['width']}-bit numbers giving "
                f"{_yes(a['full_product'], 2 * a['width'], a['width'])} product bits"
            ),
            lambda a: (
                f"radix-4 Booth multiplier, {a['width']}-bit operands, "
                + _yes(a["full_product"], "double-width", "single-width")
                + " result"
            ),
        ),
    ),
    "barrel_shifter": _Spec(
        r"(\d+)-bit barrel shifter \((\w+)\) in (\d+) stages\.",
        lambda m: {"width": int(m[1]), "op": m[2]},
        (
            lambda a: f"{_an(a['width'])} {a['width']}-bit barrel shifter doing {_OPS[a['op']]}",
            lambda a: f"{_OPS[a['op']]} of {_an(a['width'])} {a['width']}-bit word by a variable amount",
            lambda a: f"logarithmic {a['width']}-bit shifter, {_OPS[a['op']]}",
        ),
    ),
    "counter": _Spec(
        r"(\d+)-bit (up/down )?counter( modulo (\d+))?( with parallel load)?;",
        lambda m: {
            "width": int(m[1]),
            "updown": m[2] is not None,
            "modulus": int(m[4]) if m[4] else 0,
            "load": m[5] is not None,
        },
        (
            lambda a: (
                f"{_an(a['width'])} {a['width']}-bit "
                + _yes(a["updown"], "up/down", "up")
                + " counter"
                + (f" modulo {a['modulus']}" if a["modulus"] else f" modulo {1 << a['width']}")
                + _yes(a["load"], " with parallel load", " without load")
            ),
            lambda a: (
                f"synchronous {a['width']}-bit counter counting "
                + _yes(a["updown"], "up or down", "up only")
                + (f", wrapping at {a['modulus']}" if a["modulus"] else ", wrapping at all ones")
                + _yes(a["load"], ", loadable", ", not loadable")
            ),
            lambda a: (
                f"{a['width']}-bit register that "
                + _yes(a["updown"], "increments or decrements", "only increments")
                + (f" modulo {a['modulus']}" if a["modulus"] else " over its full range")
                + _yes(a["load"], " and can be loaded", " and cannot be loaded")
            ),
        ),
    ),
    "crc": _Spec(
        r"(\w+): CRC register after shifting in a (\d+)-bit word",
        lambda m: {"width": int(m[2]), "poly": m[1]},
        (
            lambda a: f"{a['poly']} update over {_an(a['width'])} {a['width']}-bit data word",
            lambda a: f"CRC next state for the {a['poly']} polynomial, {a['width']} data bits at a time",
            lambda a: f"shifts {a['width']} bits into {_an(a['poly'])} {a['poly']} register",
        ),
    ),
    "encoder": _Spec(
        r"one-hot (\d+)-to-(\d+) encoder\.",
        lambda m: {"width": int(m[2])},
        (
            lambda a: f"a one-hot {1 << a['width']}-to-{a['width']} encoder",
            lambda a: f"encodes a one-hot {1 << a['width']}-bit input into {a['width']} bits",
            lambda a: f"{a['width']}-bit binary encoder of {1 << a['width']} one-hot lines",
        ),
    ),
    "alu": _Spec(
        r"(\d+)-bit ALU with",
        lambda m: {"width": int(m[1])},
        (
            lambda a: f"{_an(a['width'])} {a['width']}-bit ALU with eight operations",
            lambda a: f"arithmetic logic unit on {a['width']}-bit operands",
            lambda a: f"{a['width']}-bit ALU with a zero flag",
        ),
    ),
    "fsm": _Spec(
        r"Moore machine with (\d+) states over (\d+) input bit",
        lambda m: {"states": int(m[1]), "inputs": int(m[2])},
        (
            lambda a: f"a Moore machine with {a['states']} states and {a['inputs']} input bits",
            lambda a: f"{a['states']}-state finite state machine reading {a['inputs']} inputs",
            lambda a: f"Moore FSM, {a['states']} states, {a['inputs']}-bit input, 2-bit output",
        ),
    ),
}

_OPS = {
    "shl": "a logical left shift",
    "shr": "a logical right shift",
    "sra": "an arithmetic right shift",
    "rotl": "a left rotation",
}

DESCRIBED_FAMILIES: tuple[str, ...] = tuple(sorted(_SPECS))


def _spec(family: str) -> _Spec:
    try:
        return _SPECS[family]
    except KeyError:
        raise DatasetError(
            f"pill: family {family!r} has no descriptions; expected one of {', '.join(DESCRIBED_FAMILIES)}"
        ) from None


def attributes(family: str, verilog: str) -> Attrs:
    """The parameters a generated design was made with, read from its header comment.

    Raises:
        DatasetError: an unknown family, or a header the family's pattern does not match.
    """
    header = verilog.split("\n", 1)[0].removeprefix("//").strip()
    match = re.match(_spec(family).pattern, header)
    if match is None:
        raise DatasetError(
            f"pill: {family} header {header!r}: expected the pattern {_spec(family).pattern!r}"
        )
    return _spec(family).parse(match)


def num_templates(family: str) -> int:
    return len(_spec(family).templates)


def describe(family: str, attrs: Attrs, template: int) -> str:
    """Description ``template`` (``0 <= template < num_templates(family)``) of a design with ``attrs``."""
    templates = _spec(family).templates
    if not 0 <= template < len(templates):
        raise DatasetError(f"pill: {family}: template {template}: expected 0..{len(templates) - 1}")
    return templates[template](attrs)

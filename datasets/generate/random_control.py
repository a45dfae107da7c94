"""Random control logic: a random DAG of named ``assign`` statements over AND/OR/XOR/NOT/mux.

``width`` is the number of inputs. The seed draws ``width .. 3 * width`` internal signals, each combining two
or three earlier signals (inputs or internal ones, so fanout is shared as in real control logic), and a few
outputs taken from the last signals. ``draw_network`` exposes the DAG so tests can evaluate it directly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .registry import Family, register_family

Operand = tuple[int, bool]  # (signal index, inverted); signals 0..width-1 are the inputs x[i]


@dataclass(frozen=True)
class Gate:
    op: str  # "and" | "or" | "xor" | "mux" (mux: operands are select, then, else)
    operands: tuple[Operand, ...]


def _pick(rng: random.Random, available: int, arity: int, scale: float) -> list[int]:
    """``arity`` distinct signals, biased toward recent ones so the DAG grows deep, not one flat layer."""
    picks: list[int] = []
    while len(picks) < arity:
        p = available - 1 - int(rng.expovariate(1 / scale))
        if p < 0:
            p = rng.randrange(available)
        if p not in picks:
            picks.append(p)
    return picks


def draw_network(width: int, seed: int) -> tuple[list[Gate], list[int]]:
    """``(gates, outputs)``: gate ``k`` defines signal ``width + k``; outputs are signal indices.

    The first ``width // 2`` gates read primary inputs only (uniformly), later ones any earlier signal.
    """
    rng = random.Random(seed)
    width = max(width, 3)  # three distinct operands must exist
    num_gates = rng.randint(width, 3 * width)
    gates = []
    for k in range(num_gates):
        available = width + k
        op = rng.choices(("and", "or", "xor", "mux"), weights=(4, 4, 2, 1))[0]
        arity = 3 if op == "mux" else rng.choice((2, 2, 3))
        if k < width // 2:
            picks = rng.sample(range(width), arity)
        else:
            picks = _pick(rng, available, arity, max(2.0, available / 2))
        operands = tuple((p, rng.random() < 0.3) for p in picks)
        gates.append(Gate(op, operands))
    num_outputs = rng.randint(1, max(1, min(8, width // 2)))
    outputs = list(range(width + num_gates - num_outputs, width + num_gates))
    return gates, outputs


def _signal(index: int, width: int) -> str:
    return f"x[{index}]" if index < width else f"n{index - width}"


def _operand(operand: Operand, width: int) -> str:
    index, inverted = operand
    return ("~" if inverted else "") + _signal(index, width)


def generate(width: int, seed: int) -> tuple[str, str]:
    gates, outputs = draw_network(width, seed)
    width = max(width, 3)
    name = f"random_control_w{width}_s{seed}"
    symbol = {"and": " & ", "or": " | ", "xor": " ^ "}
    lines = []
    for k, gate in enumerate(gates):
        terms = [_operand(o, width) for o in gate.operands]
        expr = f"{terms[0]} ? {terms[1]} : {terms[2]}" if gate.op == "mux" else symbol[gate.op].join(terms)
        lines.append(f"  wire n{k} = {expr};")
    outs = ", ".join(_signal(o, width) for o in reversed(outputs))
    body = "\n".join(lines)
    text = f"""// Random control logic: {width} inputs, {len(gates)} internal signals, {len(outputs)} outputs.
module {name} (
    input  wire [{width - 1}:0] x,
    output wire [{len(outputs) - 1}:0] y
);
{body}

  assign y = {{{outs}}};
endmodule
"""
    return name, text


FAMILY = register_family(
    Family(
        "random_control",
        generate,
        widths=(4, 6, 8, 10, 12, 16, 20, 24),
        max_width=48,
        description="random control logic",
    )
)

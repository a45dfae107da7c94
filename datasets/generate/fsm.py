"""Random Moore finite-state machine (sequential), written as the usual two ``always`` blocks.

``width`` is the number of states. The seed draws the input count (1-3 bits), each state's guarded
transitions (a guard is a conjunction of one or two input literals; the first true guard wins, otherwise the
machine stays or falls back), and a 2-bit Moore output per state. States are binary encoded; in the AIG the
state register becomes pseudo-PIs/POs (latches cut).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .registry import Family, register_family

Literal = tuple[int, bool]  # (input bit, required value)


@dataclass(frozen=True)
class Transition:
    guard: tuple[Literal, ...]
    target: int


@dataclass(frozen=True)
class StateSpec:
    transitions: tuple[Transition, ...]
    otherwise: int  # next state when no guard holds
    output: int  # 2-bit Moore output


def state_bits(num_states: int) -> int:
    return max(1, (num_states - 1).bit_length())


def draw_machine(width: int, seed: int) -> tuple[int, list[StateSpec]]:
    """``(num_inputs, states)`` for ``(width, seed)``; tests rebuild the reference next-state from it."""
    rng = random.Random(seed)
    num_states = max(2, width)
    num_inputs = rng.randint(1, 3)
    states = []
    for s in range(num_states):
        transitions = []
        for _ in range(rng.randint(1, 2)):
            bits = rng.sample(range(num_inputs), k=min(num_inputs, rng.randint(1, 2)))
            guard = tuple((b, rng.random() < 0.6) for b in sorted(bits))
            transitions.append(Transition(guard, rng.randrange(num_states)))
        otherwise = s if rng.random() < 0.5 else (s + 1) % num_states
        states.append(StateSpec(tuple(transitions), otherwise, rng.randrange(4)))
    return num_inputs, states


def _guard_text(guard: tuple[Literal, ...]) -> str:
    return " && ".join(f"in[{b}]" if value else f"!in[{b}]" for b, value in guard)


def generate(width: int, seed: int) -> tuple[str, str]:
    num_inputs, states = draw_machine(width, seed)
    name = f"fsm_w{width}_s{seed}"
    sb = state_bits(len(states))
    names = [f"S{k}" for k in range(len(states))]
    params = ",\n".join(f"             {n} = {sb}'d{k}" for k, n in enumerate(names))
    arms = []
    for k, spec in enumerate(states):
        lines = [f"      {names[k]}: begin"]
        for i, t in enumerate(spec.transitions):
            keyword = "if" if i == 0 else "else if"
            lines.append(f"        {keyword} ({_guard_text(t.guard)}) state_next = {names[t.target]};")
        lines.append(f"        else state_next = {names[spec.otherwise]};")
        lines.append("      end")
        arms.append("\n".join(lines))
    outputs = "\n".join(f"      {names[k]}: out = 2'd{spec.output};" for k, spec in enumerate(states))
    transitions_text = "\n".join(arms)
    text = f"""// Moore machine with {len(states)} states over {num_inputs} input bit(s), 2-bit output.
module {name} (
    input  wire       clk,
    input  wire       rst,
    input  wire [{num_inputs - 1}:0] in,
    output reg  [1:0] out
);
  localparam [{sb - 1}:0] {params.lstrip()};

  reg [{sb - 1}:0] state, state_next;

  // state register, synchronous active-high reset
  always @(posedge clk) begin
    if (rst) state <= S0;
    else     state <= state_next;
  end

  // next-state logic
  always @(*) begin
    case (state)
{transitions_text}
      default: state_next = S0;
    endcase
  end

  // Moore outputs
  always @(*) begin
    case (state)
{outputs}
      default: out = 2'd0;
    endcase
  end
endmodule
"""
    return name, text


FAMILY = register_family(
    Family(
        "fsm",
        generate,
        widths=(2, 3, 4, 5, 6, 7, 8, 10, 12),
        sequential=True,
        max_width=32,
        description="Moore FSM",
    )
)

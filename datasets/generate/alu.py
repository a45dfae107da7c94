"""Arithmetic-logic unit: a ``case`` over an opcode selecting add, subtract, logic, shift or compare.

``width`` is the operand width. The seed picks which eight operations (from a pool of twelve) the opcodes
name and in which order, so ALUs of one width differ in their decode logic. Outputs: ``y`` and ``zero``.
"""

from __future__ import annotations

import random

from .registry import Family, register_family

# name -> Verilog expression over a, b (unsigned unless noted); every result is truncated to WIDTH bits.
OPERATIONS: dict[str, str] = {
    "add": "a + b",
    "sub": "a - b",
    "and": "a & b",
    "or": "a | b",
    "xor": "a ^ b",
    "nor": "~(a | b)",
    "shl1": "a << 1",
    "shr1": "a >> 1",
    "sltu": "{{(WIDTH-1){1'b0}}, a < b}",
    "slt": "{{(WIDTH-1){1'b0}}, $signed(a) < $signed(b)}",
    "inc": "a + 1'b1",
    "pass_b": "b",
}


def pick_operations(seed: int) -> list[str]:
    """The eight operations of opcodes 0..7 for ``seed`` (also used by tests as the reference decode)."""
    rng = random.Random(seed)
    ops = sorted(OPERATIONS)
    rng.shuffle(ops)
    chosen = ["add", "sub"] + [op for op in ops if op not in ("add", "sub")][:6]
    rng.shuffle(chosen)
    return chosen


def generate(width: int, seed: int) -> tuple[str, str]:
    ops = pick_operations(seed)
    name = f"alu_w{width}_s{seed}"
    width_local = max(width, 2)  # slt needs at least one zero-fill bit
    arms = "\n".join(
        f"      3'd{code}: y_r = {OPERATIONS[op]};{' ' * max(1, 36 - len(OPERATIONS[op]))}// {op}"
        for code, op in enumerate(ops)
    )
    text = f"""// {width_local}-bit ALU with eight operations selected by op.
module {name} #(
    parameter WIDTH = {width_local}
) (
    input  wire [WIDTH-1:0] a,
    input  wire [WIDTH-1:0] b,
    input  wire [2:0]       op,
    output wire [WIDTH-1:0] y,
    output wire             zero
);
  reg [WIDTH-1:0] y_r;
  always @(*) begin
    case (op)
{arms}
      default: y_r = {{WIDTH{{1'b0}}}};
    endcase
  end
  assign y    = y_r;
  assign zero = (y_r == {{WIDTH{{1'b0}}}});
endmodule
"""
    return name, text


FAMILY = register_family(Family("alu", generate, widths=(2, 4, 6, 8, 12, 16), description="ALU"))

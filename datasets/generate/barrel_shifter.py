"""Barrel shifter: log2(width) stages, stage ``s`` shifting by ``2**s`` when amount bit ``s`` is set.

``width`` is the data width (a power of two keeps the amount exact). The seed picks the operation: logical
left, logical right, arithmetic right or rotate left.
"""

from __future__ import annotations

import random

from .registry import Family, register_family

# operation -> Verilog for "x shifted by (1 << s)": every stage shifts by a constant amount
STAGE_EXPRESSIONS: dict[str, str] = {
    "shl": "x << (1 << s)",
    "shr": "x >> (1 << s)",
    "sra": "$signed(x) >>> (1 << s)",
    "rotl": "(x << (1 << s)) | (x >> (WIDTH - (1 << s)))",
}


def pick_operation(seed: int) -> str:
    return random.Random(seed).choice(sorted(STAGE_EXPRESSIONS))


def generate(width: int, seed: int) -> tuple[str, str]:
    op = pick_operation(seed)
    stages = max(1, (width - 1).bit_length())
    width = 1 << stages
    name = f"barrel_shifter_w{width}_s{seed}"
    text = f"""// {width}-bit barrel shifter ({op}) in {stages} stages.
module {name} #(
    parameter WIDTH  = {width},
    parameter STAGES = {stages}
) (
    input  wire [WIDTH-1:0]  d,
    input  wire [STAGES-1:0] amount,
    output wire [WIDTH-1:0]  y
);
  reg [WIDTH-1:0] x;
  integer s;
  always @(*) begin
    x = d;
    for (s = 0; s < STAGES; s = s + 1)
      if (amount[s]) x = {STAGE_EXPRESSIONS[op]};
  end
  assign y = x;
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("barrel_shifter", generate, widths=(2, 4, 8, 16, 32), description="barrel shifter")
)

"""Signed radix-4 Booth multiplier (Booth, 1951; radix-4 recoding after MacSorley, 1961).

``width`` is the (even) operand width. The multiplier ``b`` is recoded into ``width / 2`` digits in
``{-2, -1, 0, 1, 2}`` from overlapping bit triples ``b[2k+1], b[2k], b[2k-1]``; each digit selects a shifted
``+-a`` and the rows are accumulated. The seed picks whether the product is truncated to ``width`` bits.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    if width % 2:
        width += 1  # radix-4 recoding consumes two bits per digit
    rng = random.Random(seed)
    out_width = "WIDTH" if rng.random() < 0.3 else "2*WIDTH"
    name = f"mult_booth_w{width}_s{seed}"
    text = f"""// {width}x{width}-bit signed radix-4 Booth multiplier: p = a * b ({out_width} product bits).
module {name} #(
    parameter WIDTH = {width}
) (
    input  wire signed [WIDTH-1:0]     a,
    input  wire signed [WIDTH-1:0]     b,
    output wire signed [{out_width}-1:0] p
);
  wire [WIDTH:0] bx = {{b, 1'b0}};  // b with an implicit 0 below bit 0

  reg signed [2*WIDTH-1:0] acc;
  reg signed [2*WIDTH-1:0] row;
  reg [2:0] digit;
  integer k;
  always @(*) begin
    acc = 0;
    for (k = 0; k < WIDTH / 2; k = k + 1) begin
      digit = bx[2*k +: 3];
      row = a;  // sign-extended to 2*WIDTH bits
      case (digit)
        3'b001, 3'b010: row = row;             // +a
        3'b011:         row = row <<< 1;       // +2a
        3'b100:         row = -(row <<< 1);    // -2a
        3'b101, 3'b110: row = -row;            // -a
        default:        row = 0;               // 0
      endcase
      acc = acc + (row <<< (2 * k));
    end
  end
  assign p = acc[{out_width}-1:0];
endmodule
"""
    return name, text


FAMILY = register_family(
    Family(
        "mult_booth",
        generate,
        widths=(2, 4, 6, 8, 10, 12),
        max_width=16,
        description="signed radix-4 Booth multiplier",
    )
)

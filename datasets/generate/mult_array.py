"""Unsigned array multiplier: the partial product ``a & b[i]`` of each row is shifted and accumulated.

``width`` is the operand width (product has ``2 * width`` bits). The seed picks whether a second operand
width differs from the first by up to two bits, which varies the array's aspect ratio.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    width_b = max(2, width - rng.choice((0, 0, 1, 2)))
    name = f"mult_array_w{width}_s{seed}"
    text = f"""// {width}x{width_b}-bit unsigned array multiplier: p = a * b as a sum of shifted partial products.
module {name} #(
    parameter WA = {width},
    parameter WB = {width_b}
) (
    input  wire [WA-1:0]    a,
    input  wire [WB-1:0]    b,
    output wire [WA+WB-1:0] p
);
  reg [WA+WB-1:0] acc;
  integer row;
  always @(*) begin
    acc = {{(WA+WB){{1'b0}}}};
    for (row = 0; row < WB; row = row + 1)
      acc = acc + ({{{{WB{{1'b0}}}}, a & {{WA{{b[row]}}}}}} << row);
  end
  assign p = acc;
endmodule
"""
    return name, text


FAMILY = register_family(
    Family(
        "mult_array",
        generate,
        widths=(2, 3, 4, 5, 6, 8, 10, 12),
        max_width=16,
        description="array multiplier",
    )
)

"""Subtractor with borrow out: ``diff = a - b``, ``borrow = a < b`` (unsigned).

``width`` is the operand width. The seed picks the style: a behavioral ``-`` or a ripple-borrow chain.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    ripple = rng.random() < 0.5
    name = f"subtractor_w{width}_s{seed}"
    if ripple:
        body = """  wire [WIDTH:0] bw;  // bw[i]: borrow into bit i
  assign bw[0] = 1'b0;

  genvar i;
  generate
    for (i = 0; i < WIDTH; i = i + 1) begin : full_subtractor
      assign diff[i]   = a[i] ^ b[i] ^ bw[i];
      assign bw[i + 1] = (~a[i] & b[i]) | (~(a[i] ^ b[i]) & bw[i]);
    end
  endgenerate

  assign borrow = bw[WIDTH];"""
        style = "ripple-borrow"
    else:
        body = """  assign {borrow, diff} = {1'b0, a} - {1'b0, b};"""
        style = "behavioral"
    text = f"""// {width}-bit {style} subtractor: diff = a - b, borrow = (a < b).
module {name} #(
    parameter WIDTH = {width}
) (
    input  wire [WIDTH-1:0] a,
    input  wire [WIDTH-1:0] b,
    output wire [WIDTH-1:0] diff,
    output wire             borrow
);
{body}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("subtractor", generate, widths=(2, 4, 8, 12, 16, 24, 32), description="subtractor with borrow")
)

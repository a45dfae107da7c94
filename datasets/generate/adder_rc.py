"""Ripple-carry adder: one full adder per bit, each waiting for the carry of the bit below.

``width`` is the operand width. The seed chooses whether there is a carry-in port.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    has_cin = rng.random() < 0.5
    name = f"adder_rc_w{width}_s{seed}"
    cin_port = "    input  wire             cin,\n" if has_cin else ""
    carry0 = "cin" if has_cin else "1'b0"
    text = f"""// {width}-bit ripple-carry adder: sum = a + b{" + cin" if has_cin else ""}.
module {name} #(
    parameter WIDTH = {width}
) (
    input  wire [WIDTH-1:0] a,
    input  wire [WIDTH-1:0] b,
{cin_port}    output wire [WIDTH-1:0] sum,
    output wire             cout
);
  wire [WIDTH:0] carry;
  assign carry[0] = {carry0};

  genvar i;
  generate
    for (i = 0; i < WIDTH; i = i + 1) begin : full_adder
      assign sum[i]       = a[i] ^ b[i] ^ carry[i];
      assign carry[i + 1] = (a[i] & b[i]) | (carry[i] & (a[i] ^ b[i]));
    end
  endgenerate

  assign cout = carry[WIDTH];
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("adder_rc", generate, widths=(2, 4, 6, 8, 12, 16, 24, 32), description="ripple-carry adder")
)

"""Carry-lookahead adder: generate/propagate terms, carries flattened to sums of products inside blocks.

``width`` is the operand width; the seed picks the lookahead block size (2, 4 or 8 bits). Inside a block each
carry is ``g[i] | p[i] g[i-1] | ... | p[i..s] c[s]`` (Weinberger & Smith, 1958); blocks ripple into each other.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    block = rng.choice((2, 4, 8))
    name = f"adder_cla_w{width}_s{seed}"
    text = f"""// {width}-bit carry-lookahead adder with {block}-bit lookahead blocks.
module {name} #(
    parameter WIDTH = {width},
    parameter BLOCK = {block}
) (
    input  wire [WIDTH-1:0] a,
    input  wire [WIDTH-1:0] b,
    input  wire             cin,
    output wire [WIDTH-1:0] sum,
    output wire             cout
);
  wire [WIDTH-1:0] g = a & b;  // bit generates a carry
  wire [WIDTH-1:0] p = a ^ b;  // bit propagates a carry

  reg [WIDTH:0] c;
  reg           chain;
  integer i, j;
  always @(*) begin
    c[0] = cin;
    for (i = 0; i < WIDTH; i = i + 1) begin
      // carry out of bit i, expanded back to the carry entering its block
      c[i + 1] = g[i];
      chain = p[i];
      for (j = i - 1; j >= (i / BLOCK) * BLOCK; j = j - 1) begin
        c[i + 1] = c[i + 1] | (chain & g[j]);
        chain = chain & p[j];
      end
      c[i + 1] = c[i + 1] | (chain & c[(i / BLOCK) * BLOCK]);
    end
  end

  assign sum  = p ^ c[WIDTH-1:0];
  assign cout = c[WIDTH];
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("adder_cla", generate, widths=(4, 8, 12, 16, 24, 32), description="carry-lookahead adder")
)

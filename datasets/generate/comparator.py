"""Magnitude comparator: ``eq``, ``lt`` and ``gt`` of two operands.

``width`` is the operand width. The seed picks signed or unsigned comparison and the style: behavioral
operators, or an MSB-first scan that stops at the first differing bit.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    signed = rng.random() < 0.5
    scan = rng.random() < 0.5
    name = f"comparator_w{width}_s{seed}"
    kind = "signed" if signed else "unsigned"
    sig = " signed" if signed else ""
    if scan:
        # Signed order equals unsigned order once both sign bits are flipped.
        flip = "{~a[WIDTH-1], a[WIDTH-2:0]}" if signed and width > 1 else ("~a" if signed else "a")
        flip_b = "{~b[WIDTH-1], b[WIDTH-2:0]}" if signed and width > 1 else ("~b" if signed else "b")
        body = f"""  wire [WIDTH-1:0] ua = {flip};
  wire [WIDTH-1:0] ub = {flip_b};

  reg decided, less, greater;
  integer i;
  always @(*) begin
    decided = 1'b0;
    less    = 1'b0;
    greater = 1'b0;
    for (i = WIDTH - 1; i >= 0; i = i - 1) begin
      if (!decided && ua[i] != ub[i]) begin
        decided = 1'b1;
        less    = ub[i];
        greater = ua[i];
      end
    end
  end

  assign eq = ~decided;
  assign lt = less;
  assign gt = greater;"""
        style = "bit-scan"
    else:
        body = """  assign eq = (a == b);
  assign lt = (a < b);
  assign gt = (a > b);"""
        style = "behavioral"
    text = f"""// {width}-bit {kind} comparator ({style}).
module {name} #(
    parameter WIDTH = {width}
) (
    input  wire{sig} [WIDTH-1:0] a,
    input  wire{sig} [WIDTH-1:0] b,
    output wire eq,
    output wire lt,
    output wire gt
);
{body}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("comparator", generate, widths=(2, 4, 6, 8, 12, 16, 24, 32), description="magnitude comparator")
)

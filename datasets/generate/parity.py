"""Parity generator: XOR of all data bits (even parity) or its complement (odd parity).

``width`` is the data width. The seed picks even/odd and the style: a reduction ``^`` or an explicit
balanced XOR tree built with ``generate``.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    odd = rng.random() < 0.5
    tree = rng.random() < 0.5
    name = f"parity_w{width}_s{seed}"
    invert = "~" if odd else ""
    if tree:
        size = 1
        while size < width:
            size *= 2
        body = f"""  // Balanced XOR tree over a power-of-two padded copy: node k (k >= 1) has children 2k and 2k+1,
  // leaves sit at SIZE .. 2*SIZE-1.
  localparam SIZE = {size};
  wire [2*SIZE-1:0] node;
  assign node[2*SIZE-1:SIZE] = d;  // zero-extended to SIZE leaves
  assign node[0] = 1'b0;
  genvar k;
  generate
    for (k = 1; k < SIZE; k = k + 1) begin : xor_node
      assign node[k] = node[2*k] ^ node[2*k + 1];
    end
  endgenerate
  assign parity = {invert}node[1];"""
    else:
        body = f"  assign parity = {invert}(^d);"
    text = f"""// {"odd" if odd else "even"} parity of a {width}-bit word.
module {name} #(
    parameter WIDTH = {width}
) (
    input  wire [WIDTH-1:0] d,
    output wire             parity
);
{body}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("parity", generate, widths=(2, 3, 4, 8, 9, 16, 17, 32, 64), description="parity generator")
)

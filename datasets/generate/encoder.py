"""Binary encoder: a one-hot word of ``2**n`` bits to its ``n``-bit index, with ``valid`` when any bit is set.

``width`` is ``n``. Each index bit ``j`` is the OR of the input bits whose position has bit ``j`` set, which is
exactly the index when the input is one-hot. The seed picks a loop or a ``generate`` formulation.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    use_generate = rng.random() < 0.5
    name = f"encoder_w{width}_s{seed}"
    if use_generate:
        body = """  genvar j, k;
  generate
    for (j = 0; j < N; j = j + 1) begin : index_bit
      wire [(1<<N)-1:0] hits;
      for (k = 0; k < (1 << N); k = k + 1) begin : position
        assign hits[k] = ((k >> j) & 1) ? d[k] : 1'b0;
      end
      assign y[j] = |hits;
    end
  endgenerate"""
    else:
        body = """  reg [N-1:0] idx;
  integer k;
  always @(*) begin
    idx = {N{1'b0}};
    for (k = 0; k < (1 << N); k = k + 1)
      if (d[k]) idx = idx | k;
  end
  assign y = idx;"""
    text = f"""// one-hot {1 << width}-to-{width} encoder.
module {name} #(
    parameter N = {width}
) (
    input  wire [(1<<N)-1:0] d,
    output wire [N-1:0]      y,
    output wire              valid
);
{body}
  assign valid = |d;
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("encoder", generate, widths=(2, 3, 4, 5, 6, 7), max_width=8, description="one-hot encoder")
)

"""Binary decoder: ``n`` select bits to a one-hot word of ``2**n`` bits.

``width`` is the number of select bits ``n``; the seed picks whether there is an enable input and the style:
a shift ``1 << a`` or a loop comparing each output index.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    has_en = rng.random() < 0.5
    loop = rng.random() < 0.5
    name = f"decoder_w{width}_s{seed}"
    en_port = "    input  wire             en,\n" if has_en else ""
    gate = " & en" if has_en else ""
    if loop:
        body = f"""  genvar k;
  generate
    for (k = 0; k < (1 << N); k = k + 1) begin : line
      assign y[k] = (a == k){gate};
    end
  endgenerate"""
    else:
        enable = " & {(1 << N){en}}" if has_en else ""
        body = f"""  localparam [(1<<N)-1:0] ONE = 1;
  assign y = (ONE << a){enable};"""
    text = f"""// {width}-to-{1 << width} decoder{" with enable" if has_en else ""}.
module {name} #(
    parameter N = {width}
) (
    input  wire [N-1:0]        a,
{en_port}    output wire [(1<<N)-1:0]   y
);
{body}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("decoder", generate, widths=(2, 3, 4, 5, 6, 7), max_width=8, description="binary decoder")
)

"""Priority encoder: index of the highest (or lowest) set bit of a ``width``-bit request word, plus ``valid``.

The seed picks the priority direction and the style (a loop where the last match wins, or a ``casez``
table for small widths).
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def _index_bits(width: int) -> int:
    return max(1, (width - 1).bit_length())


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    highest = rng.random() < 0.5
    use_casez = width <= 8 and rng.random() < 0.5
    name = f"priority_encoder_w{width}_s{seed}"
    ib = _index_bits(width)
    which = "highest" if highest else "lowest"
    if use_casez:
        order = range(width - 1, -1, -1) if highest else range(width)
        arms = []
        for k in order:
            pattern = ["?"] * width
            pattern[width - 1 - k] = "1"
            if highest:
                for m in range(k + 1, width):
                    pattern[width - 1 - m] = "0"
            else:
                for m in range(k):
                    pattern[width - 1 - m] = "0"
            arms.append(f"      {width}'b{''.join(pattern)}: idx = {ib}'d{k};")
        body = f"""  reg [IB-1:0] idx;
  always @(*) begin
    casez (req)
{chr(10).join(arms)}
      default: idx = {{IB{{1'b0}}}};
    endcase
  end"""
    else:
        loop = "k = 0; k < N; k = k + 1" if highest else "k = N - 1; k >= 0; k = k - 1"
        body = f"""  reg [IB-1:0] idx;
  integer k;
  always @(*) begin
    idx = {{IB{{1'b0}}}};
    for ({loop})
      if (req[k]) idx = k;  // later iterations win: the {which} set bit is visited last
  end"""
    text = f"""// {width}-bit priority encoder: index of the {which} set bit of req.
module {name} #(
    parameter N  = {width},
    parameter IB = {ib}
) (
    input  wire [N-1:0]  req,
    output wire [IB-1:0] y,
    output wire          valid
);
{body}
  assign y     = idx;
  assign valid = |req;
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("priority_encoder", generate, widths=(3, 4, 5, 6, 8, 12, 16, 32), description="priority encoder")
)

"""Multiplexer: selects one of ``N`` data words of ``width`` bits.

``width`` is the data word width; the seed picks ``N`` in {2, 4, 8, 16} and the style: an indexed
part-select or a ``case`` statement. Data words are packed in ``d``: word ``k`` is ``d[k*WIDTH +: WIDTH]``.
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def generate(width: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    sel_bits = rng.choice((1, 2, 3, 4))
    n = 1 << sel_bits
    use_case = rng.random() < 0.5
    name = f"mux_w{width}_s{seed}"
    if use_case:
        arms = (
            "\n".join(f"      {sel_bits}'d{k}: y = d[{k}*WIDTH +: WIDTH];" for k in range(n - 1))
            + f"\n      default: y = d[{n - 1}*WIDTH +: WIDTH];"
        )
        body = f"""  reg [WIDTH-1:0] y_r;
  always @(*) begin
    case (sel)
{arms.replace(" y =", " y_r =")}
    endcase
  end
  assign y = y_r;"""
    else:
        body = "  assign y = d[sel*WIDTH +: WIDTH];"
    text = f"""// {n}-to-1 multiplexer of {width}-bit words.
module {name} #(
    parameter WIDTH = {width},
    parameter N     = {n},
    parameter SEL   = {sel_bits}
) (
    input  wire [N*WIDTH-1:0] d,
    input  wire [SEL-1:0]     sel,
    output wire [WIDTH-1:0]   y
);
{body}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("mux", generate, widths=(1, 2, 4, 8, 16), max_width=32, description="N-to-1 multiplexer")
)

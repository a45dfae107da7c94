"""Synchronous counter (sequential): ``width``-bit register with reset, enable, and optionally load and
up/down control.

The seed picks the features (parallel load, up/down, modulus wrap-around). ``tc`` (terminal count) flags the
last value before wrap-around. In the AIG the register bits become pseudo-PIs/POs (latches cut).
"""

from __future__ import annotations

import random

from .registry import Family, register_family


def pick_features(width: int, seed: int) -> dict[str, object]:
    """Features of the counter for ``(width, seed)``; tests rebuild the reference next-state from them."""
    rng = random.Random(seed)
    modulus = rng.randrange(2, 1 << width) if width > 1 and rng.random() < 0.4 else None
    return {"load": rng.random() < 0.5, "updown": rng.random() < 0.5, "modulus": modulus}


def generate(width: int, seed: int) -> tuple[str, str]:
    f = pick_features(width, seed)
    name = f"counter_w{width}_s{seed}"
    ports = [
        "    input  wire             clk,",
        "    input  wire             rst,",
        "    input  wire             en,",
    ]
    if f["load"]:
        ports += ["    input  wire             load,", "    input  wire [WIDTH-1:0] d,"]
    if f["updown"]:
        ports.append("    input  wire             up,")
    ports += ["    output reg  [WIDTH-1:0] q,", "    output wire             tc"]
    top = "MOD - 1" if f["modulus"] else "{WIDTH{1'b1}}"
    count_up = "q <= (q == LAST) ? {WIDTH{1'b0}} : q + 1'b1;"
    count_down = "q <= (q == {WIDTH{1'b0}}) ? LAST : q - 1'b1;"
    # An if/else-if chain: load wins over counting; the direction input picks up or down.
    branches: list[tuple[str | None, str]] = []
    if f["load"]:
        branches.append(("load", "q <= d;"))
    if f["updown"]:
        branches += [("up", count_up), (None, count_down)]
        tc = "assign tc = up ? (q == LAST) : (q == {WIDTH{1'b0}});"
    else:
        branches.append((None, count_up))
        tc = "assign tc = (q == LAST);"
    lines = []
    for k, (cond, action) in enumerate(branches):
        if cond is None and k == 0:
            lines.append(f"      {action}")
            continue
        keyword = "if" if k == 0 else ("else if" if cond else "else")
        lines.append(f"      {keyword}{f' ({cond})' if cond else ''}\n        {action}")
    step = "\n".join(lines)
    mod_param = f",\n    parameter MOD   = {f['modulus']}" if f["modulus"] else ""
    port_text = "\n".join(ports)
    text = f"""// {width}-bit {"up/down " if f["updown"] else ""}counter{" modulo " + str(f["modulus"]) if f["modulus"] else ""}{" with parallel load" if f["load"] else ""}; synchronous active-high reset.
module {name} #(
    parameter WIDTH = {width}{mod_param}
) (
{port_text}
);
  localparam [WIDTH-1:0] LAST = {top};

  always @(posedge clk) begin
    if (rst)
      q <= {{WIDTH{{1'b0}}}};
    else if (en) begin
{step}
    end
  end

  {tc}
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("counter", generate, widths=(2, 3, 4, 5, 6, 8, 12, 16), sequential=True, description="counter")
)

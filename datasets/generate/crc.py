"""CRC update: the next CRC register after shifting in a ``width``-bit data word, MSB first.

The seed picks a standard polynomial (CRC-5/USB, CRC-8, CRC-8/MAXIM... CRC-32); the loop is the bitwise LFSR
of Peterson & Brown ("Cyclic Codes for Error Detection", 1961), unrolled by synthesis into XOR networks.
"""

from __future__ import annotations

import random

from .registry import Family, register_family

# name -> (register bits, polynomial without the x^n term)
POLYNOMIALS: dict[str, tuple[int, int]] = {
    "crc5_usb": (5, 0x05),
    "crc7_mmc": (7, 0x09),
    "crc8": (8, 0x07),
    "crc8_maxim": (8, 0x31),
    "crc10": (10, 0x233),
    "crc16_ccitt": (16, 0x1021),
    "crc16_ibm": (16, 0x8005),
    "crc32": (32, 0x04C11DB7),
}


def pick_polynomial(seed: int) -> tuple[str, int, int]:
    """``(name, bits, polynomial)`` chosen by ``seed`` (tests use it for the reference)."""
    rng = random.Random(seed)
    key = rng.choice(sorted(POLYNOMIALS))
    bits, poly = POLYNOMIALS[key]
    return key, bits, poly


def generate(width: int, seed: int) -> tuple[str, str]:
    key, bits, poly = pick_polynomial(seed)
    name = f"crc_w{width}_s{seed}"
    text = f"""// {key}: CRC register after shifting in a {width}-bit word, most significant bit first.
module {name} #(
    parameter DATA = {width},
    parameter CRC  = {bits},
    parameter [CRC-1:0] POLY = {bits}'h{poly:X}
) (
    input  wire [CRC-1:0]  crc_in,
    input  wire [DATA-1:0] data,
    output wire [CRC-1:0]  crc_out
);
  reg [CRC-1:0] c;
  reg           feedback;
  integer i;
  always @(*) begin
    c = crc_in;
    for (i = DATA - 1; i >= 0; i = i - 1) begin
      feedback = c[CRC-1] ^ data[i];
      c = {{c[CRC-2:0], 1'b0}} ^ (POLY & {{CRC{{feedback}}}});
    end
  end
  assign crc_out = c;
endmodule
"""
    return name, text


FAMILY = register_family(
    Family("crc", generate, widths=(1, 2, 4, 8, 16), max_width=64, description="CRC update")
)

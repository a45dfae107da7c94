"""Verilog: parsing (pyverilog), a normalized token stream for Verilog encoders, and Verilog → AIG (Yosys)."""

from circuitml.verilog.parse import (
    VerilogDesign,
    VerilogFallbackWarning,
    VerilogModule,
    VerilogPort,
    find_top,
    module_graph,
    parse_verilog,
)
from circuitml.verilog.synth import (
    PortBits,
    synthesis_script,
    verilog_text_to_aig,
    verilog_to_aig,
    verilog_to_aig_many,
)
from circuitml.verilog.tokens import (
    BOS,
    EOS,
    MAX_IDENTIFIERS,
    PAD,
    TOKEN_TO_ID,
    UNK,
    VOCAB,
    VerilogToken,
    decode_ids,
    encode_tokens,
    lex_verilog,
    tokenize_verilog,
)

__all__ = [
    "VerilogDesign",
    "VerilogFallbackWarning",
    "VerilogModule",
    "VerilogPort",
    "find_top",
    "module_graph",
    "parse_verilog",
    "PortBits",
    "synthesis_script",
    "verilog_text_to_aig",
    "verilog_to_aig",
    "verilog_to_aig_many",
    "BOS",
    "EOS",
    "MAX_IDENTIFIERS",
    "PAD",
    "TOKEN_TO_ID",
    "UNK",
    "VOCAB",
    "VerilogToken",
    "decode_ids",
    "encode_tokens",
    "lex_verilog",
    "tokenize_verilog",
]

"""The normalized Verilog token stream: closed vocabulary, canonical renaming, number normalization."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.verilog import VOCAB, decode_ids, encode_tokens, lex_verilog, tokenize_verilog
from circuitml.verilog.tokens import MAX_IDENTIFIERS, TOKEN_TO_ID

ADDER = """
// 4-bit adder
module adder4 #(parameter W = 4) (input [W-1:0] a, input [W-1:0] b, output [W:0] s);
  /* sum */
  assign s = a + b + 4'b0_001;
endmodule
"""


def test_special_ids_and_uniqueness() -> None:
    assert VOCAB[0] == "<pad>" and VOCAB[1] == "<unk>"
    assert len(set(VOCAB)) == len(VOCAB)
    assert f"id{MAX_IDENTIFIERS - 1}" in TOKEN_TO_ID and "id_unk" in TOKEN_TO_ID


def test_adder_stream() -> None:
    expected = (
        "module id0 # ( parameter id1 = 4 ) ( input [ id1 - 1 : 0 ] id2 , input [ id1 - 1 : 0 ] id3 , "
        "output [ id1 : 0 ] id4 ) ; assign id4 = id2 + id3 + 4 'b 0 0 0 1 ; endmodule"
    )
    assert tokenize_verilog(ADDER) == expected.split()


def test_numbers_are_normalized() -> None:
    assert tokenize_verilog("8'hFF") == ["8", "'h", "f", "f"]
    assert tokenize_verilog("'sd12") == ["'sd", "1", "2"]
    assert tokenize_verilog("16 'h_dead") == ["1", "6", "'h", "d", "e", "a", "d"]
    assert tokenize_verilog("x = '0;") == ["id0", "=", "'", "0", ";"]
    assert tokenize_verilog("1.5e3") == ["<real>"]


def test_directives_macros_system_tasks_strings() -> None:
    src = '`define W 8\n`timescale 1ns/1ps\nwire [`W-1:0] x; initial $display("hi"); initial $foo;'
    toks = tokenize_verilog(src)
    assert toks[:3] == ["`define", "id0", "8"]
    assert "`timescale" in toks and "$display" in toks and "$sys" in toks and "<str>" in toks
    assert toks[toks.index("[") + 1 : toks.index("[") + 3] == ["`", "id0"]


def test_escaped_identifiers_and_unknown_characters() -> None:
    toks = tokenize_verilog("wire \\a[0] ; assign \\a[0] = b ; \x01")
    assert toks == ["wire", "id0", ";", "assign", "id0", "=", "id1", ";", "<unk>"]


def test_identifier_cap() -> None:
    src = " ".join(f"w{k}" for k in range(MAX_IDENTIFIERS + 5))
    toks = tokenize_verilog(src)
    assert toks[MAX_IDENTIFIERS - 1] == f"id{MAX_IDENTIFIERS - 1}"
    assert toks[MAX_IDENTIFIERS:] == ["id_unk"] * 5


def test_encode_decode_and_truncation() -> None:
    toks = tokenize_verilog(ADDER)
    ids = encode_tokens(toks)
    assert ids[0] == TOKEN_TO_ID["<bos>"] and ids[-1] == TOKEN_TO_ID["<eos>"]
    assert 1 not in ids  # nothing unknown in a clean design
    assert decode_ids(ids) == toks
    short = encode_tokens(toks, max_len=10)
    assert len(short) == 10 and short[-1] == TOKEN_TO_ID["<eos>"] and short[:9] == ids[:9]
    assert encode_tokens(["not-a-token"], add_special=False) == [1]


def test_lexer_lines() -> None:
    toks = lex_verilog("module m;\n/* a\nb */\nwire x;\nendmodule")
    assert [(t.text, t.line) for t in toks if t.kind == "ident"] == [("m", 1), ("x", 4)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_vocabulary_tokens(text: str) -> None:
    toks = tokenize_verilog(text)
    assert all(t in TOKEN_TO_ID for t in toks)


_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in TOKEN_TO_ID and not re.fullmatch(r"id\d+", s)
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_IDENT, min_size=3, max_size=3, unique=True),
    st.lists(_IDENT, min_size=3, max_size=3, unique=True),
)
def test_renaming_signals_does_not_change_the_stream(old: list[str], new: list[str]) -> None:
    template = "module {0}(input [3:0] {1}, output {2}); assign {2} = ^{1} & 1'b1; endmodule"
    assert tokenize_verilog(template.format(*old)) == tokenize_verilog(template.format(*new))

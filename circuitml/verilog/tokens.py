"""A normalized, closed-vocabulary token stream of Verilog source, for the Verilog encoder of MGVGA.

MGVGA (Wu et al., "Circuit Representation Learning with Masked Gate Modeling and Verilog-AIG Alignment",
ICLR 2025) aligns an AIG encoder with a language model reading the circuit's Verilog. Our Verilog encoder is a
small transformer trained jointly, so the text is normalized into a *closed* vocabulary:

* comments and whitespace are dropped; keywords (Verilog-2005 plus common SystemVerilog), operators and
  punctuation stay as themselves;
* identifiers are renamed per design in order of first appearance: ``id0``, ``id1``, … ``id255``, then
  ``id_unk`` (so renaming signals never changes the stream, and the vocabulary stays finite);
* numbers become digit tokens: ``8'hFF`` → ``8 'h F F`` (width digits, a base token, value digits with
  ``_`` dropped, lower-cased); reals become ``<real>``, strings ``<str>``;
* compiler directives keep their keyword (```define``, ```ifdef``, …); a macro use ```W`` becomes ```` ` ````
  followed by the macro name's canonical identifier; system tasks keep a few known names, else ``$sys``.

The lexer is a single regular expression rather than pyverilog's PLY lexer: pyverilog's lexer needs
iverilog-preprocessed input and raises on characters it does not know, while this one takes raw source —
SystemVerilog included — and never raises (an unknown character becomes ``<unk>``), which is what a
dataset-wide tokenizer needs. The keyword list includes all of pyverilog's lexer keywords.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "VOCAB",
    "TOKEN_TO_ID",
    "PAD",
    "UNK",
    "BOS",
    "EOS",
    "MAX_IDENTIFIERS",
    "VerilogToken",
    "lex_verilog",
    "tokenize_verilog",
    "encode_tokens",
    "decode_ids",
]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
MAX_IDENTIFIERS = 256

KEYWORDS = (
    # Verilog-2005 (IEEE 1364) keywords
    "always and assign automatic begin buf bufif0 bufif1 case casex casez cell cmos config deassign default "
    "defparam design disable edge else end endcase endconfig endfunction endgenerate endmodule endprimitive "
    "endspecify endtable endtask event for force forever fork function generate genvar highz0 highz1 if "
    "ifnone incdir include initial inout input instance integer join large liblist library localparam "
    "macromodule medium module nand negedge nmos nor noshowcancelled not notif0 notif1 or output parameter "
    "pmos posedge primitive pull0 pull1 pulldown pullup pulsestyle_onevent pulsestyle_ondetect rcmos real "
    "realtime reg release repeat rnmos rpmos rtran rtranif0 rtranif1 scalared showcancelled signed small "
    "specify specparam strong0 strong1 supply0 supply1 table task time tran tranif0 tranif1 tri tri0 tri1 "
    "triand trior trireg unsigned use uwire vectored wait wand weak0 weak1 while wire wor xnor xor "
    # SystemVerilog keywords common in synthesizable RTL
    "logic bit byte int shortint longint always_ff always_comb always_latch unique unique0 priority typedef "
    "enum struct union packed interface endinterface modport package endpackage import export return break "
    "continue do foreach final assert assume cover property endproperty sequence endsequence void const "
    "static string type var iff inside"
).split()

DIRECTIVES = (
    "`define `undef `ifdef `ifndef `else `elsif `endif `include `timescale `default_nettype `resetall "
    "`celldefine `endcelldefine `line `pragma `unconnected_drive `nounconnected_drive `begin_keywords "
    "`end_keywords"
).split()

OPERATORS = (
    "<<<= >>>= <<= >>= === !== <<< >>> ** && || == != <= >= << >> ~& ~| ~^ ^~ -> +: -: :: += -= *= /= %= &= |= "
    "^= ++ -- '{ .* ( ) [ ] { } ; , . : ? # @ = + - * / % ! ~ & | ^ < > ' `"
).split()

SYSTEM_TASKS = (
    "$display $write $strobe $monitor $finish $stop $time $realtime $random $signed $unsigned $clog2 $bits "
    "$readmemh $readmemb $fopen $fclose $fwrite $fdisplay $error $warning $info $fatal"
).split()

BASES = ["'b", "'o", "'d", "'h", "'sb", "'so", "'sd", "'sh"]
DIGITS = list("0123456789abcdef") + ["x", "z", "?"]
SPECIAL = [PAD, UNK, BOS, EOS, "<str>", "<real>", "$sys", "id_unk"]
IDENTIFIERS = [f"id{k}" for k in range(MAX_IDENTIFIERS)]

VOCAB: list[str] = list(
    dict.fromkeys(
        [*SPECIAL, *KEYWORDS, *DIRECTIVES, *OPERATORS, *SYSTEM_TASKS, *BASES, *DIGITS, *IDENTIFIERS]
    )
)
"""The closed vocabulary: ``<pad>`` is id 0, ``<unk>`` id 1, ``<bos>`` 2, ``<eos>`` 3."""

TOKEN_TO_ID: dict[str, int] = {tok: k for k, tok in enumerate(VOCAB)}

_KEYWORDS = frozenset(KEYWORDS)
_DIRECTIVES = frozenset(DIRECTIVES)
_SYSTEM = frozenset(SYSTEM_TASKS)

_OPS_SORTED = sorted(set(OPERATORS) - {"'", "`", "'{"}, key=len, reverse=True)
_LEXER = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>"(?:[^"\\\n]|\\.)*"?)
  | (?P<based>(?:[0-9][0-9_]*)?\s*'\s*[sS]?[bBoOdDhH]\s*[0-9a-fA-FxXzZ?_]+)
  | (?P<unbased>'[01xXzZ](?![0-9A-Za-z_]))
  | (?P<real>[0-9][0-9_]*(?:\.[0-9][0-9_]*(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))
  | (?P<decimal>[0-9][0-9_]*)
  | (?P<directive>`[A-Za-z_][A-Za-z0-9_]*)
  | (?P<system>\$[A-Za-z0-9_$]+)
  | (?P<escaped>\\\S+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op>"""
    + "|".join(re.escape(op) for op in _OPS_SORTED)
    + r"""|'\{|')
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class VerilogToken:
    """One raw lexeme: ``kind`` is one of keyword, ident, number, real, string, directive, macro, system,
    op, other; ``line`` is 1-based."""

    kind: str
    text: str
    line: int


def lex_verilog(source: str) -> list[VerilogToken]:
    """Split Verilog/SystemVerilog source into raw lexemes (comments and whitespace dropped; never raises)."""
    out: list[VerilogToken] = []
    line = 1
    for m in _LEXER.finditer(source):
        kind = m.lastgroup
        text = m.group()
        if kind in ("ws", "comment"):
            pass
        elif kind == "ident":
            out.append(VerilogToken("keyword" if text in _KEYWORDS else "ident", text, line))
        elif kind == "escaped":
            out.append(VerilogToken("ident", text[1:], line))
        elif kind in ("based", "unbased", "decimal"):
            out.append(VerilogToken("number", text, line))
        elif kind == "directive":
            out.append(VerilogToken("directive" if text in _DIRECTIVES else "macro", text, line))
        else:
            out.append(VerilogToken(kind, text, line))
        line += text.count("\n")
    return out


def _number_tokens(text: str) -> list[str]:
    text = re.sub(r"[\s_]", "", text).lower()
    if "'" not in text:
        return list(text)
    width, rest = text.split("'", 1)
    if len(rest) == 1:  # unbased unsized '0 '1 'x 'z
        return ["'", rest]
    signed = rest[0] == "s"
    base = "'" + ("s" if signed else "") + rest[1 if signed else 0]
    value = rest[2 if signed else 1 :]
    return [*width, base, *value]


def tokenize_verilog(source: str, max_identifiers: int = MAX_IDENTIFIERS) -> list[str]:
    """Normalized token stream of one design's source (see the module docstring for the rules).

    Example:
        ``module add(input [7:0] a, output y); assign y = a[0] ^ 8'hF0; endmodule`` →
        ``module id0 ( input [ 7 : 0 ] id1 , output id2 ) ; assign id2 = id1 [ 0 ] ^ 8 'h f 0 ; endmodule``
    """
    names: dict[str, str] = {}
    out: list[str] = []

    def ident(name: str) -> str:
        tok = names.get(name)
        if tok is None:
            tok = f"id{len(names)}" if len(names) < max_identifiers else "id_unk"
            names[name] = tok
        return tok

    for t in lex_verilog(source):
        k = t.kind
        if k in ("keyword", "op", "directive"):
            out.append(t.text)
        elif k == "ident":
            out.append(ident(t.text))
        elif k == "number":
            out.extend(_number_tokens(t.text))
        elif k == "macro":
            out.extend(["`", ident(t.text[1:])])
        elif k == "system":
            out.append(t.text if t.text in _SYSTEM else "$sys")
        elif k == "string":
            out.append("<str>")
        elif k == "real":
            out.append("<real>")
        else:
            out.append(UNK)
    return out


def encode_tokens(tokens: Iterable[str], max_len: int | None = None, add_special: bool = True) -> list[int]:
    """Token ids in :data:`VOCAB` (unknown tokens → ``<unk>`` = 1), wrapped in ``<bos>`` … ``<eos>``.

    With ``max_len``, the sequence is cut to at most ``max_len`` ids, keeping ``<eos>`` last.
    """
    ids = [TOKEN_TO_ID.get(t, 1) for t in tokens]
    if add_special:
        ids = [TOKEN_TO_ID[BOS], *ids, TOKEN_TO_ID[EOS]]
    if max_len is not None and len(ids) > max_len:
        if max_len <= 0:
            return []
        ids = ids[: max_len - 1] + ([TOKEN_TO_ID[EOS]] if add_special else ids[max_len - 1 : max_len])
    return ids


def decode_ids(ids: Iterable[int], skip_special: bool = True) -> list[str]:
    """Tokens of an id sequence (``<pad>``/``<bos>``/``<eos>`` dropped when ``skip_special``)."""
    skip = {0, TOKEN_TO_ID[BOS], TOKEN_TO_ID[EOS]} if skip_special else set()
    return [VOCAB[i] if 0 <= i < len(VOCAB) else UNK for i in ids if i not in skip]

"""SQuAD v1.1 / v2.0 reader.

Format: Rajpurkar et al., "SQuAD: 100,000+ Questions for Machine Comprehension of Text" (EMNLP 2016) and
"Know What You Don't Know: Unanswerable Questions for SQuAD" (ACL 2018)::

    {"version": "v2.0", "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [
        {"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": int}], "is_impossible": bool}
    ]}]}]}

Every structural problem is reported as a :class:`~circuitml.errors.DatasetError` naming the file and the JSON path
of the offending value (``data[0].paragraphs[3].qas[7].answers[0].answer_start``) and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitml.errors import DatasetError
from circuitml.fileio import load_json, read_bytes

__all__ = ["SquadExample", "SquadAnswer", "read_squad", "parse_squad", "squad_version"]


@dataclass(frozen=True)
class SquadAnswer:
    text: str
    start: int  # character offset in the context


@dataclass
class SquadExample:
    """One question over one context; ``answers`` is empty for an unanswerable (v2.0) question."""

    id: str
    title: str
    context: str
    question: str
    answers: list[SquadAnswer] = field(default_factory=list)
    is_impossible: bool = False
    # v2.0: the span a crowdworker wrote an unanswerable question around ("plausible_answers"); never an answer
    plausible_answers: list[SquadAnswer] = field(default_factory=list)


def _expect(cond: bool, file: str, path: str, expected: str, got: Any = None) -> None:
    if not cond:
        shown = f", got {type(got).__name__} {str(got)[:40]!r}" if got is not None else ""
        raise DatasetError(f"{file}: {path}: expected {expected}{shown}")


def parse_squad(obj: Any, file: str = "<json>", check_offsets: bool = True) -> list[SquadExample]:
    """Validate a decoded SQuAD JSON object and flatten it into examples."""
    _expect(isinstance(obj, dict), file, "$", "an object with a 'data' list", obj)
    data = obj.get("data")
    _expect(isinstance(data, list), file, "$.data", "a list of articles", data)
    examples: list[SquadExample] = []
    seen: set[str] = set()
    for a, article in enumerate(data):
        ap = f"data[{a}]"
        _expect(isinstance(article, dict), file, ap, "an article object", article)
        title = article.get("title", "")
        paragraphs = article.get("paragraphs")
        _expect(isinstance(paragraphs, list), file, f"{ap}.paragraphs", "a list", paragraphs)
        for p, para in enumerate(paragraphs):
            pp = f"{ap}.paragraphs[{p}]"
            _expect(isinstance(para, dict), file, pp, "a paragraph object", para)
            context = para.get("context")
            _expect(isinstance(context, str), file, f"{pp}.context", "a string", context)
            qas = para.get("qas")
            _expect(isinstance(qas, list), file, f"{pp}.qas", "a list of questions", qas)
            for q, qa in enumerate(qas):
                qp = f"{pp}.qas[{q}]"
                _expect(isinstance(qa, dict), file, qp, "a question object", qa)
                qid, question = qa.get("id"), qa.get("question")
                _expect(isinstance(qid, (str, int)), file, f"{qp}.id", "a string id", qid)
                _expect(str(qid) not in seen, file, f"{qp}.id", "a unique id", qid)
                seen.add(str(qid))
                _expect(isinstance(question, str), file, f"{qp}.question", "a string", question)
                impossible = qa.get("is_impossible", False)
                _expect(
                    isinstance(impossible, bool), file, f"{qp}.is_impossible", "true or false", impossible
                )
                raw_answers = qa.get("answers", [])
                _expect(isinstance(raw_answers, list), file, f"{qp}.answers", "a list", raw_answers)
                answers = []
                plausible = []
                if impossible and "plausible_answers" in qa:
                    raw = qa["plausible_answers"]
                    _expect(isinstance(raw, list), file, f"{qp}.plausible_answers", "a list", raw)
                    plausible = [
                        _answer(ans, context, file, f"{qp}.plausible_answers[{k}]", check_offsets)
                        for k, ans in enumerate(raw)
                    ]
                if not impossible:
                    answers = [
                        _answer(ans, context, file, f"{qp}.answers[{k}]", check_offsets)
                        for k, ans in enumerate(raw_answers)
                    ]
                    _expect(
                        bool(answers), file, f"{qp}.answers", "at least one answer (or is_impossible: true)"
                    )
                examples.append(
                    SquadExample(str(qid), str(title), context, question, answers, impossible, plausible)
                )
    return examples


def _answer(ans: Any, context: str, file: str, xp: str, check_offsets: bool) -> SquadAnswer:
    """One answer object at JSON path ``xp``, checked: text, an offset inside the context, the text there."""
    _expect(isinstance(ans, dict), file, xp, "an answer object", ans)
    text, start = ans.get("text"), ans.get("answer_start")
    _expect(isinstance(text, str), file, f"{xp}.text", "a string", text)
    _expect(
        isinstance(start, int) and not isinstance(start, bool) and 0 <= start <= len(context),
        file,
        f"{xp}.answer_start",
        f"an offset in 0..{len(context)}",
        start,
    )
    if check_offsets:
        _expect(
            context[start : start + len(text)] == text,
            file,
            f"{xp}",
            "answer text at answer_start in the context",
            context[start : start + len(text)],
        )
    return SquadAnswer(text, start)


def squad_version(obj: Any) -> str:
    """``"v2.0"`` when the file says so or has unanswerable questions, else ``"v1.1"``."""
    version = str(obj.get("version", "")) if isinstance(obj, dict) else ""
    if version.startswith("v2") or version.startswith("2"):
        return "v2.0"
    for article in obj.get("data", []) if isinstance(obj, dict) else []:
        for para in article.get("paragraphs", []) if isinstance(article, dict) else []:
            for qa in para.get("qas", []) if isinstance(para, dict) else []:
                if isinstance(qa, dict) and "is_impossible" in qa:
                    return "v2.0"
    return "v1.1"


def read_squad(path: str | os.PathLike, check_offsets: bool = True) -> tuple[list[SquadExample], str]:
    """Read a SQuAD JSON file; returns ``(examples, version)``.

    Raises:
        DatasetError: invalid JSON (with line and column) or a structural problem (with the JSON path).
    """
    path = Path(path)
    raw = read_bytes(path, error=DatasetError, what="SQuAD JSON file")
    # editors on Windows (and some annotation tools) start UTF-8 files with a byte-order mark
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    obj = load_json(raw, path, error=DatasetError)
    return parse_squad(obj, file=str(path), check_offsets=check_offsets), squad_version(obj)

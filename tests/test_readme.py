"""Every Python block of README.md runs as written (blocks that need absent files are skipped, saying which)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_PATH_LITERAL = re.compile(r"""["']([^"'\s]*/[^"'\s]*)["']""")


def _blocks() -> list:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = _BLOCK.findall(text)
    assert blocks, "README.md has no python blocks"
    return [pytest.param(code, id=f"block{k}-{code.splitlines()[0][:40]}") for k, code in enumerate(blocks)]


@pytest.mark.parametrize("code", _blocks())
def test_readme_python_block_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # README paths are relative to the repository root
    missing = [p for p in _PATH_LITERAL.findall(code) if not Path(p).exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (made by an earlier README command or third-party data)")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})

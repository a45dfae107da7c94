"""Every training command takes ``--threads`` and ``--device`` (a newcomer's path, issue 17 item 8)."""

from __future__ import annotations

import typer

TRAINING_COMMANDS = {
    "pretrain",
    "evaluate",
    "evaluate-suite",
    "qa train",
    "shift circuits",
    "shift text",
    "pill train",
    "pill compare",
    "embed",  # not training, but it runs an encoder over many files
}


def _commands(cmd, path=()):
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), {opt for p in cmd.params for opt in getattr(p, "opts", [])}


def test_every_training_command_takes_threads_and_device() -> None:
    from circuitml.cli import app

    found = dict(_commands(typer.main.get_command(app)))
    assert TRAINING_COMMANDS <= set(found), TRAINING_COMMANDS - set(found)
    missing = {name: {"--threads", "--device"} - found[name] for name in TRAINING_COMMANDS}
    assert not any(missing.values()), missing


def test_refused_runtime_leaves_process_state_as_it_was() -> None:
    import pytest
    import torch
    from circuitml.tasks.common import configure_runtime

    from circuitml.errors import ConfigError

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        torch.use_deterministic_algorithms(False)
        for threads, device in ((1, "tpu"), (0, "cpu"), (2, "cuda:x")):
            with pytest.raises(ConfigError):
                configure_runtime(threads, device)
            assert not torch.are_deterministic_algorithms_enabled(), (threads, device)
            assert torch.get_num_threads() == before[1], (threads, device)
    finally:
        torch.use_deterministic_algorithms(before[0])


def test_scoped_runtime_hands_the_callers_settings_back() -> None:
    import pytest
    import torch
    from circuitml.tasks.common import scoped_runtime

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    try:
        torch.use_deterministic_algorithms(False)
        with pytest.raises(KeyError), scoped_runtime(1, "cpu") as dev:
            assert dev.type == "cpu" and torch.get_num_threads() == 1
            assert torch.are_deterministic_algorithms_enabled()
            raise KeyError("leaves the block early")
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == before[1]
    finally:
        torch.use_deterministic_algorithms(before[0])

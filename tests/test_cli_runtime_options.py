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

"""Maps the repository's root folders into the single ``circuitml`` import namespace.

The repository keeps ``moe/``, ``datasets/`` and ``tasks/`` beside ``circuitml/``; installed, they become
``circuitml.moe``, ``circuitml.datasets`` and ``circuitml.tasks`` so that no top-level ``datasets``, ``moe`` or
``tasks`` module shadows a widely used package. Works for wheel and editable installs alike.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "circuitml": "circuitml",
    "circuitml.moe": "moe",
    "circuitml.datasets": "datasets",
    "circuitml.tasks": "tasks",
}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for package, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(here / folder).parts
            found.append(".".join((package, *parts)))
    return found


# shipped pretrained encoders (circuitml.encoders.shipped) are package data of circuitml.encoders
PACKAGE_DATA = {
    "circuitml.encoders": ["pretrained/*/*.json", "pretrained/*/*.safetensors", "pretrained/*/*.md"]
}

setup(packages=_packages(), package_dir=ROOTS, package_data=PACKAGE_DATA)

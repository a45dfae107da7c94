"""Remove the source files PyG writes to the temp folder for its message-passing templates, at exit.

PyG (>= 2.5) renders an optimized ``propagate`` (and ``edge_updater``) of every ``MessagePassing`` class from a
jinja template, writes it to ``tempfile.NamedTemporaryFile(delete=False)`` and imports it from there
(``torch_geometric.template.module_from_template``). Nothing removes those files, so every process that built a
``GENConv`` left a ``torch_geometric.nn.conv.gen_conv_GENConv_propagate_*.py`` in ``/tmp``. They stay while
the process runs (tracebacks and ``inspect`` read them) and are removed when it exits.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile

__all__ = ["remove_template_files"]

_SUFFIXES = ("_propagate", "_edge_updater")  # the module names PyG gives its rendered templates


def remove_template_files() -> list[str]:
    """Delete the rendered template files of the PyG modules loaded in this process; returns their paths."""
    tmp = os.path.realpath(tempfile.gettempdir())
    removed = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not (file and name.startswith("torch_geometric.") and name.endswith(_SUFFIXES)):
            continue
        if os.path.dirname(os.path.realpath(file)) != tmp:  # only files PyG put in the temp folder
            continue
        try:
            os.unlink(file)
            removed.append(file)
        except OSError:
            pass
    return removed


atexit.register(remove_template_files)

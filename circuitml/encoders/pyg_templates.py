"""Keep PyG's rendered message-passing templates in memory and delete their files from the temp folder.

PyG (>= 2.5) renders an optimized ``propagate`` (and ``edge_updater``) of every ``MessagePassing`` class from a
jinja template, writes it to ``tempfile.NamedTemporaryFile(delete=False)`` and imports it from there
(``torch_geometric.template.module_from_template``). Nothing removes those files, so every process that built a
``GENConv`` left a ``torch_geometric.nn.conv.gen_conv_GENConv_propagate_*.py`` in the temp folder.

Removing them at exit is not enough: exit handlers do not run when a process dies by a signal (a scheduler's
SIGTERM, the OOM killer's SIGKILL). A SIGTERM handler would delay the kill of a process busy in native code,
run in forked workers too, and replace the default action users rely on; a per-process folder would need PyG to
take a directory it ignores. So once the classes are built (:func:`~circuitml.encoders.build_encoder` calls
:func:`release_template_files`), each template module gets a loader that serves its source from memory, the
line cache gets the lines, and the file is deleted: tracebacks, ``inspect.getsource`` and TorchScript read the
source as before, and a process killed at any later moment leaves nothing behind. Files of templates rendered
outside circuitml's builders are still removed at exit.

The template module of a class defined outside PyG is named after that class's module
(``circuitml.encoders.pyg_stacks_CSRGCNConv_propagate``), so modules are recognized by their name's suffix and their
file, ``<module name>_<random>.py`` in the temp folder, not by a ``torch_geometric.`` prefix.

A file belongs to the process that rendered it: a forked child (``multiprocessing``, DataLoader workers) serves
the templates it inherits from memory as soon as it starts (``os.register_at_fork``), so it never deletes a file
its parent still reads, and never needs one its parent has deleted.
"""

from __future__ import annotations

import atexit
import linecache
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

__all__ = ["release_template_files", "remove_template_files"]

_SUFFIXES = ("_propagate", "_edge_updater")  # the module names PyG gives its rendered templates


class _SourceInMemory:
    """The ``__loader__`` of a template module whose file is gone: ``linecache`` asks it for the source (after a
    ``linecache.clearcache()`` too)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def get_source(self, name: str) -> str:
        return self.source


def _template_modules() -> Iterator[tuple[ModuleType, str]]:
    """The rendered template modules loaded in this process whose file PyG put in the temp folder."""
    tmp = os.path.realpath(tempfile.gettempdir())
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not (file and name.endswith(_SUFFIXES)):
            continue
        if isinstance(getattr(module, "__loader__", None), _SourceInMemory):
            continue  # released already
        base = os.path.basename(file)
        if (
            base.startswith(f"{name}_")
            and base.endswith(".py")
            and os.path.dirname(os.path.realpath(file)) == tmp
        ):
            yield module, file


def _serve_from_memory(module: ModuleType, file: str) -> bool:
    """Give ``module`` a loader and line-cache entry holding its source; False when the file is gone."""
    try:
        with open(file, encoding="utf-8") as fh:
            source = fh.read()
    except OSError:
        return False
    module.__loader__ = _SourceInMemory(source)
    # mtime None: checkcache never drops the entry, as for any source served by a loader
    linecache.cache[file] = (len(source), None, source.splitlines(keepends=True), file)
    return True


def release_template_files() -> list[str]:
    """Serve the source of every rendered template module from memory and delete its file; returns the paths."""
    released = []
    for module, file in _template_modules():
        if not _serve_from_memory(module, file):
            continue  # gone: nothing to keep
        try:
            os.unlink(file)
            released.append(file)
        except OSError:
            pass
    return released


def _keep_inherited_in_memory() -> None:
    """In a forked child: the template files on disk are its parent's, which deletes them (released or at
    exit); the child serves their source from memory, so it neither deletes nor needs them."""
    for module, file in _template_modules():
        _serve_from_memory(module, file)


def remove_template_files() -> list[str]:
    """Delete the rendered template files still on disk (at exit: their source is no longer needed)."""
    removed = []
    for _module, file in _template_modules():
        try:
            os.unlink(file)
            removed.append(file)
        except OSError:
            pass
    return removed


atexit.register(remove_template_files)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_keep_inherited_in_memory)

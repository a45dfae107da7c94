"""PyG's rendered conv templates leave no file in the temp folder, even when the process dies by a signal."""

from __future__ import annotations

import inspect
import linecache
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
import torch

_CHILD = """
import sys, tempfile, time
from pathlib import Path
from torch_geometric.nn import GCNConv
from circuitml.encoders import build_encoder
from circuitml.pretrain.mgm import LatentDecoder

GCNConv(4, 4)  # PyG renders GCNConv's template to the temp folder
rendered = len(list(Path(tempfile.gettempdir()).glob("torch_geometric*.py")))
# gcn's conv is circuitml's own CSRGCNConv: its template module is named circuitml.encoders.pyg_stacks_...
for kind, options in [("deepgcn", {}), ("gat", {"heads": 2}), ("moe_gnn", {}), ("gcn", {})]:
    build_encoder(kind, hidden=8, num_layers=1, options=options)
LatentDecoder(8, 1)
print("ready", rendered, flush=True)
time.sleep(120)
"""


def test_a_process_killed_by_sigterm_leaves_no_template_file(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("ready"), child.stderr.read()[-2000:] if not line else line
        assert int(line.split()[1]) >= 1  # PyG did write its template there
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == -signal.SIGTERM  # the default action: no handler was installed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert sorted(p.name for p in tmp.glob("*.py")) == []


_FORK = """
import inspect, os, sys, tempfile
import torch
from torch_geometric.nn import GCNConv
from circuitml.encoders import build_encoder

GCNConv(4, 4)  # rendered outside circuitml's builders: the file stays until this process exits
(file,) = [str(p) for p in Path(tempfile.gettempdir()).glob("*GCNConv_propagate_*.py")]
pid = os.fork()
if pid == 0:  # the child builds an encoder (which releases templates) and exits normally (atexit runs)
    build_encoder("sage", hidden=4, num_layers=1)
    sys.exit(0)
assert os.waitpid(pid, 0)[1] == 0
assert os.path.exists(file), "the child deleted its parent's template file"
assert inspect.getsource(GCNConv.propagate).lstrip().startswith("def propagate(")
torch.jit.script(GCNConv(4, 4))  # TorchScript reads the template's source
print("ok", flush=True)
""".replace("import inspect,", "from pathlib import Path\nimport inspect,")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_leaves_its_parents_template_files_alone(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _FORK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.py")) == []  # and the parent removed it at exit


def test_released_templates_keep_their_source_for_inspect_tracebacks_and_torchscript() -> None:
    from torch_geometric.nn import SAGEConv

    from circuitml.encoders import build_encoder
    from circuitml.encoders.pyg_templates import release_template_files

    conv = SAGEConv(4, 4)  # not through build_encoder: rendered (or rendered earlier), maybe still on disk
    release_template_files()
    build_encoder("sage", hidden=4, num_layers=1)
    file = inspect.getsourcefile(SAGEConv.propagate)
    assert Path(file).parent.resolve() == Path(tempfile.gettempdir()).resolve() and not os.path.exists(file)
    linecache.clearcache()  # the source comes back from the module's loader
    assert inspect.getsource(SAGEConv.propagate).lstrip().startswith("def propagate(")
    # an edge from a node that does not exist fails inside the template
    with pytest.raises(IndexError) as err:
        conv(torch.zeros(3, 4), torch.tensor([[7], [0]]))
    text = "".join(traceback.format_exception(err.value))
    assert f'File "{file}"' in text and "def " not in text.split(f'File "{file}"')[1].splitlines()[0]
    assert text.split(f'File "{file}"')[1].splitlines()[1].strip()  # the source line is shown
    scripted = torch.jit.script(SAGEConv(4, 4))
    assert scripted(torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])).shape == (3, 4)

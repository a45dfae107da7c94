"""Shared fixtures: seeds, the third-party circuits in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CIRCUITML_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Property tests run the same examples on every run (the suite's seeds are fixed); exploring new examples is a
# separate, deliberate run: HYPOTHESIS_PROFILE=explore python -m pytest ...
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# Tests run as two xdist workers on two cores, beside Yosys/ABC subprocesses: one intra-op thread per worker
# avoids oversubscription, which slows small torch ops by one to two orders of magnitude.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one intra-op thread again, whatever an earlier test in the worker set."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# Top modules of the OpenABC-D RTL folders (bench_rtl/src/<design>), from the data README.
OPENABC_TOPS = {
    "i2c": "i2c_master_top",
    "sasc": "sasc_top",
    "simple_spi": "simple_spi_top",
    "spi": "spi_top",
    "ss_pcm": "pcm_slv_top",
    "usb_phy": "usb_phy",
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; tests that use it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party circuits not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_files(pattern: str) -> list[Path]:
    """Files under ../shared/data matching a glob (empty when the folder is absent), for parametrize."""
    if not SHARED_DATA.is_dir():
        return []
    return sorted(SHARED_DATA.glob(pattern))


def pytest_collection_modifyitems(config, items) -> None:
    """A parametrization left empty because its files are absent says so, not "got empty parameter set"."""
    for item in items:
        mark = item.get_closest_marker("skip")
        reason = str(mark.kwargs.get("reason", "")) if mark is not None else ""
        if not reason.startswith("got empty parameter set"):
            continue
        where = (
            f"third-party circuits not found at {SHARED_DATA} (set CIRCUITML_SHARED_DATA)"
            if not SHARED_DATA.is_dir()
            else f"no matching files under {SHARED_DATA}"
        )
        item.add_marker(pytest.mark.skip(reason=f"no parameters: {where}"), append=False)

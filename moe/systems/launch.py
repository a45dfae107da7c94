"""Run a function on ``W`` local processes joined in a gloo (CPU) or NCCL group, for tests and benches.

``spawn_group(fn, world, *args)`` starts ``world`` processes (``spawn`` context), each initialising the group
on a free local port and calling ``fn(rank, world, *args)``; it returns the ranks' return values in rank order,
or raises ``RuntimeError`` with the failing rank's traceback, or on timeout (the processes are killed).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, backend: str, args: tuple, out) -> None:
    import torch
    import torch.distributed as dist

    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group(backend, rank=rank, world_size=world)
        result = fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
        out.put((rank, True, result))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def spawn_group(
    fn: Callable[..., Any], world: int, *args: Any, backend: str = "gloo", timeout: float = 60.0
) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world-1, world, *args)]``, each run in its own process of one group."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, backend, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        while len(results) < world:
            try:
                rank, ok, payload = out.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(
                    f"spawn_group: no answer from ranks {sorted(set(range(world)) - set(results))} "
                    f"within {timeout:.0f} s"
                ) from None
            if not ok:
                raise RuntimeError(f"spawn_group: rank {rank} failed:\n{payload}")
            results[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world)]

"""Expert parallelism: 2 gloo processes on CPU give the outputs and gradients of one process holding all experts."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

E, D, H, K, N_PER_RANK, WORLD = 4, 8, 12, 2, 10, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    status = Path(out_dir) / f"rank{rank}.txt"
    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        from circuitml.moe import FFNExperts, build_router
        from circuitml.moe.parallel import ExpertParallelFFN

        torch.manual_seed(0)  # same full model and data on both ranks
        router = build_router("topk", d_model=D, num_experts=E, top_k=K, capacity_factor=1.0).double()
        full = FFNExperts(E, D, H, bias=True).double()
        x_all = torch.randn(WORLD * N_PER_RANK, D, dtype=torch.float64)
        # Reference: one process, every expert, all tokens.
        # Routing is computed once (capacity drops included) and fed to both, so the comparison isolates the
        # sharded experts and the two exchanges.
        with torch.no_grad():
            r = router(x_all)
        x_ref = x_all.clone().requires_grad_(True)
        w_ref = r.weights.clone().requires_grad_(True)
        y_ref = full(x_ref, r.indices, w_ref)
        g_all = torch.randn_like(y_ref)
        y_ref.backward(g_all)

        ep = ExpertParallelFFN(E, D, H, bias=True).double()
        ep.load_from_full(full)
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        x = x_all[rows].clone().requires_grad_(True)
        idx, w = r.indices[rows], r.weights[rows].clone().requires_grad_(True)
        assert (r.indices == -1).any(), "capacity should drop some slots so dropped pairs are exercised"
        y = ep(x, idx, w)
        y.backward(g_all[rows])
        torch.testing.assert_close(y, y_ref[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x.grad, x_ref.grad[rows], rtol=1e-10, atol=1e-12)
        sl = slice(ep.first_expert, ep.first_expert + ep.num_local)
        torch.testing.assert_close(
            ep.local.gate_up_proj.grad, full.gate_up_proj.grad[sl], rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(ep.local.down_proj.grad, full.down_proj.grad[sl], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ep.local.down_bias.grad, full.down_bias.grad[sl], rtol=1e-10, atol=1e-12)
        # Combine-weight gradients flow back through the return exchange too.
        torch.testing.assert_close(w.grad, w_ref.grad[rows], rtol=1e-10, atol=1e-12)
        dist.barrier()
        dist.destroy_process_group()
        status.write_text("ok")
    except BaseException:
        status.write_text(traceback.format_exc())
        raise


def test_expert_parallel_matches_single_process(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, str(tmp_path))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "expert-parallel workers timed out"
    for rank in range(WORLD):
        status = (tmp_path / f"rank{rank}.txt").read_text()
        assert status == "ok", f"rank {rank} failed:\n{status}"
    assert all(p.exitcode == 0 for p in procs)


def test_expert_parallel_needs_initialized_group() -> None:
    from circuitml.moe.parallel import ExpertParallelFFN

    from circuitml.errors import ConfigError

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(ConfigError, match="not initialized"):
        ExpertParallelFFN(4, 8, 8)

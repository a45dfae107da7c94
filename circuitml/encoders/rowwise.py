"""Row-wise kernels for no-grad inference on large graphs: LayerNorm + ReLU in one pass, and row ranges on threads.

Layer normalization (Ba, Kiros, Hinton, "Layer Normalization", arXiv:1607.06450, 2016) of a row ``x`` followed by
a ReLU,

.. math::
    y = \\max\\Big(0,\\ \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} \\odot \\gamma + \\beta\\Big), \\qquad
    \\mu = \\tfrac{1}{d}\\textstyle\\sum_c x_c, \\quad \\sigma^2 = \\tfrac{1}{d}\\textstyle\\sum_c (x_c - \\mu)^2,

is what DeeperGCN runs twice per block (the block's pre-activation and inside GENConv's MLP). torch's CPU
LayerNorm takes ~80 us for a ``[1024, 128]`` float32 block and the ReLU after it another pass; the compiled loop
below does both in one pass over a cache-resident row in ~25 us (measured, 1 thread). It keeps no statistics for a
backward, so it is only for ``torch.no_grad()`` paths; outputs equal ``relu(layer_norm(x))`` to float tolerance
(tested).

The kernels release the GIL (``nogil``), so :func:`parallel_rows` runs one call per thread on disjoint row ranges:
the compiled passes then use both cores as torch's matmuls do.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from circuitml.kernels import njit

__all__ = ["layer_norm_relu", "parallel_rows"]

_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FAST)
def _layer_norm_relu_kernel(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> None:
    n, d = x.shape
    zero = x.dtype.type(0.0)
    inv_d = x.dtype.type(1.0 / d)
    ep = x.dtype.type(eps)
    one = x.dtype.type(1.0)
    for i in range(n):
        # Accumulate in the row's dtype: a float64 accumulator stops LLVM from vectorizing the float32 row.
        mean = zero
        for c in range(d):
            mean += x[i, c]
        mean *= inv_d
        var = zero
        for c in range(d):
            dev = x[i, c] - mean
            var += dev * dev
        r = one / math.sqrt(var * inv_d + ep)
        for c in range(d):
            out[i, c] = max((x[i, c] - mean) * r * w[c] + b[c], zero)


def layer_norm_relu(x: Tensor, norm: torch.nn.LayerNorm, out: Tensor | None = None) -> Tensor:
    """``relu(norm(x))`` for a contiguous float32/64 CPU ``[rows, d]`` tensor, without autograd; ``out`` may be
    ``x`` (in place)."""
    out = torch.empty_like(x) if out is None else out
    return layer_norm_relu_fn(norm, x.dtype)(x, out)


def layer_norm_relu_fn(norm: torch.nn.LayerNorm, dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    """:func:`layer_norm_relu` with the affine parameters converted once, for a loop over many row chunks."""
    d = int(norm.normalized_shape[0])
    w = (norm.weight.detach() if norm.weight is not None else torch.ones(d)).to(dtype).contiguous().numpy()
    b = (norm.bias.detach() if norm.bias is not None else torch.zeros(d)).to(dtype).contiguous().numpy()
    eps = float(norm.eps)

    def run(x: Tensor, out: Tensor) -> Tensor:
        _layer_norm_relu_kernel(x.numpy(), w, b, eps, out.numpy())
        return out

    return run


_POOL: ThreadPoolExecutor | None = None
MIN_ROWS_PER_THREAD = 4096


def parallel_rows(
    fn: Callable[[int, int], object], n: int, threads: int, *, one_thread_ops: bool = False
) -> None:
    """Run ``fn(start, stop)`` over ``threads`` contiguous row ranges of ``0 .. n`` at once (``fn`` must release
    the GIL, as the nogil kernels do, and write disjoint rows).

    The pool's threads run torch ops on one intra-op thread each: a row range per core already, and small matmuls
    split across OpenMP threads lose more to synchronisation than they gain (measured at 1024 rows: 3.5x slower
    on 2 threads). With ``one_thread_ops`` a single range also goes to a pool thread, unless the caller runs on
    one thread itself: the caller's own count (the user's setting) is never changed.
    """
    # Below a few thousand rows a thread hop costs more than it saves.
    threads = max(1, min(threads, n // MIN_ROWS_PER_THREAD or 1))
    if threads == 1 and not (one_thread_ops and torch.get_num_threads() > 1):
        fn(0, n)
        return
    pool = _pool(threads)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    futures = [pool.submit(fn, int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    for f in futures:
        f.result()


def _one_intra_op_thread(started: threading.Barrier) -> None:
    torch.get_num_threads()  # torch's lazy per-thread start first, or it would reset the count at the first op
    torch.set_num_threads(1)
    started.wait()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool, grown when asked for more threads, its workers started at one intra-op thread each.

    ``torch.set_num_threads`` in a worker also sets the count that threads started later begin with; the caller
    puts its own count back once every worker has started, so no thread of the user's changes its setting.
    """
    global _POOL
    if _POOL is not None and _POOL._max_workers >= threads:  # noqa: SLF001
        return _POOL
    caller = torch.get_num_threads()
    started = threading.Barrier(threads + 1)
    pool = ThreadPoolExecutor(
        max_workers=threads,
        thread_name_prefix="circuitml-rows",
        initializer=_one_intra_op_thread,
        initargs=(started,),
    )
    for _ in range(threads):  # no worker is idle before the barrier opens: each submit starts one
        pool.submit(int)
    started.wait(timeout=60)
    torch.set_num_threads(caller)
    if _POOL is not None:
        _POOL.shutdown(wait=False)
    _POOL = pool
    return pool

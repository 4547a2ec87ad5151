"""CPU thread budget of a process: torch's intra-op threads and the BLAS/OpenMP pools of numpy.

On a 2-core machine a process that already runs torch kernels (or shares the cores with
another process) loses most of its time when numpy's BLAS pool spins up its own threads on
small matrices: the simulator renders a 200x200 frame in ~0.1 s with one BLAS thread and ~0.5 s
with the default pool next to a busy trainer. Entry points (the CLI, the nodes, the tests) call
:func:`limit_threads` once.
"""
from __future__ import annotations

__all__ = ["limit_threads"]

_limiter = None


def limit_threads(torch_threads: int | None = None, blas_threads: int = 1) -> None:
    """Cap the BLAS/OpenMP pools at ``blas_threads`` and, when given, torch at ``torch_threads``."""
    global _limiter
    import os

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(blas_threads))  # pools not loaded yet
    import numpy  # noqa: F401  (load the BLAS pool so that the limit below reaches it)

    try:
        from threadpoolctl import threadpool_limits

        _limiter = threadpool_limits(limits=blas_threads, user_api="blas")
    except ImportError:  # pragma: no cover - a dependency; keep going without the cap
        pass
    if torch_threads is not None:
        import torch

        torch.set_num_threads(max(1, int(torch_threads)))

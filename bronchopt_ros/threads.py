"""CPU thread budget of a process: torch's intra-op threads and the BLAS/OpenMP pools of numpy.

On a 2-core machine a process that already runs torch kernels (or shares the cores with
another process) loses most of its time when numpy's BLAS pool spins up its own threads on
small matrices: the simulator renders a 200x200 frame in ~0.1 s with one BLAS thread and ~0.5 s
with the default pool next to a busy trainer. Entry points (the CLI, the nodes, the tests) call
:func:`limit_threads` once.
"""
from __future__ import annotations

__all__ = ["limit_threads", "quick_gil_handoff"]

#: Python's GIL switch interval for processes that run torch / OpenCV on several threads. A thread
#: returning from a C call that released the GIL waits for it behind any thread running Python
#: for up to the switch interval (default 5 ms); the encoder and the solver make hundreds of such
#: calls a frame, so with the encoder on a second thread beside a busy publisher (the node's flood
#: test) single frames took 1-2 s. At 0.2 ms the same test passes.
SWITCH_INTERVAL_S = 2e-4

_limiter = None


def quick_gil_handoff(interval_s: float = SWITCH_INTERVAL_S) -> None:
    """Lower the interpreter's GIL switch interval to ``interval_s`` (never raises it)."""
    import sys

    if sys.getswitchinterval() > interval_s:
        sys.setswitchinterval(interval_s)


def limit_threads(torch_threads: int | None = None, blas_threads: int = 1) -> None:
    """Cap the BLAS/OpenMP pools at ``blas_threads`` and, when given, torch at ``torch_threads``;
    hand the GIL over quickly (:func:`quick_gil_handoff`)."""
    global _limiter
    import os

    quick_gil_handoff()

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

"""Shared pytest setup.

ROS tests get their own DDS domain per test run and localhost-only discovery, so parallel runs
(and other machines on the network) never see each other's topics.
"""
from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")
# One BLAS thread, as the entry points do (bronchopt_ros.threads): the 2-core CI machine runs
# torch and numpy side by side.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def spin_until(executor, predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return bool(predicate())


@pytest.fixture(scope="module")
def airway():
    """The simulator's small lumen (:func:`fixtures_sim.small_airway`, once per module); a module
    that needs another airway defines its own ``airway``."""
    from fixtures_sim import small_airway

    return small_airway()


@pytest.fixture(scope="module")
def scene(airway):
    """The simulator's scene of ``airway``, a static body (no breathing)."""
    from bronchopt_ros.sim.views import Scene

    return Scene.from_airway(airway)


@pytest.fixture
def ros_context():
    """A fresh, initialised rclpy context (shut down after the test)."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        ctx.try_shutdown()


@pytest.fixture
def executor(ros_context):
    """A single-threaded executor on ``ros_context``; nodes added to it are destroyed afterwards."""
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ros_context)
    yield ex
    for node in list(ex.get_nodes()):
        ex.remove_node(node)
        node.destroy_node()
    ex.shutdown()

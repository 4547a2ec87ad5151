"""Spin an rclpy executor on a background thread that can be stopped cleanly.

``threading.Thread(target=executor.spin)`` followed by ``executor.shutdown()`` races: the spin
thread may hand a callback to the executor's thread pool after shutdown has closed it, and dies
with "cannot schedule new futures after shutdown". Here the spin loop is stopped and joined first,
then the executor is shut down.

A node removed and destroyed while the loop runs (an airway server restarting beside a navigator
in one process) can also kill ``spin()``: the executor's generator of ready callbacks may resume
with the entity list it gathered before the removal and raise ``InvalidHandle`` ("destruction was
requested", ros2/rclpy#1355). That ends the generator; the loop here goes on, and the next turn
gathers the entities afresh.
"""

from __future__ import annotations

import threading

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException


class BackgroundSpin:
    """``executor.spin()`` on a daemon thread; :meth:`stop` ends the loop, joins the thread and
    shuts the executor down (in that order)."""

    def __init__(self, executor, name: str = "bronchopt-spin", period_s: float = 0.1):
        self.executor = executor
        self._stop = threading.Event()
        self._period = period_s
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @classmethod
    def start(cls, executor, **kwargs) -> "BackgroundSpin":
        spin = cls(executor, **kwargs)
        spin.thread.start()
        return spin

    def _loop(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self._period)
            except InvalidHandle:
                continue  # a node destroyed mid-turn (module doc); the next turn does not see it

    def stop(self, timeout_s: float = 5.0) -> list[BaseException]:
        """End the loop, join it, shut the executor down; returns (and logs) the errors of callbacks
        that finished after the loop's last turn (a node destroyed under them excepted)."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        self.executor.shutdown()
        return self._unfetched_errors()

    def _unfetched_errors(self) -> list[BaseException]:
        """A multi-threaded executor fetches a callback's outcome on its next turn; one that finished
        after the last turn is never fetched, and rclpy prints "The following exception was never
        retrieved" when the task is collected (at a test's or the process' end). Fetch them here:
        ``InvalidHandle`` is the node destroyed under its callback at teardown (module doc)."""
        errors = []
        for task in list(getattr(self.executor, "_futures", ())):  # MultiThreadedExecutor's (rclpy private)
            if task.done() and (exc := task.exception()) is not None and not isinstance(exc, InvalidHandle):
                errors.append(exc)
        for exc in errors:
            rclpy.logging.get_logger("bronchopt.spin").error(f"a callback failed at shutdown: {exc!r}")
        return errors


def run_node(node_class, args=None) -> int:
    """A node executable's ``main``: cap the math libraries' threads, start rclpy, spin one
    ``node_class()`` until Ctrl-C or shutdown, then destroy it and shut down. Returns 0."""
    from ..threads import limit_threads

    limit_threads()
    rclpy.init(args=args)
    node = node_class()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0

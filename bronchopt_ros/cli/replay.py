"""``bronchopt replay BAG``: play a rosbag2 into the ROS graph (``ros2 bag play`` stand-in)."""
from __future__ import annotations

import argparse


def add_parser(sub, name: str, help_: str) -> None:
    p = sub.add_parser(name, help=help_, description=__doc__)
    p.add_argument("bag", help="rosbag2 folder (mcap or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play again from the start when done")
    p.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time)")
    p.add_argument("--topics", nargs="*", help="only these topics")
    p.add_argument("--delay", type=float, default=0.5, help="seconds to wait before playing (discovery)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ..io.player import BagPlayer
    from ._ros import localhost_default

    localhost_default()
    rclpy.init()
    node = rclpy.create_node("bag_player")
    player = BagPlayer(node, args.bag, rate=args.rate, loop=args.loop, clock=args.clock, topics=args.topics,
                       start_delay=args.delay)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    player.start()
    try:
        while rclpy.ok() and not player.done.is_set():
            ex.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        player.stop()
    finally:
        stats = player.stats
        print(f"replay: {stats.published} messages published, {stats.loops} loops"
              + (f"; ERROR: {stats.error}" if stats.error else ""))
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if stats.error else 0

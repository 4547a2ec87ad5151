"""TF output: tf2_ros's broadcaster when importable, else TFMessage on /tf ourselves.

The PyPI ROS 2 wheels have no tf2_ros; publishing ``tf2_msgs/TFMessage`` on ``/tf`` with the
default TF QoS is exactly what ``tf2_ros.TransformBroadcaster`` does, so RViz and real ROS 2
listeners see the same thing either way.
"""
from __future__ import annotations

from rclpy.qos import QoSProfile

try:  # a real ROS 2 install
    from tf2_ros import TransformBroadcaster as _Broadcaster
except ImportError:  # PyPI wheels: the stand-in
    _Broadcaster = None


class TfPublisher:
    def __init__(self, node):
        self.backend = "tf2_ros" if _Broadcaster is not None else "tf2_msgs"
        if _Broadcaster is not None:
            self._b = _Broadcaster(node)
        else:
            from tf2_msgs.msg import TFMessage

            self._msg = TFMessage
            self._pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))

    def send(self, transform) -> None:
        if _Broadcaster is not None:
            self._b.sendTransform(transform)
        else:
            self._pub.publish(self._msg(transforms=[transform]))

"""ROS 2 nodes: thin adapters from topics/services to the ROS-free core."""

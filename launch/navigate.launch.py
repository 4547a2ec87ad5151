"""Launch the bronchopt_ros graph on a ROS 2 install:

    ros2 launch bronchopt_ros navigate.launch.py mesh:=/path/airway.ply [bag:=/path/procedure] [rviz:=true]

Starts the airway server (mesh or NIfTI CT) and the navigator with config/*.yaml, optionally plays
a recorded procedure (``ros2 bag play``, with /clock) and opens RViz with config/bronchopt.rviz.
Where ``ros2 launch`` is not available, ``bronchopt navigate`` starts the same graph from the
same config files.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("bronchopt_ros")
    mesh = LaunchConfiguration("mesh")
    mesh_units = LaunchConfiguration("mesh_units")
    bag = LaunchConfiguration("bag")
    rate = LaunchConfiguration("rate")
    rviz = LaunchConfiguration("rviz")
    use_sim_time = LaunchConfiguration("use_sim_time")
    playing = PythonExpression(["'", bag, "' != ''"])
    return LaunchDescription([
        DeclareLaunchArgument("mesh", default_value="", description="Airway mesh (STL/PLY/OBJ) or CT (NIfTI)."),
        DeclareLaunchArgument("mesh_units", default_value="mm", description="Unit of the mesh file."),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to play (empty: live camera)."),
        DeclareLaunchArgument("rate", default_value="1.0", description="Playback rate factor."),
        DeclareLaunchArgument("rviz", default_value="true", description="Start RViz."),
        DeclareLaunchArgument("use_sim_time", default_value=playing,
                              description="Use /clock (default: true when playing a bag)."),
        DeclareLaunchArgument("navigator_config", default_value=os.path.join(share, "config", "navigator.yaml")),
        DeclareLaunchArgument("airway_config", default_value=os.path.join(share, "config", "airway_server.yaml")),
        Node(package="bronchopt_ros", executable="airway_server", name="airway_server", output="screen",
             parameters=[LaunchConfiguration("airway_config"),
                         {"mesh_path": mesh, "mesh_units": mesh_units, "use_sim_time": use_sim_time}]),
        Node(package="bronchopt_ros", executable="navigator", name="navigator", output="screen",
             parameters=[LaunchConfiguration("navigator_config"), {"use_sim_time": use_sim_time}]),
        ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", rate], output="screen",
                       condition=IfCondition(playing)),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="log",
             arguments=["-d", os.path.join(share, "config", "bronchopt.rviz")],
             parameters=[{"use_sim_time": use_sim_time}], condition=IfCondition(rviz)),
    ])

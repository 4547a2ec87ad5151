"""The airway server node on a real rclpy graph with a real mesh file."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from conftest import spin_until
from fixtures_render import y_airway

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from bronchopt_msgs.msg import AirwayMesh  # noqa: E402
from bronchopt_msgs.srv import GetAirwayMesh  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from bronchopt_ros.io.ros_convert import airway_from_msg  # noqa: E402
from bronchopt_ros.nodes.airway_server import AirwayServer  # noqa: E402

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def mesh_file(tmp_path_factory):
    air = y_airway()
    path = tmp_path_factory.mktemp("airway") / "airway.ply"
    air.to_trimesh("mm").export(path)
    return path, air


def _server(ctx, **params):
    return AirwayServer(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_late_subscriber_gets_latched_mesh_and_marker(executor, ros_context, mesh_file):
    path, air = mesh_file
    server = _server(ros_context, mesh_path=str(path), mesh_units="mm")
    executor.add_node(server)
    # Subscribe only after the server has published (transient local = latched).
    late = Node("late_listener", context=ros_context)
    executor.add_node(late)
    meshes, markers = [], []
    late.create_subscription(AirwayMesh, "/airway/mesh", meshes.append, LATCHED)
    late.create_subscription(Marker, "/airway/marker", markers.append, LATCHED)
    assert spin_until(executor, lambda: meshes and markers, 15.0)
    got = airway_from_msg(meshes[0])
    assert meshes[0].header.frame_id == "ct"
    assert got.faces.shape == air.faces.shape
    np.testing.assert_allclose(got.vertices, air.vertices, atol=1e-6)  # metres, float32
    assert got.centerline is not None and len(got.centerline) >= 3  # computed from the mesh
    m = markers[0]
    assert m.type == Marker.TRIANGLE_LIST and len(m.points) % 3 == 0 and len(m.points) > 0
    assert m.header.frame_id == "ct"


def test_service_and_clear_errors(executor, ros_context, tmp_path, mesh_file):
    path, air = mesh_file
    server = _server(ros_context, mesh_path=str(tmp_path / "missing.ply"))
    client_node = Node("client", context=ros_context)
    executor.add_node(server)
    executor.add_node(client_node)
    client = client_node.create_client(GetAirwayMesh, "/airway/get_mesh")
    assert spin_until(executor, client.service_is_ready, 10.0)

    def call():
        fut = client.call_async(GetAirwayMesh.Request())
        assert spin_until(executor, fut.done, 10.0)
        return fut.result()

    res = call()
    assert not res.success and "not found" in res.message

    # A mesh in metres declared as millimetres: a lumen of ~0.02 mm -> a units error.
    tiny = tmp_path / "tiny.ply"
    air.to_trimesh("m").export(tiny)
    server.set_parameters([Parameter("mesh_path", value=str(tiny))])
    spin_until(executor, lambda: False, 0.5)
    res = call()
    assert not res.success and "mesh_units" in res.message

    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    server.set_parameters([Parameter("mesh_path", value=str(empty))])
    spin_until(executor, lambda: False, 0.5)
    res = call()
    assert not res.success and res.message

    # Setting a good file again loads it: the service answers with the mesh.
    server.set_parameters([Parameter("mesh_path", value=str(path))])
    assert spin_until(executor, lambda: server.mesh_msg is not None, 10.0)
    res = call()
    assert res.success and len(res.mesh.triangles) == 3 * len(air.faces)

"""One rendered endoscope view: the single entry point of the simulator's camera.

``scene = Scene.from_airway(airway, breathing=None)`` caches what every view needs (the Embree
scene of the CT mesh, per-vertex cartilage-ring coordinates from the centerline, and with
breathing the deformed body meshes per breathing level); then
``render_view(scene, camera, pose, appearance, rng, t)`` gives a :class:`View`:

* ``rgb`` uint8 (H, W, 3): the endoscope image (:mod:`bronchopt_ros.sim.endoscope`);
* ``depth`` float32 (H, W): z-depth in metres along the optical axis, 0 where no wall is hit;
* ``normals`` float32 (H, W, 3): unit surface normals in the camera frame, facing the camera;
* ``mask`` bool (H, W): pixels that hit the wall.

``pose`` is the ground truth (camera -> undeformed CT). With breathing, the camera sees the body
at time ``t`` (:mod:`bronchopt_ros.sim.breathing`): depth and normals are those of the deformed
anatomy seen from the camera's body pose; without breathing they equal a plain ray cast of the
CT mesh at ``pose``. Textures are solid, evaluated at the CT-space point of each hit, so they
move with the tissue.

The deformed body is never re-meshed: rebuilding Embree's BVH costs ~0.3 s for a 120k-face mesh
(measured), so each body ray is pulled back into the CT instead (a polyline through
``phi_t^-1`` of points at a few depths) and cast against the one static CT scene; this costs
about two plain casts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..airway.mesh import Airway
from ..geometry import Camera, Pose
from ..render.raycast import Raycaster, RayHits
from .appearance import Appearance
from .breathing import Breathing, BreathingParams
from .endoscope import AutoGain, ShadingInputs, develop, shade
from .trajectory import CenterlineIndex

__all__ = ["Scene", "View", "render_view"]


@dataclass
class View:
    """A rendered view (see the module docstring). ``body_pose`` is where the camera was in the
    (deformed) body; ``gain`` the exposure gain used."""

    rgb: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    mask: np.ndarray
    body_pose: Pose | None = None
    gain: float = 1.0


class Scene:
    """Everything about an airway that stays the same from view to view."""

    def __init__(self, airway: Airway, breathing: Breathing | None = None):
        self.airway = airway
        self.breathing = breathing if (breathing is not None and breathing.params.active) else None
        self.raycaster = Raycaster(airway.vertices, airway.faces)
        if self.breathing is not None:
            self._static_disp, self._breath_disp = self.breathing.parts(airway.vertices)
        self._body_cache: tuple[float, np.ndarray] | None = None
        self.vertex_normals = _vertex_normals(airway.vertices, airway.faces, self.raycaster.face_normals)
        self.index = CenterlineIndex(airway.centerline) if airway.centerline is not None else None
        if self.index is not None:
            _, vi = self.index.nearest(airway.vertices)
            self.v_arclen = self.index.arclen[vi].astype(np.float64)
            self.v_tangent = self.index.tangent[vi]
            self.v_generation = self.index.generation[vi].astype(np.float32)
        else:
            self.v_arclen = self.v_tangent = self.v_generation = None

    @classmethod
    def from_airway(cls, airway: Airway, breathing: BreathingParams | Breathing | None = None) -> "Scene":
        """Build a scene; ``breathing`` as parameters (needs ``airway.centerline`` for the
        carina) or a ready :class:`Breathing`; None or inactive parameters = a static body."""
        if isinstance(breathing, BreathingParams):
            if not breathing.active:
                breathing = None
            else:
                if airway.centerline is None:
                    raise ValueError("breathing needs the airway's centerline (for the carina)")
                breathing = Breathing.for_centerline(breathing, airway.centerline)
        return cls(airway, breathing)

    def body_pose(self, pose: Pose, t: float) -> Pose:
        return pose if self.breathing is None else self.breathing.body_pose(pose, t)

    def cast(self, camera: Camera, pose: Pose, t: float = 0.0, near: float = 1e-4) -> tuple[RayHits, Pose]:
        """First hits of the pixel rays of the camera at ``pose`` (CT truth) seeing the body at
        ``t``. Returns (hits, body pose): ``depth``/``normal_cam`` are in the body camera's
        frame, ``point_ct``/``tri`` locate the hit on the undeformed CT mesh."""
        if self.breathing is None:
            return self.raycaster.cast(camera, pose, near), pose
        body = self.breathing.body_pose(pose, t)
        return _cast_deformed(self, camera, body, t, near), body

    def body_vertices(self, t: float) -> np.ndarray:
        """The body mesh's vertices at ``t`` (``Breathing.deform`` of the CT mesh's vertices,
        from cached displacements; the last result is cached)."""
        if self.breathing is None:
            return self.airway.vertices
        b = self.breathing.waveform(t)
        if self._body_cache is None or self._body_cache[0] != b:
            V = self.airway.vertices + self._static_disp
            if b > 0:
                V = V + b * self._breath_disp
            self._body_cache = (b, V)
        return self._body_cache[1]


#: z-depth breakpoints (m) of the piecewise-linear pulled-back rays
_Z_BREAKS = np.array([0.0, 0.004, 0.01, 0.02, 0.04, 0.08, 0.3])


def _interp_matrix(n: int, g: int) -> np.ndarray:
    """(n, g) linear interpolation weights from g grid nodes spanning 0..n-1 to every index."""
    x = np.linspace(0.0, g - 1.0, n)
    i0 = np.minimum(np.floor(x).astype(int), g - 2) if g > 1 else np.zeros(n, int)
    f = x - i0
    W = np.zeros((n, g))
    W[np.arange(n), i0] = 1 - f
    if g > 1:
        W[np.arange(n), i0 + 1] += f
    return W


def _cast_deformed(scene: Scene, camera: Camera, body: Pose, t: float, near: float, grid: int = 17) -> RayHits:
    """Ray cast of the deformed body without rebuilding the BVH: every body ray is pulled back
    into the CT (``phi_t^-1``) as a polyline through the z breakpoints (exact on a coarse pixel
    grid, bilinear in between) and its segments are cast against the static CT mesh."""
    rc, breathing = scene.raycaster, scene.breathing
    H, W = camera.height, camera.width
    gh, gw = min(grid, H), min(grid, W)
    us, vs = np.linspace(0, W - 1, gw), np.linspace(0, H - 1, gh)
    uu, vv = np.meshgrid(us, vs)
    d_grid = np.stack([(uu - camera.cx) / camera.fx, (vv - camera.cy) / camera.fy, np.ones_like(uu)], -1)
    z = _Z_BREAKS.copy()
    z[0] = near
    Q = body.t + (d_grid[:, :, None, :] * z[None, None, :, None]) @ body.R.T  # (gh, gw, K, 3)
    X = breathing.pullback(Q.reshape(-1, 3), t).reshape(gh, gw, len(z), 3)
    Wy, Wx = _interp_matrix(H, gh), _interp_matrix(W, gw)
    n = H * W

    def plane(k: int) -> np.ndarray:  # pulled-back points of depth breakpoint k, every pixel
        return np.stack([Wy @ X[:, :, k, c] @ Wx.T for c in range(3)], -1).reshape(n, 3)

    tri = np.full(n, -1, dtype=np.int64)
    todo = np.arange(n)
    nxt = plane(0)
    for k in range(len(z) - 1):
        if len(todo) == 0:
            break
        cur, nxt = nxt, plane(k + 1)
        o = cur[todo]
        d = nxt[todo] - o
        tk, uk = rc.cast_rays(o, d, tfar=1.0)
        hit = (tk >= 0) & (uk <= 1.0)
        tri[todo[hit]] = tk[hit]
        todo = todo[~hit]
    # exact geometry of the hit triangles once deformed: the body ray meets their plane
    rays = camera.rays(np.float64).reshape(-1, 3)
    vi = np.flatnonzero(tri >= 0)
    fv = rc.faces[tri[vi]]
    tri_ct = rc.vertices[fv]  # (M, 3, 3)
    tri_b = scene.body_vertices(t)[fv]
    nb = np.cross(tri_b[:, 1] - tri_b[:, 0], tri_b[:, 2] - tri_b[:, 0])
    nb /= np.maximum(np.linalg.norm(nb, axis=1, keepdims=True), 1e-30)
    dir_b = rays[vi] @ body.R.T
    den = np.einsum("ij,ij->i", dir_b, nb)
    num = np.einsum("ij,ij->i", tri_b[:, 0] - body.t, nb)
    ok = np.abs(den) > 1e-9
    zdep = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    ok &= zdep >= near
    vi, zdep, nb, tri_ct, tri_b, dir_b = vi[ok], zdep[ok], nb[ok], tri_ct[ok], tri_b[ok], dir_b[ok]
    valid = np.zeros(n, bool)
    valid[vi] = True
    tri[~valid] = -1
    depth = np.zeros(n)
    depth[vi] = zdep
    bary = _barycentric(body.t + dir_b * zdep[:, None], tri_b)
    p_ct = np.zeros((n, 3))
    p_ct[vi] = np.einsum("ij,ijk->ik", bary, tri_ct)
    n_cam = np.zeros((n, 3))
    n_cam[vi] = nb @ body.R
    facing_away = np.einsum("ij,ij->i", n_cam, rays) > 0
    n_cam = np.where(facing_away[:, None], -n_cam, n_cam)
    return RayHits(tri=tri.reshape(H, W).astype(np.int32), depth=depth.reshape(H, W).astype(np.float32),
                   point_ct=p_ct.reshape(H, W, 3), normal_cam=n_cam.reshape(H, W, 3).astype(np.float32),
                   facing_away=(facing_away & valid).reshape(H, W))


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray, face_normals: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (for smooth shading; the geometry keeps face normals)."""
    tris = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], face_normals * area[:, None])
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-30)


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of points (N, 3) in triangles (N, 3, 3)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00 = np.einsum("ij,ij->i", v0, v0)
    d01 = np.einsum("ij,ij->i", v0, v1)
    d11 = np.einsum("ij,ij->i", v1, v1)
    d20 = np.einsum("ij,ij->i", v2, v0)
    d21 = np.einsum("ij,ij->i", v2, v1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-30, den, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    return np.stack([1 - v - w, v, w], 1)


def render_view(scene: Scene, camera: Camera, pose: Pose, appearance: Appearance | None,
                rng: np.random.Generator | None = None, t: float = 0.0, gain: float | None = None,
                gain_control: AutoGain | None = None) -> View:
    """Render the view from ``pose`` (camera -> CT, the truth) at time ``t``.

    ``appearance=None`` skips the image (``rgb`` is then all zeros): depth, normals and mask
    only. ``gain`` overrides the auto-gain; ``gain_control`` (an
    :class:`~bronchopt_ros.sim.endoscope.AutoGain`) smooths it over a video. ``camera`` must be distortion-free (render an ideal
    pinhole image; distort it afterwards if needed).
    """
    rng = rng if rng is not None else np.random.default_rng()
    hits, body = scene.cast(camera, pose, t)
    H, W = camera.height, camera.width
    mask = hits.valid
    view = View(np.zeros((H, W, 3), np.uint8), hits.depth, hits.normal_cam, mask, body, 1.0)
    if appearance is None:
        return view

    idx = np.flatnonzero(mask.ravel())
    tri = hits.tri.ravel()[idx].astype(np.int64)
    p_ct = hits.point_ct.reshape(-1, 3)[idx]
    faces = scene.airway.faces[tri]
    bary = _barycentric(p_ct, scene.airway.vertices[faces])
    rays = camera.rays(np.float64).reshape(-1, 3)[idx]
    p_cam = rays * hits.depth.ravel()[idx, None].astype(np.float64)
    # smooth shading normal (interpolated vertex normals), facing the camera like the face normal
    n_geo = hits.normal_cam.reshape(-1, 3)[idx].astype(np.float64)
    n_s = np.einsum("ij,ijk->ik", bary, scene.vertex_normals[faces]) @ pose.R
    n_s /= np.maximum(np.linalg.norm(n_s, axis=1, keepdims=True), 1e-12)
    n_s *= np.sign(np.einsum("ij,ij->i", n_s, n_geo) + 1e-12)[:, None]
    ring_s = ring_w = axis_cam = None
    if scene.v_arclen is not None:
        ring_s = np.einsum("ij,ij->i", bary, scene.v_arclen[faces])
        gen = np.einsum("ij,ij->i", bary, scene.v_generation[faces])
        ring_w = np.clip(1.0 - gen / max(float(appearance.ring_max_generation), 1.0), 0.0, 1.0)
        axis_ct = np.einsum("ij,ijk->ik", bary, scene.v_tangent[faces])
        axis_cam = axis_ct @ body.R  # CT/body -> camera frame (R^T applied row-wise)
        # drop the component along the normal, so the relief tilts the normal along the wall
        axis_cam = axis_cam - n_s * np.einsum("ij,ij->i", axis_cam, n_s)[:, None]
    inp = ShadingInputs(p_ct, p_cam, n_s, ring_s, ring_w, axis_cam)
    rad = np.zeros((H * W, 3), np.float32)
    rad[idx] = shade(inp, appearance)
    rgb, g = develop(rad.reshape(H, W, 3), mask, appearance, rng, camera.cx, camera.cy, gain, gain_control)
    view.rgb, view.gain = rgb, g
    return view

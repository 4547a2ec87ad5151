"""Breathing and CT-to-body divergence: the anatomy the camera sees moves against the CT.

The body at time ``t`` is the CT warped by ``phi_t(x) = x + D_static(x) + b(t) D_breath(x)``:

* ``b(t)`` in [0, 1] is the respiratory waveform (``(1 - cos)/2`` over ``period_s``; 0 at end
  of expiration = the CT's state);
* ``D_breath`` is inspiration: an anisotropic expansion about the carina (``amplitude`` per unit
  length, weighted per axis by ``axis_gain``: lateral > cranio-caudal > antero-posterior) and a
  caudal shift that grows smoothly from the upper trachea to the lung
  (``shift_per_amplitude * amplitude`` metres at full inspiration);
* ``D_static`` is a fixed CT-to-body divergence (the patient is not in the CT's state): a small
  rigid motion plus a smooth random warp of ``divergence`` metres, seeded.

The scope moves with the tissue around it (``scope_follows``, default): the camera seen in the
body is ``phi_t`` applied to the true pose (centre mapped, orientation turned by the rotation of
the local Jacobian). The ground truth stays the pose in the undeformed CT; what differs in the
images is the non-rigid part of the motion. With ``scope_follows=False`` the camera stays at the
CT pose and the anatomy slides past it (it may then leave the deformed lumen).

Lengths in metres, the CT frame's z axis is superior (cranio-caudal), x lateral, y anterior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import polar
from scipy.spatial.transform import Rotation

from ..geometry import Pose

__all__ = ["BreathingParams", "Breathing"]


@dataclass
class BreathingParams:
    """Breathing motion and CT-to-body divergence (metres, seconds, radians)."""

    amplitude: float = 0.03  # expansion at full inspiration (3 %)
    period_s: float = 4.0  # respiratory cycle (3-5 s)
    phase: float = 0.0  # cycle fraction at t = 0
    axis_gain: tuple[float, float, float] = (1.0, 0.5, 0.8)  # expansion weight along x, y, z
    shift_per_amplitude: float = 0.2  # caudal shift (m) per unit amplitude: 6 mm at 3 %
    shift_length: float = 0.03  # the shift ramps in over this length about the carina
    divergence: float = 1.0e-3  # static smooth warp amplitude (m)
    divergence_wavelength: tuple[float, float] = (0.04, 0.1)  # m
    static_rotation: float = 0.02  # rad, static rigid rotation about the carina
    static_shift: float = 2e-3  # m, static rigid translation
    scope_follows: bool = True
    seed: int = 0

    @property
    def active(self) -> bool:
        return bool(self.amplitude > 0 or self.divergence > 0 or self.static_rotation > 0 or self.static_shift > 0)


@dataclass
class _Warp:
    k: np.ndarray  # (M, 3) wave vectors
    a: np.ndarray  # (M, 3) displacement amplitudes
    ph: np.ndarray  # (M,) phases


class Breathing:
    """The deformation ``phi_t`` of a given anatomy (``carina``: the trachea's lower end)."""

    def __init__(self, params: BreathingParams, carina: np.ndarray, top_z: float | None = None):
        self.params = p = params
        self.carina = np.asarray(carina, dtype=np.float64).reshape(3)
        rng = np.random.default_rng(p.seed)
        m = 6
        lam = rng.uniform(*p.divergence_wavelength, size=m)
        dirs = rng.standard_normal((m, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        amp = rng.standard_normal((m, 3))
        amp *= p.divergence / max(np.sqrt(0.5 * (amp**2).sum()), 1e-12)  # RMS |warp| = divergence
        self._warp = _Warp(2 * np.pi * dirs / lam[:, None], amp, rng.uniform(0, 2 * np.pi, m))
        self._R_static = Rotation.from_rotvec(rng.standard_normal(3) / np.sqrt(3) * p.static_rotation).as_matrix()
        v = rng.standard_normal(3)
        self._t_static = v / max(np.linalg.norm(v), 1e-12) * p.static_shift
        self._gain = np.asarray(p.axis_gain, dtype=np.float64)

    @classmethod
    def for_centerline(cls, params: BreathingParams, centerline) -> "Breathing":
        root = centerline.root
        return cls(params, root.points[-1])

    # ----------------------------------------------------------------- waveform
    def waveform(self, t: float) -> float:
        """``b(t)`` in [0, 1]: 0 at end of expiration (the CT's state), 1 at full inspiration."""
        p = self.params
        if p.amplitude <= 0 or p.period_s <= 0:
            return 0.0
        return float(0.5 - 0.5 * np.cos(2 * np.pi * (t / p.period_s + p.phase)))

    # ----------------------------------------------------------------- displacement
    def _static(self, x: np.ndarray) -> np.ndarray:
        w = self._warp
        phase = x @ w.k.T + w.ph  # (N, M)
        warp = np.sin(phase) @ w.a
        rigid = (x - self.carina) @ self._R_static.T + self.carina - x + self._t_static
        return warp + rigid

    def _breath(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        d = p.amplitude * (x - self.carina) * self._gain
        # caudal shift ramping in from the upper trachea (w ~ 0) to below the carina (w ~ 1)
        wz = 1.0 / (1.0 + np.exp((x[:, 2] - self.carina[2]) / (0.25 * p.shift_length)))
        d[:, 2] -= p.shift_per_amplitude * p.amplitude * wz
        return d

    def displacement(self, x: np.ndarray, t: float) -> np.ndarray:
        """``phi_t(x) - x`` for points (N, 3) (metres)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, 3)
        d = self._static(x)
        b = self.waveform(t)
        if b > 0:
            d = d + b * self._breath(x)
        return d

    def parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(static, inspiration) displacements of points (N, 3): ``phi_t(x) = x + static +
        b(t) * inspiration`` (cache them for a mesh's vertices)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, 3)
        return self._static(x), self._breath(x)

    def deform(self, vertices: np.ndarray, t: float) -> np.ndarray:
        """The vertices of the body at time ``t``: ``phi_t(vertices)``."""
        v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        return v + self.displacement(v, t)

    def pullback(self, q: np.ndarray, t: float, iterations: int = 5) -> np.ndarray:
        """CT points ``x`` with ``phi_t(x) = q`` for body points (N, 3) (fixed-point iteration
        ``x = q - D(x)``; converges fast as ``D`` varies slowly)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
        x = q.copy()
        for _ in range(iterations):
            x = q - self.displacement(x, t)
        return x

    def jacobian(self, x: np.ndarray, t: float, h: float = 1e-3) -> np.ndarray:
        """d phi_t / dx at one point (3, 3), central differences."""
        x = np.asarray(x, dtype=np.float64).reshape(3)
        pts = np.concatenate([x + h * np.eye(3), x - h * np.eye(3)])
        phi = self.deform(pts, t)
        return ((phi[:3] - phi[3:]) / (2 * h)).T

    def body_pose(self, pose: Pose, t: float) -> Pose:
        """Where the camera of the CT pose ``pose`` is in the body at ``t`` (see module doc)."""
        if not self.params.scope_follows:
            return pose
        c = self.deform(pose.t[None], t)[0]
        U, _ = polar(self.jacobian(pose.t, t))
        if np.linalg.det(U) < 0:  # never for a small deformation; keep a rotation anyway
            U = np.eye(3)
        return Pose(U @ pose.R, c)

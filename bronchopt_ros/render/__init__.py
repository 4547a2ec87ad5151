"""Depth rendering of the airway: Embree (CPU) or nvdiffrast (CUDA) visibility + shared torch maths.

See :mod:`bronchopt_ros.render.base` for the interface (``make_renderer``, ``Renderer.render``,
``Renderer.depth_fn``) and :mod:`bronchopt_ros.render.projection` for the maths.
"""
from .base import DepthFunction, DepthRender, Renderer, make_renderer, nvdiffrast_available
from .projection import HitPlanes

__all__ = ["DepthFunction", "DepthRender", "HitPlanes", "Renderer", "make_renderer", "nvdiffrast_available"]

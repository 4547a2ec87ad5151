"""Simulation: synthetic airway anatomy, synthetic CT, (later) trajectories, breathing, images."""
from .anatomy import AnatomyParams, SyntheticAnatomy, generate_anatomy, generate_centerline

__all__ = ["AnatomyParams", "SyntheticAnatomy", "generate_anatomy", "generate_centerline"]

"""Disjoint anatomy seeds for training, validation and test, and the appearance domain of each.

Train anatomies use seeds 1000-1999, validation 2000-2999, test 3000 and above. Test cases are
rendered in the ``test`` appearance domain, which is disjoint from ``train`` on several
parameters (:mod:`bronchopt_ros.sim.appearance`); validation uses ``train`` appearance on unseen
anatomies.
"""
from __future__ import annotations

__all__ = ["TRAIN_SEEDS", "VAL_SEEDS", "TEST_SEED_START", "SPLITS", "split_of", "appearance_domain", "check_split"]

TRAIN_SEEDS = range(1000, 2000)
VAL_SEEDS = range(2000, 3000)
TEST_SEED_START = 3000
SPLITS = ("train", "val", "test")


def split_of(seed: int) -> str | None:
    """The split an anatomy seed belongs to (None below 1000: ad hoc / unit-test seeds)."""
    seed = int(seed)
    if seed in TRAIN_SEEDS:
        return "train"
    if seed in VAL_SEEDS:
        return "val"
    if seed >= TEST_SEED_START:
        return "test"
    return None


def appearance_domain(split: str | None) -> str:
    """Appearance domain rendered for a split: ``test`` for test, ``train`` otherwise."""
    return "test" if split == "test" else "train"


def check_split(seed: int, split: str | None) -> None:
    """Raise ``ValueError`` when ``seed`` is not in ``split`` (None = no check)."""
    if split is None:
        return
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (use one of {SPLITS})")
    if split_of(seed) != split:
        raise ValueError(f"seed {seed} is not a {split} seed (train 1000-1999, val 2000-2999, test >= 3000)")

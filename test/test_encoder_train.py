"""Encoder training loop (on the procedural stand-in worlds: fast), resumption, the CLI, and the
simulator worlds (split guard, anatomy cache)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bronchopt_ros.encoder import EncoderConfig, load_encoder
from bronchopt_ros.encoder.augment import augment_rgb
from bronchopt_ros.encoder.train import TrainConfig, train


def _cfg(tmp_path, steps):
    return TrainConfig(out=str(tmp_path / "run"), steps=steps, batch_size=2, input_size=64, source="toy",
                       train_seeds=(0,), val_seeds=(100,), val_frames=2, val_every=3, workers=0, warmup=2,
                       n_perturb=2, n_pixels=32, progress=False)


def test_train_checkpoint_resume_and_weights(tmp_path):
    res = train(_cfg(tmp_path, 3))
    run = tmp_path / "run"
    for f in ("checkpoint.pt", "encoder.pt", "curves.png", "history.json", "val_set.pt", "train_config.json"):
        assert (run / f).exists(), f
    assert 0.0 <= res["rank_1mm"] <= 1.0 and res["si_log"] > 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in hist["train"]] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in hist["train"])
    before = torch.load(run / "checkpoint.pt", weights_only=False)["net"]
    # resume: continues at step 3 up to 5 with the same history
    train(_cfg(tmp_path, 5), resume=True)
    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 5 and [r["step"] for r in ck["history"]["train"]] == [1, 2, 3, 4, 5]
    assert any(not torch.equal(before[k], ck["net"][k]) for k in before if before[k].is_floating_point())
    # the inference weights load through the public API
    enc = load_encoder(EncoderConfig(backend="torch", weights=run / "encoder.pt", input_size=64))
    assert enc.meta["trained_steps"] == 5 and enc.meta["source"] == "toy"
    assert (run / "encoder.pt").stat().st_size < 5 * 2 ** 20


def test_training_reduces_the_loss(tmp_path):
    """A few dozen steps on the stand-in already lower the objective (same batches, before/after)."""
    from bronchopt_ros.encoder.data import PairConfig, PairGenerator, ToyWorld, collate
    from bronchopt_ros.encoder.model import EncoderNet
    from bronchopt_ros.encoder.train import compute_losses

    torch.manual_seed(0)
    cfg = _cfg(tmp_path, 0)
    gen = PairGenerator([ToyWorld(0)], PairConfig(size=64, n_perturb=2))
    rng = np.random.default_rng(0)
    batch = collate([gen.sample(rng) for _ in range(4)])
    net = EncoderNet(cfg.model)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    net.train()
    first = None
    for _ in range(25):
        loss, logs, _ = compute_losses(net, batch, cfg, 32, None, g)
        first = first if first is not None else logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss"] < first["loss"] and logs["si"] < first["si"]


def test_cli_train_smoke(tmp_path, capsys):
    from bronchopt_ros.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--out", str(out), "--source", "toy", "--steps", "2", "--batch-size", "2", "--input-size", "64",
               "--workers", "0", "--train-anatomies", "1", "--val-anatomies", "1", "--val-frames", "2", "--quiet"])
    assert rc == 0
    assert (out / "encoder.pt").exists()
    assert "rank_1mm" in capsys.readouterr().out


def test_light_offset_and_anatomy_reach_the_config_and_the_worlds(tmp_path):
    """``--light-offset MIN MAX`` is kept in train_config.json (so ``--resume`` keeps it) and moves
    the training frames' light, not their geometry."""
    from bronchopt_ros.cli import main
    from bronchopt_ros.encoder.train import WorldFactory
    from bronchopt_ros.geometry import Camera
    from bronchopt_ros.sim.anatomy import overrides_tag

    out = tmp_path / "cli"
    assert main(["train", "--out", str(out), "--source", "toy", "--steps", "1", "--batch-size", "2",
                 "--input-size", "64", "--workers", "0", "--train-anatomies", "1", "--val-anatomies", "1",
                 "--val-frames", "2", "--quiet", "--light-offset", "0.001", "0.0014",
                 "--anatomy", "default", "lumen_ellipticity=0.1,lumen_lobes=0.2"]) == 0
    cfg = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
    assert cfg.light_offset == (0.001, 0.0014)
    assert cfg.anatomy == ({}, {"lumen_ellipticity": 0.1, "lumen_lobes": 0.2})
    # a run configured before session 31 resumes with its lumen shape
    old = TrainConfig.from_dict({"lumen_shape": [0.12, 0.15]})
    assert old.anatomy == ({"lumen_ellipticity": 0.12, "lumen_lobes": 0.15},)
    [world] = WorldFactory("sim", (1000,), str(tmp_path / "cache"), True, (1.2e-3, 1.2e-3))()
    cam = Camera.from_fov(64, 64, 85.0)
    pose = world.sample_pose(np.random.default_rng(0))
    lit = world.view(cam, pose, np.random.default_rng(1))
    world.light_offset = None  # the train domain's own offsets, the same draws otherwise
    plain = world.view(cam, pose, np.random.default_rng(1))
    assert np.array_equal(lit["depth"], plain["depth"])
    assert np.abs(lit["rgb"].astype(int) - plain["rgb"]).mean() > 2.0
    # --anatomy, dealt out over the seeds in turn: the same tree with shaped lumens, cached apart
    # from the round one; the next seed's airway with the defaults
    shape = {"lumen_ellipticity": 0.12, "lumen_lobes": 0.15}
    shaped, other = WorldFactory("sim", (1000, 1001), str(tmp_path / "cache"), True, None, (shape, {}))()
    assert (tmp_path / "cache" / f"anatomy_1000{overrides_tag(shape)}.npz").exists()
    assert (tmp_path / "cache" / "anatomy_1000.npz").exists() and (tmp_path / "cache" / "anatomy_1001.npz").exists()
    assert shaped.anatomy == shape and not other.anatomy
    assert shaped.airway.centerline.to_dict() == world.airway.centerline.to_dict()
    assert len(shaped.airway.faces) != len(world.airway.faces)


def test_augmentation_changes_appearance_not_geometry():
    rng = np.random.default_rng(0)
    img = (np.random.default_rng(1).random((64, 64, 3)) * 200).astype(np.uint8)
    outs = [augment_rgb(img, rng) for _ in range(5)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert any(np.abs(o.astype(int) - img).mean() > 5 for o in outs)


def test_illumination_field_makes_one_side_brighter():
    """The uneven-illumination augmentation alone: a flat grey frame gets a brightness ramp of
    random direction (never more than exp(2 * ramp) from edge to edge), nothing else."""
    from bronchopt_ros.encoder.augment import AugmentConfig

    only = AugmentConfig(p_colour=0, p_gamma=0, p_specular=0, p_vignette=0, p_blur=0, p_noise=0, p_jpeg=0,
                         p_gray=0, p_illumination=1.0)
    img = np.full((64, 64, 3), 100, np.uint8)
    rng = np.random.default_rng(3)
    spreads = []
    for _ in range(20):
        out = augment_rgb(img, rng, only).astype(float).mean(-1)
        lr = abs(np.log(out[:, :8].mean() / out[:, -8:].mean()))
        tb = abs(np.log(out[:8].mean() / out[-8:].mean()))
        spreads.append(max(lr, tb))
        assert out.max() / out.min() < np.exp(2 * only.illumination_ramp + 0.6 + 0.1)
    assert np.median(spreads) > 0.1  # a visible ramp most of the time
    assert min(spreads) < 0.5 * max(spreads)  # of random size


def test_fluid_film_is_fixed_in_the_image_over_its_share():
    """The lens film (the simulator's, and the training augmentation's): the same seed covers the
    same pixels of any frame (it sits on the lens, not on the wall), about its share of them,
    seen blurred and tinted; share 0 changes nothing."""
    from bronchopt_ros.encoder.augment import AugmentConfig
    from bronchopt_ros.sim.endoscope import fluid_film

    rng = np.random.default_rng(5)
    a, b = rng.random((2, 96, 96, 3)).astype(np.float32)
    tint = (0.9, 0.8, 0.5)
    changed = [np.abs(fluid_film(x, 0.3, tint, 77, 0.5) - x).mean(-1) > 0.05 for x in (a, b)]
    share = [c.mean() for c in changed]
    assert all(0.2 < s < 0.4 for s in share), share
    assert (changed[0] & changed[1]).mean() > 0.8 * min(share)  # the same place on both frames
    other = np.abs(fluid_film(a, 0.3, tint, 78, 0.5) - a).mean(-1) > 0.05
    assert (other & changed[0]).mean() < 0.7 * share[0]  # another seed: another place
    assert np.array_equal(fluid_film(a, 0.0, tint, 77, 0.5), a)
    only = AugmentConfig(p_colour=0, p_gamma=0, p_specular=0, p_vignette=0, p_blur=0, p_noise=0, p_jpeg=0,
                         p_gray=0, p_film=1.0)
    img = (a * 255).astype(np.uint8)
    out = augment_rgb(img, np.random.default_rng(0), only)
    assert out.shape == img.shape and 0.05 < (np.abs(out.astype(int) - img).mean(-1) > 12).mean() < 0.5


def test_sim_world_refuses_test_anatomies(tmp_path):
    from bronchopt_ros.encoder.sim_world import load_anatomy

    with pytest.raises(ValueError, match="test anatomy"):
        load_anatomy(3000, tmp_path)


def test_warm_start_from_an_earlier_run(tmp_path):
    """``init`` loads an earlier run's weights (its checkpoint or its fp16 encoder.pt) with a
    fresh optimiser and schedule; perturbation ranges reach the pair generator."""
    from dataclasses import replace

    from bronchopt_ros.encoder.train import _init_state

    train(_cfg(tmp_path, 2))
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["net"]
    for src in ("checkpoint.pt", "encoder.pt"):
        state = _init_state(str(tmp_path / "run" / src))
        for k, v in first.items():
            if v.is_floating_point():
                torch.testing.assert_close(state[k], v, atol=2e-3, rtol=2e-3)  # fp16 for encoder.pt
    cfg = replace(_cfg(tmp_path, 1), out=str(tmp_path / "ft"), init=str(tmp_path / "run" / "checkpoint.pt"),
                  rot_rad=(0.02, 0.1), trans_m=(0.0005, 0.002), seed=5,  # another seed: another random init
                  w_drank=0.05, p_illumination=1.0)  # session 16's optional loss and augmentation
    train(cfg)
    ck = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 1  # a new schedule, not a resume
    logged = ck["history"]["train"][-1]
    assert logged["drank"] > 0 and 0.0 <= logged["drank_acc"] <= 1.0
    assert json.loads((tmp_path / "ft" / "train_config.json").read_text())["rot_rad"] == [0.02, 0.1]
    # One step of fine-tuning from the first run: close to it, not a fresh initialisation (that
    # differs by ~0.5). Weights move by about one learning rate; BatchNorm statistics left out.
    diffs = [float((ck["net"][k] - first[k]).abs().max()) for k in first
             if first[k].is_floating_point() and "running" not in k]
    assert max(diffs) < 0.05

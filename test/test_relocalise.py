"""Relocalisation on a generated anatomy: the centerline view index retrieves nearby views, and a
tracker lost in the wrong branch finds itself again through it (exact depth as the frame's target,
its depth embedding as the query: checks the index and the recovery path apart from the RGB side)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bronchopt_ros.encoder import EncoderConfig, load_encoder
from bronchopt_ros.encoder.runtime import shipped_weights
from bronchopt_ros.geometry import Camera, Pose
from bronchopt_ros.registration import DepthTarget
from bronchopt_ros.relocalise import LazyIndex, RelocConfig
from bronchopt_ros.render import make_renderer
from bronchopt_ros.tracker import Frame, Tracker, TrackerConfig, TrackState

pytestmark = pytest.mark.skipif(not shipped_weights().exists(), reason="no shipped encoder weights")
CAM = Camera(200, 200, 110.2, 110.3, 100.6, 103.7)


@pytest.fixture(scope="module")
def world():
    from bronchopt_ros.sim.anatomy import AnatomyParams, generate_anatomy

    torch.set_num_threads(1)
    airway = generate_anatomy(3010, AnatomyParams(generations=3)).airway
    renderer = make_renderer(airway, backend="cpu")
    encoder = load_encoder(EncoderConfig(backend="torch"))
    index = LazyIndex(renderer, encoder, airway.centerline, CAM, RelocConfig(spacing=0.004, rolls=4))
    assert index.warm() is not None and len(index.warm()) > 50
    return airway, renderer, encoder, index


def _embed(renderer, encoder, pose):
    out = renderer.render(CAM.scaled(48), pose, normals=False)
    with torch.no_grad():
        return encoder.embed_depth(out.depth, out.valid)


def test_index_retrieves_its_views(world):
    """The stored embedding of a view is found again from its rendering (index integrity; the
    batched build equals single embeddings). How well a *perturbed* view finds its neighbour is
    a property of the trained embedding, measured in the model card, not asserted here."""
    airway, renderer, encoder, index = world
    idx = index.warm()
    rng = np.random.default_rng(0)
    # Views outside the trachea (a straight tube looks the same all along it: no place to recognise).
    trachea = airway.centerline.root.points
    away = [i for i, p in enumerate(idx.poses) if np.linalg.norm(trachea - p.t, axis=1).min() > 0.012]
    for i in rng.choice(away, 12, replace=False):
        assert index.query(_embed(renderer, encoder, idx.poses[i]), k=1)[0] is idx.poses[i]


def test_index_cache_round_trip(world, tmp_path, caplog):
    """A built index is written to its cache file and a new LazyIndex with the same key loads it
    (same poses and embeddings, no build); a damaged cache file is rebuilt, not trusted."""
    import logging

    from bronchopt_ros.relocalise import RelocalisationIndex, index_key

    airway, renderer, encoder, index = world
    cfg = RelocConfig(spacing=0.004, rolls=4)
    key = index_key(airway, "test-encoder", CAM, cfg)
    assert key != index_key(airway, "other-encoder", CAM, cfg)
    assert key != index_key(airway, "test-encoder", CAM, RelocConfig(spacing=0.004, rolls=6))
    path = tmp_path / f"reloc-{key}.npz"
    index.warm().save(path)
    loaded = LazyIndex(renderer, encoder, airway.centerline, CAM, cfg, cache=path)
    got = loaded.warm()
    assert loaded.loaded_from_cache and len(got) == len(index.warm())
    assert torch.allclose(got.embeddings, index.warm().embeddings, atol=1e-6)  # re-normalised on load
    assert np.allclose(got.poses[7].matrix, index.warm().poses[7].matrix)
    emb = _embed(renderer, encoder, got.poses[7])
    assert np.allclose(loaded.query(emb, k=1)[0].matrix, index.query(emb, k=1)[0].matrix)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="not a relocalisation index"):
        RelocalisationIndex.load(path)
    rebuilt = LazyIndex(renderer, encoder, airway.centerline, CAM, cfg, cache=path)
    with caplog.at_level(logging.WARNING, logger="bronchopt_ros.relocalise"):
        assert len(rebuilt.warm()) == len(got) and not rebuilt.loaded_from_cache
    assert "rebuilding" in caplog.text
    assert len(RelocalisationIndex.load(path)) == len(got)  # rewritten whole


def test_lost_tracker_relocalises_through_the_index(world):
    airway, renderer, encoder, index = world
    cl = airway.centerline
    deep = max(cl.branches, key=lambda b: b.generation)
    pts = deep.points
    truth_pose = None
    for i in range(len(pts) // 3, len(pts) - 4):  # a pose looking down the deepest branch
        z = pts[i + 3] - pts[i]
        z /= np.linalg.norm(z)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        truth_pose = Pose(np.column_stack([x, np.cross(z, x), z]), pts[i])
        if renderer.render(CAM.scaled(48), truth_pose, normals=False).valid_fraction > 0.9:
            break

    class Exact:
        name = "exact"
        encoder = None

        def __call__(self, frame):
            cam = frame.camera.scaled(64)
            out = renderer.render(cam, truth_pose, normals=False)
            t = DepthTarget.from_depth(out.depth, cam)
            t.embed = lambda: _embed(renderer, encoder, truth_pose)  # made only when relocalising
            return t

    def run(ambiguity: float):
        tracker = Tracker(renderer, Exact(), TrackerConfig(lost_after=2, search_radius=0.006,
                                                           reloc_ambiguity=ambiguity), centerline=cl,
                          relocaliser=lambda frame, target: index.query(target.global_embedding()))
        tracker.initialise(truth_pose)
        tracker.pose = Pose(truth_pose.R, cl.root.points[len(cl.root.points) // 2])  # jumped to the trachea
        tracker._pending_init = None
        tracker.state = TrackState.LOST
        rgb = np.zeros((200, 200, 3), np.uint8)
        states, errs = [], []
        for k in range(6):
            r = tracker.process(Frame(rgb, CAM, k / 30.0))
            states.append(r.state)
            errs.append(r.pose.translation_error(truth_pose))
        return tracker, states, errs

    # Looking down a plain branch the depth does not show the roll: the index finds the place,
    # but with the ambiguity check (the default) the tracker does not trust it and keeps searching.
    tracker, states, errs = run(0.25)
    assert tracker.ambiguous_recoveries >= 1 and tracker.relocalisations == 0
    assert all(s in (TrackState.LOST, TrackState.RELOCALISING) for s in states)
    assert errs[-1] < 1e-3, errs  # (the estimate coasts at the place found)
    # Without it, it relocalises there.
    tracker, states, errs = run(0.0)
    assert tracker.relocalisations >= 1
    assert states[-1] == TrackState.TRACKING
    assert errs[-1] < 1e-3, errs

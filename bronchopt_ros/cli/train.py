"""``bronchopt train``: train the encoder on synthetic pairs (see :mod:`bronchopt_ros.encoder.train`).

Examples::

    bronchopt train --out runs/enc --steps 4000 --minutes 40           # the shipped recipe
    bronchopt train --out runs/enc --resume                            # continue after an interruption
    bronchopt train --out runs/enc --install                           # also copy the weights into the package
    bronchopt train --out runs/tiny --source toy --steps 50            # smoke test on procedural tubes
    bronchopt train --out runs/ft --init runs/enc/checkpoint.pt --steps 1500 --lr 5e-4 --warmup 50 \
        --rot-range 0.01 0.15 --trans-range 0.0003 0.003                # fine-tune on small perturbations
    bronchopt train --out runs/enc3 --init bronchopt_ros/encoder/weights/encoder.pt --lr 1e-3 --warmup 100 \
        --steps 4500 --minutes 90 --depth-rank-weight 0.05 --illumination 0.5  # session 16's trial (not shipped)
    bronchopt train --out runs/dino --backbone vit_small_patch14_dinov2 --backbone-weights dinov2_s.pth
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path


def add_parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    from ..encoder.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(name, help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out, help="run folder (checkpoints, curves, weights) [%(default)s]")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--steps", type=int, default=d.steps, help="length of the LR schedule [%(default)s]")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall-clock time (checkpointed)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads of the trainer [%(default)s]")
    p.add_argument("--workers", type=int, default=d.workers, help="data worker processes [%(default)s]")
    p.add_argument("--source", choices=["sim", "toy"], default=d.source,
                   help="sim: synthetic anatomies (bronchopt_ros.sim); toy: procedural tubes (smoke tests)")
    p.add_argument("--train-anatomies", type=int, default=len(d.train_seeds),
                   help="number of training anatomies (seeds 1000, 1001, ...) [%(default)s]")
    p.add_argument("--val-anatomies", type=int, default=len(d.val_seeds),
                   help="number of validation anatomies (seeds 2000, ...) [%(default)s]")
    p.add_argument("--val-frames", type=int, default=d.val_frames, help="frames per validation anatomy")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--init", default=None,
                   help="warm start from an earlier run's checkpoint.pt or encoder.pt (fresh optimiser and schedule)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="LR warm-up steps [%(default)s]")
    p.add_argument("--n-perturb", type=int, default=d.n_perturb, help="perturbed poses per pair [%(default)s]")
    p.add_argument("--trans-range", type=float, nargs=2, default=d.trans_m, metavar=("MIN", "MAX"),
                   help="translation of the perturbed poses, metres, log-uniform [%(default)s]")
    p.add_argument("--rot-range", type=float, nargs=2, default=d.rot_rad, metavar=("MIN", "MAX"),
                   help="rotation of the perturbed poses, radians, log-uniform [%(default)s]")
    p.add_argument("--no-breathing", action="store_true", help="render frames of the undeformed anatomy")
    p.add_argument("--depth-rank-weight", type=float, default=d.w_drank,
                   help="weight of the depth-ranking loss (the tracker's SI objective, true vs perturbed poses) [%(default)s]")
    p.add_argument("--film", type=float, default=d.p_film,
                   help="share of frames given a fluid film on the lens (augmentation) [%(default)s]")
    p.add_argument("--illumination", type=float, default=d.p_illumination,
                   help="share of frames given an uneven illumination field (augmentation) [%(default)s]")
    p.add_argument("--light-offset", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="light guide offsets from the lens (m) of the training frames, for a given scope "
                        "(default: the train appearance domain's 0-0.6 mm)")
    p.add_argument("--anatomy", nargs="+", default=None, metavar="OVERRIDES",
                   help="the training airways' AnatomyParams overrides, dealt out over the training anatomies in "
                        "turn: each 'FIELD=VALUE[,FIELD=VALUE]' or 'default' (e.g. default "
                        "trachea_diameter_mm=14,generations=8,min_diameter_mm=1.8; "
                        "lumen_ellipticity=0.12,lumen_lobes=0.15 for elliptic / folded lumens); validation "
                        "keeps the defaults")
    p.add_argument("--backbone", default="unet", help="'unet' (ours) or a timm model name")
    p.add_argument("--backbone-weights", default=None, help="local weights file of the timm backbone")
    p.add_argument("--install", action="store_true",
                   help="copy the trained weights into the package (bronchopt_ros/encoder/weights/encoder.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..encoder.config import ModelConfig
    from ..encoder.runtime import shipped_weights
    from ..encoder.train import TrainConfig, train
    from ..sim.anatomy import parse_overrides

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.resume and (out / "train_config.json").exists():
        cfg = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
        if args.minutes is not None:
            cfg.minutes = args.minutes
    else:
        val_base = 2000 if args.source == "sim" else 100
        train_base = 1000 if args.source == "sim" else 0
        cfg = TrainConfig(out=str(out), steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                          input_size=args.input_size, lr=args.lr, seed=args.seed, threads=args.threads,
                          workers=args.workers, source=args.source,
                          train_seeds=tuple(range(train_base, train_base + args.train_anatomies)),
                          val_seeds=tuple(range(val_base, val_base + args.val_anatomies)),
                          val_frames=args.val_frames, val_every=args.val_every, breathing=not args.no_breathing,
                          init=args.init, warmup=args.warmup, n_perturb=args.n_perturb,
                          trans_m=tuple(args.trans_range), rot_rad=tuple(args.rot_range),
                          w_drank=args.depth_rank_weight, p_illumination=args.illumination, p_film=args.film,
                          light_offset=tuple(args.light_offset) if args.light_offset else None,
                          anatomy=tuple(parse_overrides(a) for a in args.anatomy or ()),
                          model=ModelConfig(backbone=args.backbone, backbone_weights=args.backbone_weights),
                          progress=not args.quiet)
    res = train(cfg, resume=args.resume)
    print(json.dumps(res, indent=1))
    print(f"weights: {out / 'encoder.pt'}  curves: {out / 'curves.png'}")
    if args.install:
        dst = shipped_weights()
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "encoder.pt", dst)
        print(f"installed into {dst}")
    return 0

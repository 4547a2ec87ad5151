"""Encoder timing benchmark (not a test).

    python bench/bench_encoder.py [--quick] [--threads 1] [--device cpu|cuda] [--weights FILE]
                                  [--out bench/results/encoder.json]

Per backend (eager torch, ONNX Runtime on CPU, TensorRT fp16 on CUDA where available) and input
size (64 / 128 / 200 px; 200 is run at 208, the next multiple of 16), median milliseconds of:

* ``encode_rgb`` — once per frame (resize + network + post-processing);
* ``encode_depth`` forward, and forward + backward (gradient wrt the depth map) — what the
  paper-faithful optimiser pays per iteration, always eager torch; depth maps are rendered at
  the input size and pooled to the feature grid inside;
* ``embed_depth`` — once per indexed view (relocalisation).

Prints a table and writes JSON. The machine may be shared: timings vary between runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bronchopt_ros.encoder import EncoderConfig, ModelConfig, load_encoder, save_checkpoint  # noqa: E402
from bronchopt_ros.encoder.model import EncoderNet  # noqa: E402
from bronchopt_ros.encoder.runtime import shipped_weights  # noqa: E402


def _median_ms(fn, reps: int, sync=None) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def bench(weights: Path, device: str, sizes: list[int], reps: int, threads: int | None) -> list[dict]:
    backends = ["torch", "onnx"] if device == "cpu" else ["torch", "tensorrt"]
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    rows = []
    rng = np.random.default_rng(0)
    for size in sizes:
        s16 = int(np.ceil(size / 16) * 16)
        rgb = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        depth = torch.from_numpy(rng.uniform(0.005, 0.05, (s16, s16)).astype(np.float32)).to(device)
        for be in backends:
            enc = load_encoder(EncoderConfig(backend=be, weights=weights, input_size=s16, device=device,
                                             num_threads=threads))
            row = {"backend": enc.backend_name, "asked": be, "size": size, "input_size": s16, "grid": enc.grid,
                   "device": device, "reason": enc.backend_reason}
            row["encode_rgb_ms"] = _median_ms(lambda: enc.encode_rgb(rgb), reps, sync)
            if be == "torch":
                with torch.no_grad():
                    row["encode_depth_fwd_ms"] = _median_ms(lambda: enc.encode_depth(depth), reps, sync)
                    row["embed_depth_ms"] = _median_ms(lambda: enc.embed_depth(depth), reps, sync)
                f_rgb = enc.encode_rgb(rgb).features

                def fwd_bwd():
                    d = depth.clone().requires_grad_()
                    enc.similarity(f_rgb, enc.encode_depth(d)).backward()

                row["encode_depth_fwd_bwd_ms"] = _median_ms(fwd_bwd, reps, sync)
                # the depth branch alone at the feature grid (the renderer may render at that size)
                dg = depth[None, None, : enc.grid, : enc.grid]
                with torch.no_grad():
                    row["depth_branch_at_grid_fwd_ms"] = _median_ms(lambda: enc.encode_depth(dg[0, 0]), reps, sync)
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch / ORT threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="64,128,200")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the shipped weights)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "encoder.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = Path(args.weights) if args.weights else shipped_weights()
    if not weights.exists():
        weights = Path("/tmp/bench_encoder_random.pt")
        save_checkpoint(EncoderNet(ModelConfig()).eval(), weights)
        print(f"(no trained weights: timing a random-initialised model {weights})")
    rows = bench(weights, args.device, [int(s) for s in args.sizes.split(",")], 10 if args.quick else 40, args.threads)
    print(f"\n{'backend':<12} {'size':>5} {'rgb ms':>8} {'depth fwd':>10} {'depth f+b':>10} {'embed':>8}")
    for r in rows:
        print(f"{r['backend']:<12} {r['size']:>5} {r['encode_rgb_ms']:>8.2f} "
              f"{r.get('encode_depth_fwd_ms', float('nan')):>10.2f} {r.get('encode_depth_fwd_bwd_ms', float('nan')):>10.2f} "
              f"{r.get('embed_depth_ms', float('nan')):>8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": args.device,
            "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else None,
            "weights": str(weights)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

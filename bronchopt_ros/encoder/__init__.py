"""The modality- and domain-invariant encoder (RGB endoscope frames <-> CT-rendered depth).

Stable API::

    from bronchopt_ros.encoder import EncoderConfig, load_encoder, RGBEncoding

    enc = load_encoder(EncoderConfig(backend="auto", weights=None, input_size=128, device="cpu"))
    out = enc.encode_rgb(rgb)            # rgb: (H, W, 3) uint8 numpy, or a tensor (H, W, 3) / (3, H, W)
    out.log_depth    # (S, S) torch: predicted log-depth, zero median (scale-normalised), S = input_size
    out.confidence   # (S, S) in [0, 1]: hit probability x predicted-error term (weights for residuals)
    out.features     # (C, g, g): dense L2-normalised features, g = S / feature_stride (64 at S = 128)
    out.embedding    # (D,): global L2-normalised embedding (relocalisation), D = 64
    fd = enc.encode_depth(depth, valid)  # depth (H, W) torch metres (0 = no hit) -> (C, g, g);
                                         # differentiable wrt depth; zero where no valid depth
    emb = enc.embed_depth(depth, valid)  # (D,), comparable with out.embedding (cosine = dot product)
    s = enc.similarity(out.features, fd, mask=None)  # mean cosine over valid cells, in [-1, 1]
    enc.backend_name                     # "torch", "onnxruntime" or "tensorrt"
    enc.input_camera(camera), enc.grid_camera(camera)  # the cameras of the S x S and g x g grids

Depth maps of any size are resized (validity-aware) to the feature grid, and RGB frames to
S x S; non-square frames are stretched, so render depth with ``enc.input_camera(camera)`` or
``enc.grid_camera(camera)`` (both square). ``encode_depth`` and ``similarity`` accept batches
(B, H, W) / (B, C, g, g) too.

Modes of the tracker:

* fast (default): ``encode_rgb`` once per frame; Gauss-Newton on scale-invariant residuals of
  ``out.log_depth`` against the rendered log-depth, weighted by ``out.confidence``.
* paper-faithful: ``F_rgb = encode_rgb(...).features`` once per frame;
  ``similarity(F_rgb, encode_depth(render(pose)))`` maximised by Adam through the differentiable
  renderer (``encode_depth`` is three small convolutions at the feature grid).
* relocalisation: index ``embed_depth`` of views rendered along the centerline, search with
  ``encode_rgb(...).embedding``.

Backends (``EncoderConfig.backend``): ``"auto"`` (ONNX Runtime on CPU when faster than eager
torch), ``"torch"``, ``"onnx"``, ``"tensorrt"`` (CUDA, fp16); fallbacks are logged on the
``bronchopt.encoder`` logger. Training: :mod:`bronchopt_ros.encoder.train` (``bronchopt train``).
The shipped weights and their model card are in this package (``weights/``, ``MODEL_CARD.md``).
"""
from .config import EncoderConfig, ModelConfig
from .runtime import Encoder, RGBEncoding, load_encoder, load_net, save_checkpoint, shipped_weights

__all__ = ["EncoderConfig", "ModelConfig", "Encoder", "RGBEncoding", "load_encoder", "load_net", "save_checkpoint",
           "shipped_weights"]

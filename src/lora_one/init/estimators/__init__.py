"""Estimators of the one-step full gradient G of the training loss w.r.t. each LoRA target weight at the
pretrained weights, one module each, found by `init.estimator` in ESTIMATORS. Each is a function

    estimate(model, cfg, batches, accelerator, needed, seq2seq) → (G per layer or None, {layer: (U, S, Vh, ‖G‖²_F)})

with the `needed[layer]` top singular triplets of every layer's G, `cfg` the `init` config:
  streaming  one backward, each G factorised (`init.svd`) the moment it is complete and freed;
             with `save_artifacts` a CPU copy of each G is kept for init/gradients.safetensors;
  exact      every G accumulated first, then factorised (the reference; one m×n buffer per layer);
  sketch     G never formed: single-pass randomized SVD of two thin sketches (approximate)."""
from lora_one.init.estimators import exact, sketch, streaming

ESTIMATORS = {"streaming": streaming.estimate, "exact": exact.estimate, "sketch": sketch.estimate}

"""Compression on tfmot: pruning, clustering, quantization-aware training, distillation, transfer learning.

Every step takes a tf_keras model and a ``tf.data.Dataset`` of (x, y) batches, fine-tunes a private copy,
checks what it reached, and returns a plain model that saves, loads and converts to TFLite.

>>> pruned = tfopt.compress.prune(model, train_ds, target_sparsity=0.8, epochs=2)  # doctest: +SKIP
>>> tfopt.compress.sparsity(pruned)["overall"]  # doctest: +SKIP
0.8
>>> qat = tfopt.compress.quantize_aware(pruned, train_ds, preserve_sparsity=True)  # doctest: +SKIP
"""

from tfopt.compress.channels import IMPORTANCES, channel_groups, prune_channels
from tfopt.compress.cluster import INITS, cluster
from tfopt.compress.distill import Distiller, distill, distillation_loss
from tfopt.compress.lowrank import FACTORIZABLE, factorize, rank_for_energy
from tfopt.compress.inspect import cluster_counts, m_by_n_ok, sparsity
from tfopt.compress.prune import prune, pruning_schedule
from tfopt._model import flatten_model  # model plumbing (tfopt._model), public here since QAT flattens first
from tfopt.flops import flops, flops_by_layer  # counted in tfopt.flops (below compress), public here beside what lowers them
from tfopt.compress.sensitivity import layer_budgets, sensitivity
from tfopt.compress.quantize import QAT_SCHEMES, load_quantized, quantize_aware, quantize_scheme, save_quantized
from tfopt.compress.quantize_int4 import quantize_aware_int4, snap_to_int4
from tfopt.compress.transfer import build_transfer_model, fine_tune

__all__ = [
    "FACTORIZABLE",
    "IMPORTANCES",
    "INITS",
    "QAT_SCHEMES",
    "Distiller",
    "build_transfer_model",
    "channel_groups",
    "cluster",
    "cluster_counts",
    "distill",
    "distillation_loss",
    "factorize",
    "fine_tune",
    "flatten_model",
    "flops",
    "flops_by_layer",
    "layer_budgets",
    "load_quantized",
    "m_by_n_ok",
    "prune",
    "prune_channels",
    "pruning_schedule",
    "quantize_aware",
    "quantize_aware_int4",
    "quantize_scheme",
    "rank_for_energy",
    "save_quantized",
    "sensitivity",
    "snap_to_int4",
    "sparsity",
]

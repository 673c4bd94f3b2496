"""Every reach into a library's private code, in one table, each with the reason no public name serves.

tfopt uses tf_keras, tfmot and keras-tuner through their public APIs wherever one exists. What remains is
listed in :data:`PRIVATE` and imported only through :func:`private`, so that a version that moved or removed
one of these names fails with a message naming it (and ``tests/test_private.py`` checks every entry against
the pinned versions), not with an ``AttributeError`` deep inside a search or a save.

>>> sorted(PRIVATE)[:2]
['kt_dist_utils', 'kt_multi_objective']
"""

from __future__ import annotations

import importlib

from tfopt.errors import TfoptError

__all__ = ["PRIVATE", "private"]

# key -> (module, attribute or None for the module itself, why no public name serves)
PRIVATE: dict[str, tuple[str, str | None, str]] = {
    "kt_multi_objective": (
        "keras_tuner.src.engine.objective", "MultiObjective",
        "a search over several objectives: keras-tuner 1.4.8 builds one from a list of Objectives only inside "
        "its Keras-3 Tuner; tfopt's BaseTuner subclass must build it itself and recognise it in run_trial"),
    "kt_dist_utils": (
        "keras_tuner.src.distribute.utils", None,
        "is_chief_oracle / has_chief_oracle: keras-tuner reads KERASTUNER_* variables here, and tfopt must ask "
        "the same question the same way before it builds an oracle"),
    "kt_protos": (
        "keras_tuner.src.protos", None,
        "the chief's gRPC service definition, to serve the oracle with a timeout and on loopback"),
    "kt_oracle_chief": (
        "keras_tuner.src.distribute.oracle_chief", None,
        "OracleServicer and exit_chief: keras-tuner's chief loop has no timeout and no way to choose the address"),
    "tfk_saving_lib": (
        "tf_keras.src.saving.saving_lib", None,
        "the per-epoch checkpoint writer reuses one walk of the model's variables (_walk_trackable, "
        "_is_keras_trackable); checkpoints.py falls back to model.save_weights when this is missing"),
    "tfk_to_snake_case": (
        "tf_keras.src.utils.generic_utils", "to_snake_case",
        "the group names save_weights gives nested layers, so the fast writer writes the same file"),
    "tfk_safe_mode_scope": (
        "tf_keras.src.saving.serialization_lib", "SafeModeScope",
        "Keras's own safe-mode flag for the legacy HDF5/SavedModel loaders, which never set it themselves (a second "
        "line of defence behind tfopt.saving.check_model_file); and lifted while tfmot's quantize_apply rebuilds a "
        "model already in memory through deserialize_keras_object, safe by default, which refused the Python "
        "lambdas of tfmot's own SeparableConv1D transform"),
    "tf_eager_context": (
        "tensorflow.python.eager.context", None,
        "configure_coordination_service: deadlines for multi-worker registration, heartbeats and collectives "
        "(tf.distribute's public API has no knob for them, and the defaults wait for minutes); global_seed: the "
        "seed tf.random.set_seed set, which resumable dropout masks are drawn from (no public getter exists, and "
        "random_seed.get_seed advances the op-seed counter)"),
    "tf_coordination_config": (
        "tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2", None,
        "CoordinatedJob, the job list configure_coordination_service takes"),
    "tfmot_pruning_wrapper": (
        "tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper", "PruneLowMagnitude",
        "recognising a layer tfmot wrapped for pruning (prune_low_magnitude returns it, but the class is private)"),
    "tfmot_prune_registry": (
        "tensorflow_model_optimization.python.core.sparsity.keras.prune_registry", "PruneRegistry",
        "which built-in layers and weights tfmot prunes, to name the layers pruning would skip before it runs"),
    "tfmot_cluster_wrapper": (
        "tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper", "ClusterWeights",
        "recognising a layer tfmot wrapped for clustering"),
    "tfmot_clustering_registry": (
        "tensorflow_model_optimization.python.core.clustering.keras.clustering_registry", "ClusteringRegistry",
        "which built-in layers and weights tfmot clusters, to name the layers clustering would skip"),
}


class PrivateAPIError(TfoptError, ImportError):
    """A private name tfopt relies on is gone from the installed library version."""


def private(key: str):
    """The module or attribute that :data:`PRIVATE` lists under ``key``.

    Raises:
        PrivateAPIError: the installed version no longer has it (the message names the entry and the reason).

    >>> private("kt_multi_objective").__name__
    'MultiObjective'
    """
    module_name, attribute, why = PRIVATE[key]
    try:
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
    except (ImportError, AttributeError) as err:
        where = module_name + (f".{attribute}" if attribute else "")
        raise PrivateAPIError(
            f"tfopt needs the private name {where} ({key}: {why}), which the installed version does not have "
            f"({err}); install the versions setup.cfg pins"
        ) from err

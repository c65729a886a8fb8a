"""Training on several devices or machines with TensorFlow's own distribution strategies.

kseg adds no scheduler or transport: ``"mirrored"`` is ``tf.distribute.MirroredStrategy``
(the devices of one machine), ``"multi-worker"`` is
``tf.distribute.MultiWorkerMirroredStrategy``, whose processes find each other through the
``TF_CONFIG`` environment variable and average gradients with collective all-reduce. What
this module adds is the arithmetic and bookkeeping a run needs to give the same result on
one machine and on many:

- **global batch and learning rate**: each replica takes ``per_replica_batch_size``
  examples, so a step sees ``per_replica_batch_size * replicas`` of them; the learning rate
  follows the linear scaling rule of Goyal et al. (2017), ``base_lr * global / base_batch``.
  Keras averages the loss over the global batch, so a run on ``n`` replicas with global
  batch ``B`` takes the same steps as one process with batch ``B`` (the test checks the
  weights agree).
- **one shard of the data per worker**: :func:`shard` sets ``tf.data``'s
  ``AutoShardPolicy.DATA`` (every worker reads the pipeline and keeps its part of each
  global batch) or shards explicitly by worker index for pipelines that must not be read
  whole.
- **who writes**: :func:`is_chief` says which process writes the run folder; the kseg
  training callbacks (:class:`kseg.training.BestModelCheckpoint`,
  :class:`kseg.training.AtomicBackupAndRestore`, :class:`kseg.training.ResumableCSVLogger`)
  ask it, so other workers write nothing, and :class:`kseg.training.VolumeValidation` hands
  every worker the chief's scores, so all of them agree on the best epoch.

Multi-worker commands (two processes on one machine; use host names on a cluster)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' python train.py --strategy multi-worker
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 1}}' python train.py --strategy multi-worker

Worker 0 is the chief. Every worker must see the run folder (a shared file system or a
``gs://`` bucket): only the chief writes it, and on a restart every worker restores the
chief's backup. After a worker dies, the others fail at their next all-reduce (TensorFlow
aborts it: "Collective ops is aborted"); start all of them again with the same commands
and the run resumes from the last finished epoch.

Reference:
    Goyal P, Dollar P, Girshick R, Noordhuis P, Wesolowski L, Kyrola A, Tulloch A, Jia Y,
    He K. "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour". arXiv:1706.02677,
    2017 (the linear scaling rule).
"""

from __future__ import annotations

import json
import numbers
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker")
"""Strategy names :func:`strategy` accepts (the ``--strategy`` choices of a recipe)."""

_SHARD_POLICIES = ("data", "explicit", "off")


def strategy(name: str = "default", *, devices=None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of a name.

    ``"multi-worker"`` must be made when the program starts, before any other TensorFlow
    operation (TensorFlow starts the worker's gRPC server then), and reads the cluster from
    ``TF_CONFIG``; each worker uses its local devices (all GPUs, or the CPU). Build and
    compile the model inside ``with strategy.scope():``.

    Args:
        name: ``"default"`` (one device, no distribution), ``"mirrored"`` (every device of
            this machine) or ``"multi-worker"`` (every worker of ``TF_CONFIG``).
        devices: for ``"mirrored"`` only: the devices to use (default: all GPUs, else the
            CPU).

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        ValueError: an unknown name, ``devices`` with another strategy, or
            ``"multi-worker"`` without a valid ``TF_CONFIG``.

    Example:
        >>> import kseg
        >>> distribution = strategy("mirrored")
        >>> with distribution.scope():
        ...     model = kseg.models.build("unet", input_shape=(128, 128, 1))
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if devices is not None and name != "mirrored":
        raise ValueError(f"devices applies to strategy 'mirrored' only, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    _check_tf_config()
    return KerasMultiWorkerMirroredStrategy()


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``tf.distribute.MultiWorkerMirroredStrategy`` that Keras 3's ``fit`` can train with.

    Keras 3 (through 3.15, keras-team/keras#20585) calls ``strategy.reduce`` in two ways
    this strategy refuses: ``reduce("MEAN", scalar, axis=0)`` for every logged loss and
    metric of a step (meaning the mean over replicas), and ``reduce("MEAN", (x, y))`` on a
    nested first batch, whose shapes it builds the model's metrics from. Here a scalar's
    ``axis=0`` is the mean over replicas (``axis=None``, what Keras computes on one worker),
    and a nested value is reduced leaf by leaf (integer leaves, such as label maps, are
    averaged in float32 and cast back: the collective all-reduce averages floats only).
    Everything else is the TensorFlow strategy unchanged.
    """

    def reduce(self, reduce_op, value, axis=None):
        if not isinstance(value, (tf.distribute.DistributedValues, tf.Tensor)) and (
            tf.nest.is_nested(value)
        ):
            return tf.nest.map_structure(
                lambda leaf: self._reduce_leaf(reduce_op, leaf, axis), value
            )
        return self._reduce_leaf(reduce_op, value, axis)

    def _reduce_leaf(self, reduce_op, value, axis):
        components = self.experimental_local_results(value)
        if axis is not None and components[0].shape.rank == 0:
            axis = None
        dtype = components[0].dtype
        if dtype.is_floating:
            return super().reduce(reduce_op, value, axis=axis)
        as_float = self.run(lambda component: tf.cast(component, tf.float32), args=(value,))
        return tf.cast(super().reduce(reduce_op, as_float, axis=axis), dtype)


def _check_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "strategy 'multi-worker' reads the cluster from the TF_CONFIG environment "
            'variable, which is not set; e.g. TF_CONFIG=\'{"cluster": {"worker": '
            '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}\''
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
        task_type = task["type"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG is not a cluster and task ({error!r}): {raw!r}; expected "
            '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}'
        ) from error
    tasks = config["cluster"].get(task_type)
    if not isinstance(workers, list) or not workers or tasks is None or not 0 <= index < len(tasks):
        raise ValueError(
            f"TF_CONFIG task {task!r} is not one of the cluster's tasks {config['cluster']!r}"
        )
    return config


def _multi_worker(distribution: tf.distribute.Strategy) -> bool:
    in_multi_worker_mode = getattr(distribution.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode and in_multi_worker_mode())


def strategy_of(model) -> tf.distribute.Strategy:
    """The strategy a Keras model trains under: the one it was built in, else the one in
    scope (TensorFlow's default strategy for models of other Keras backends)."""
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


def worker_index(distribution: tf.distribute.Strategy | None = None) -> int:
    """This worker's index among the workers, the chief first (0 on one machine)."""
    distribution = distribution or tf.distribute.get_strategy()
    if not _multi_worker(distribution):
        return 0
    resolver = distribution.cluster_resolver
    if resolver.task_type == "chief":
        return 0
    has_chief = "chief" in resolver.cluster_spec().jobs
    return int(resolver.task_id) + (1 if has_chief else 0)


def num_workers(distribution: tf.distribute.Strategy | None = None) -> int:
    """The number of workers (processes) that train together (1 on one machine)."""
    distribution = distribution or tf.distribute.get_strategy()
    if not _multi_worker(distribution):
        return 1
    spec = distribution.cluster_resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def is_chief(distribution: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's files.

    As in Keras' multi-worker guide: the ``"chief"`` task when the cluster has one, else
    worker 0; always true without a multi-worker strategy.
    """
    distribution = distribution or tf.distribute.get_strategy()
    if not _multi_worker(distribution):
        return True
    resolver = distribution.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().jobs
    )


def global_batch_size(
    per_replica_batch_size: int, distribution: tf.distribute.Strategy | None = None
) -> int:
    """Examples per training step over all replicas: per-replica batch x replicas.

    Batch the ``tf.data`` pipeline given to ``fit`` with this number; the strategy splits
    each batch among the replicas.
    """
    if not _is_positive_int(per_replica_batch_size):
        raise ValueError(
            f"per_replica_batch_size must be an integer >= 1, got {per_replica_batch_size!r}"
        )
    distribution = distribution or tf.distribute.get_strategy()
    return per_replica_batch_size * distribution.num_replicas_in_sync


def scaled_learning_rate(
    base_learning_rate: float, global_batch: int, base_batch_size: int
) -> float:
    """The linear scaling rule: ``base_learning_rate * global_batch / base_batch_size``.

    ``base_learning_rate`` is the rate tuned at batch ``base_batch_size`` (one device); a
    ``k`` times larger global batch takes a ``k`` times larger step (Goyal et al. 2017,
    section 2.1; pair a large factor with a warm-up, as they do).

    Example:
        >>> scaled_learning_rate(1e-3, global_batch=16, base_batch_size=4)
        0.004
    """
    if not (
        isinstance(base_learning_rate, numbers.Real)
        and not isinstance(base_learning_rate, bool)
        and base_learning_rate > 0
    ):
        raise ValueError(f"base_learning_rate must be > 0, got {base_learning_rate!r}")
    for argument, value in (("global_batch", global_batch), ("base_batch_size", base_batch_size)):
        if not _is_positive_int(value):
            raise ValueError(f"{argument} must be an integer >= 1, got {value!r}")
    return float(base_learning_rate) * global_batch / base_batch_size


def shard(
    dataset: tf.data.Dataset,
    distribution: tf.distribute.Strategy | None = None,
    *,
    policy: str = "data",
) -> tf.data.Dataset:
    """Give each worker its own part of a ``tf.data`` pipeline.

    Args:
        dataset: the pipeline given to ``fit``; batched with :func:`global_batch_size`
            for ``"data"``, unbatched for ``"explicit"``.
        distribution: the strategy (default: the one in scope).
        policy: ``"data"``: ``tf.data.experimental.AutoShardPolicy.DATA``; every worker
            reads the whole pipeline and keeps its share of each global batch (what
            in-memory arrays and TFDS splits with fewer files than workers need; the steps
            equal one process with the global batch). ``"explicit"``:
            ``dataset.shard(num_workers, worker_index)`` before batching, for pipelines too
            costly to read whole on every worker; batch the result with the per-worker
            batch. ``"off"``: no sharding (every worker sees every example).

    Returns:
        The dataset with its sharding set.
    """
    if policy not in _SHARD_POLICIES:
        raise ValueError(f"policy must be one of {_SHARD_POLICIES}, got {policy!r}")
    distribution = distribution or tf.distribute.get_strategy()
    options = tf.data.Options()
    if policy == "explicit":
        dataset = dataset.shard(num_workers(distribution), worker_index(distribution))
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    elif policy == "data":
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
    else:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def broadcast_from_chief(values, distribution: tf.distribute.Strategy | None = None):
    """The chief's float64 values, on every worker (an all-reduce of the chief's values and
    zeros); the values themselves without a multi-worker strategy.

    Every worker must call it at the same point with as many values.
    """
    distribution = distribution or tf.distribute.get_strategy()
    if not _multi_worker(distribution):
        return [float(value) for value in values]
    mine = tf.constant(
        [float(value) for value in values] if is_chief(distribution) else [0.0] * len(values),
        dtype=tf.float64,
    )

    local_replicas = len(distribution.extended.worker_devices)
    first_local_replica = local_replicas * worker_index(distribution)

    def contribution(context):
        if context.replica_id_in_sync_group == first_local_replica:
            return mine
        return tf.zeros_like(mine)

    per_replica = distribution.experimental_distribute_values_from_function(contribution)
    total = distribution.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return [float(value) for value in total.numpy()]


def barrier(distribution: tf.distribute.Strategy | None = None) -> None:
    """Wait until every worker has reached this call (one all-reduce; nothing on one machine).

    For work one process must do before the others go on, e.g. the chief preparing the
    TFDS dataset the workers then read::

        if is_chief(distribution):
            builder.download_and_prepare()
        barrier(distribution)
    """
    broadcast_from_chief([0.0], distribution)


def _is_positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


__all__ = [
    "STRATEGIES",
    "KerasMultiWorkerMirroredStrategy",
    "barrier",
    "broadcast_from_chief",
    "global_batch_size",
    "is_chief",
    "num_workers",
    "scaled_learning_rate",
    "shard",
    "strategy",
    "strategy_of",
    "worker_index",
]

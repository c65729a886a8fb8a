"""kseg.training.distribute: two MultiWorkerMirroredStrategy workers on the loopback address.

Two worker processes (``TF_CONFIG`` with two ``127.0.0.1`` ports, CPU) train a small 2D
model with ``training_callbacks`` (``VolumeValidation``, ``BestModelCheckpoint``, the LR
schedule, ``ResumableCSVLogger``, ``AtomicBackupAndRestore``) in one shared run folder. The
chief is paused when epoch 2 begins, then both workers are killed (``kill -9``) and started
again: the run resumes from the chief's backup at epoch 2 and completes. Checked against
one plain process training with the same global batch: the final weights agree within
float tolerance, and so do the whole-volume Dice of every epoch; both workers log the same
scores and best epoch; the history holds every epoch once (two writers would duplicate
rows). The same reference process also trains under ``MirroredStrategy`` on two logical
CPUs, which must agree as well. The training and patch-validation logs (``loss``,
``val_dice``, summed over the workers by Keras) match the single process too. A time
budget whose clock races on worker 1 stops nobody: the chief's clock decides for all; a
``barrier`` holds worker 1 until the chief has written a file.
"""

import json
import textwrap
import time

import numpy as np
import pytest
from child_processes import JsonLinesChild, free_ports, without_tf_config

from kseg.training import distribute

EPOCHS = 4
PAUSE_AT = 2
TIMEOUT = 150  # seconds for any one wait; TensorFlow starts slowly on a busy machine

CHILD = textwrap.dedent(
    """
    import itertools
    import json
    import os
    import sys
    import time

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    run_dir, strategy_name, epochs, weights_out, pause_at = sys.argv[1:6]
    epochs, pause_at = int(epochs), int(pause_at)
    if strategy_name == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from kseg.training import distribute

    distribution = distribute.strategy(
        strategy_name, **({"devices": ["/cpu:0", "/cpu:1"]} if strategy_name == "mirrored" else {}))

    import keras

    from kseg.metrics import DiceScore
    from kseg.training import TimeBudget, VolumeValidation, training_callbacks

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8, 8, 1)).astype("float32")
    labels = (images[..., 0] + 0.5 * rng.normal(size=(20, 8, 8)) > 0.2).astype("uint8")
    GLOBAL_BATCH, BASE_BATCH, BASE_LEARNING_RATE = 4, 2, 0.01
    per_replica = GLOBAL_BATCH // distribution.num_replicas_in_sync
    global_batch = distribute.global_batch_size(per_replica, distribution)
    learning_rate = distribute.scaled_learning_rate(BASE_LEARNING_RATE, global_batch, BASE_BATCH)
    train = tf.data.Dataset.from_tensor_slices((images[:16], labels[:16, ..., None]))
    train = distribute.shard(train.batch(global_batch), distribution)
    patches = tf.data.Dataset.from_tensor_slices((images[16:], labels[16:, ..., None]))
    patches = distribute.shard(patches.batch(global_batch), distribution)
    with distribution.scope():
        inputs = keras.Input((8, 8, 1))
        hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(hidden))
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                      loss="binary_crossentropy", metrics=[DiceScore(num_classes=1)])

    validation = VolumeValidation([("p0", images[16:], labels[16:], (1.0, 1.0, 1.0))])
    worker = distribute.worker_index(distribution)
    marker = run_dir + ".prepared"
    if distribute.is_chief(distribution) and strategy_name == "multi-worker":
        time.sleep(1.0)  # a chief slower than its worker: the worker must wait for it
        open(marker, "w").close()
    distribute.barrier(distribution)
    assert strategy_name != "multi-worker" or os.path.exists(marker)
    # worker 1's clock runs an hour a reading: on its own it would stop after one batch and
    # leave the chief waiting in an all-reduce; the chief's clock decides for both
    readings = itertools.count()
    callbacks = training_callbacks(
        run_dir, validation, reduce_lr_patience=1, max_minutes=60,
        clock=(lambda: time.monotonic() + 3600.0 * next(readings)) if worker == 1
        else time.monotonic)
    checkpoint = callbacks[1]
    budget = next(callback for callback in callbacks if isinstance(callback, TimeBudget))


    class Protocol(keras.callbacks.Callback):
        first = True

        def on_epoch_begin(self, epoch, logs=None):
            if self.first:  # the backup has been restored by now
                self.first = False
                print(json.dumps({"start": epoch}), flush=True)
            if epoch == pause_at and worker == 0:
                print(json.dumps({"paused": epoch}), flush=True)
                sys.stdin.readline()

        def on_epoch_end(self, epoch, logs=None):  # after the checkpoint and the backup
            print(json.dumps({
                "done": epoch, "val_volume_dice": logs["val_volume_dice"],
                "loss": logs["loss"], "val_dice": logs["val_dice"],
                "best_epoch": checkpoint.best_epoch, "best": checkpoint.best,
                "learning_rate": float(model.optimizer.learning_rate.numpy()),
            }), flush=True)


    model.fit(train, epochs=epochs, verbose=0, validation_data=patches,
              callbacks=[*callbacks, Protocol()])
    np.savez(weights_out, *[np.asarray(weight) for weight in model.get_weights()])
    print(json.dumps({"finished": worker, "chief": distribute.is_chief(distribution),
                      "own_clock_stopped": budget.stop_reason is not None,
                      "replicas": distribution.num_replicas_in_sync}), flush=True)
    """
)


class Child(JsonLinesChild):
    """One training process; its stdout read as JSON lines, stderr kept in a file."""

    def __init__(
        self, zygote, tmp_path, name, run_dir, strategy, weights, *, tf_config=None, pause=-1
    ):
        environment = without_tf_config()
        if tf_config is not None:
            environment["TF_CONFIG"] = json.dumps(tf_config)
        arguments = [run_dir, strategy, EPOCHS, weights, pause]
        super().__init__(tmp_path, name, CHILD, arguments, environment, zygote=zygote)

    def epochs(self):
        return [message for message in self.messages if "done" in message]


def cluster(ports, index):
    return {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }


def weights(path):
    with np.load(path) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))]


@pytest.mark.slow
def test_two_workers_resume_after_a_kill_and_match_one_process(tmp_path, zygote):
    run_dir = tmp_path / "run"
    children = []
    # every process below is forked from the worker's zygote, which imported TensorFlow once
    # (CPU-seconds each otherwise); each starts its own TensorFlow runtime
    try:
        ports = free_ports(2)
        workers = [
            Child(
                zygote,
                tmp_path,
                f"worker{index}",
                run_dir,
                "multi-worker",
                tmp_path / f"worker{index}-killed.npz",
                tf_config=cluster(ports, index),
                pause=PAUSE_AT,
            )
            for index in range(2)
        ]
        children += workers
        single = Child(
            zygote, tmp_path, "single", tmp_path / "single", "default", tmp_path / "single.npz"
        )
        children.append(single)
        deadline = time.monotonic() + TIMEOUT
        workers[0].read_until("paused", deadline)
        assert workers[0].messages[0] == {"start": 0}
        # the chief waits at the start of epoch 2; worker 1 waits in its first all-reduce
        assert [message["done"] for message in workers[0].epochs()] == [0, 1]
        backup = run_dir / "backup" / "latest.weights.h5"
        assert backup.is_file()
        for worker in reversed(workers):
            worker.kill()
        killed_logs = [worker.epochs() for worker in workers]

        ports = free_ports(2)
        resumed = [
            Child(
                zygote,
                tmp_path,
                f"resumed{index}",
                run_dir,
                "multi-worker",
                tmp_path / f"worker{index}.npz",
                tf_config=cluster(ports, index),
            )
            for index in range(2)
        ]
        children += resumed
        single.read_until("finished", deadline)
        deadline = time.monotonic() + TIMEOUT
        finished = [worker.read_until("finished", deadline) for worker in resumed]
        # The mirrored reference (two CPUs) starts once the workers are done: beside them, a
        # busy CI machine starved a worker's coordination heartbeat past TensorFlow's 10 s
        # and the cluster aborted.
        mirrored = Child(
            zygote,
            tmp_path,
            "mirrored",
            tmp_path / "mirrored",
            "mirrored",
            tmp_path / "mirrored.npz",
        )
        children.append(mirrored)
        mirrored_finished = mirrored.read_until("finished", time.monotonic() + TIMEOUT)
    finally:
        for child in children:
            child.kill()

    assert [message["finished"] for message in finished] == [0, 1]
    assert [message["chief"] for message in finished] == [True, False]
    # worker 1's budget stopped it, yet it trained every epoch with the chief
    assert [message["own_clock_stopped"] for message in finished] == [False, True]
    assert mirrored_finished["replicas"] == 2
    for worker in resumed:  # resumed from the backup of epoch 1, not from zero
        assert worker.messages[0] == {"start": PAUSE_AT}

    # every worker saw the chief's whole-volume scores and agreed on the best epoch
    worker0_log = killed_logs[0] + resumed[0].epochs()
    worker1_log = resumed[1].epochs()
    assert [message["done"] for message in worker0_log] == list(range(EPOCHS))
    assert worker1_log == resumed[0].epochs()
    single_log = single.epochs()
    for key in ("loss", "val_dice", "val_volume_dice", "best_epoch", "learning_rate"):
        assert [message[key] for message in worker0_log] == pytest.approx(
            [message[key] for message in single_log], abs=1e-6
        ), key
    best_epoch = single_log[-1]["best_epoch"]

    # only the chief wrote: one row per epoch, the best model's record and no temporaries
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [str(epoch) for epoch in range(EPOCHS)]
    record = json.loads((run_dir / "best.keras.json").read_text())
    assert record["epoch"] == best_epoch == worker1_log[-1]["best_epoch"]
    assert record["best"] == pytest.approx(worker0_log[best_epoch]["val_volume_dice"])
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "best.keras",
        "best.keras.json",
        "history.csv",
    ]

    # the same steps as one process with the global batch: weights within float tolerance
    reference = weights(tmp_path / "single.npz")
    for name in ("worker0", "worker1", "mirrored"):
        for got, expected in zip(weights(tmp_path / f"{name}.npz"), reference, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_scaled_learning_rate_is_the_linear_rule():
    assert distribute.scaled_learning_rate(0.1, 256, 256) == 0.1
    # Goyal et al. 2017: batch 8192 from the reference 0.1 at batch 256
    assert distribute.scaled_learning_rate(0.1, 8192, 256) == pytest.approx(3.2)
    with pytest.raises(ValueError, match="base_learning_rate"):
        distribute.scaled_learning_rate(0, 8, 4)
    with pytest.raises(ValueError, match="global_batch"):
        distribute.scaled_learning_rate(0.1, 0, 4)


def test_one_process_is_its_own_chief():
    assert distribute.global_batch_size(3) == 3
    assert distribute.is_chief()
    assert (distribute.worker_index(), distribute.num_workers()) == (0, 1)
    assert distribute.broadcast_from_chief([0.5, float("nan")])[0] == 0.5
    with pytest.raises(ValueError, match="per_replica_batch_size"):
        distribute.global_batch_size(0)


def test_explicit_sharding_in_one_process_keeps_every_example():
    import tensorflow as tf

    dataset = distribute.shard(tf.data.Dataset.range(6), policy="explicit")
    assert list(dataset.as_numpy_iterator()) == list(range(6))
    with pytest.raises(ValueError, match="policy"):
        distribute.shard(dataset, policy="file")


def test_strategy_names_and_tf_config_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'horovod'"):
        distribute.strategy("horovod")
    with pytest.raises(ValueError, match="devices applies"):
        distribute.strategy("default", devices=["/cpu:0"])
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        distribute.strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {}}')
    with pytest.raises(ValueError, match="not a cluster and task"):
        distribute.strategy("multi-worker")
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
    )
    with pytest.raises(ValueError, match="not one of the cluster's tasks"):
        distribute.strategy("multi-worker")

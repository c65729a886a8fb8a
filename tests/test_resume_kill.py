"""kill -9 a real training process at seeded random moments; every rerun resumes.

A child process trains a tiny 2D model with ``training_callbacks``. After each kill the
same script is run again; when it reaches its first epoch it reports the epoch and waits on
stdin, so the run folder is checked while nothing writes to it: training resumes after the
last epoch the killed process reported finished (not from zero), no temporary file
survives, ``history.csv`` has each finished epoch once, and ``best.keras`` loads and scores
on the validation volume what ``best.keras.json`` says (numpy Dice of its predictions).
"""

import json
import os
import pathlib
import signal
import subprocess
import textwrap

import keras
import numpy as np
import pytest

EPOCHS = 30
KILLS = 4  # each rerun is forked from a process that imported TensorFlow once
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np
    import tensorflow as tf

    from kseg.training import VolumeValidation, training_callbacks

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    run_dir, epochs = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 16, 16, 1)).astype("float32")
    labels = (images[..., 0] + 0.7 * rng.normal(size=(12, 16, 16)) > 0.3).astype("uint8")
    np.savez(run_dir + ".validation.npz", image=images[8:], label=labels[8:])

    inputs = keras.Input((None, None, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")


    class Protocol(keras.callbacks.Callback):
        first = True

        def on_epoch_begin(self, epoch, logs=None):
            if self.first:  # every other callback has restored its state by now
                self.first = False
                print(f"start {epoch}", flush=True)
                sys.stdin.readline()

        def on_epoch_end(self, epoch, logs=None):  # after the backup of this epoch
            print(f"done {epoch}", flush=True)


    class Validated(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # before the checkpoint and the backup
            print(f"validated {epoch}", flush=True)


    validation = VolumeValidation([("p", images[8:], labels[8:], None)])
    callbacks = training_callbacks(run_dir, validation, reduce_lr_patience=2)
    callbacks = [callbacks[0], Validated(), *callbacks[1:], Protocol()]
    model.fit(images[:8], labels[:8, ..., None], batch_size=2, epochs=epochs, verbose=0,
              callbacks=callbacks)
    print("finished", flush=True)
    """
)


def numpy_dice(truth, prediction):
    return 2 * np.sum(truth & prediction) / (truth.sum() + prediction.sum())


def history_rows(path):
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if not lines:  # opened by the logger of a run killed before its first row
        return []
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def check_run_folder(run_dir, start_epoch):
    """The state a run starting at ``start_epoch`` finds, with nothing writing to it."""
    leftovers = sorted(p.relative_to(run_dir) for p in run_dir.rglob(".*"))
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    rows = history_rows(run_dir / "history.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(start_epoch))
    if not (run_dir / "best.keras").exists():
        assert start_epoch == 0  # every finished epoch has a finite score, hence a best
        return
    record = json.loads((run_dir / "best.keras.json").read_text())
    validation = np.load(f"{run_dir}.validation.npz")
    model = keras.saving.load_model(run_dir / "best.keras")
    probabilities = model.predict(validation["image"], batch_size=4, verbose=0)[..., 0]
    rescored = numpy_dice(validation["label"].astype(bool), probabilities >= 0.5)
    assert record["best"] == pytest.approx(rescored, rel=1e-5)
    if start_epoch > 0:
        # a resumed run keeps the best so far: no finished epoch scored better; it may come
        # from the epoch in progress at a kill (saved before that epoch's backup), which
        # the rerun of that epoch then had to beat
        assert record["epoch"] <= start_epoch
        assert record["best"] >= max(float(row["val_volume_dice"]) for row in rows) - 1e-6


def start(zygote, child, run_dir, log):
    """``python child run_dir EPOCHS``, forked from ``zygote``: a new process, which starts
    its own TensorFlow runtime, without paying TensorFlow's import (seconds) at each rerun."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")])
    log.flush()
    process = zygote.popen(
        child.read_text(), [run_dir, EPOCHS], env, log, argv0=child, cwd=pathlib.Path.cwd()
    )
    line = process.stdout.readline()
    if not line.startswith("start "):
        process.kill()
        process.wait()
        log.flush()
        pytest.fail(f"child did not start ({line!r}): {open(log.name).read()[-3000:]}")
    return process, int(line.split()[1])


def finished_epochs(output):
    return [int(line.split()[1]) for line in output.splitlines() if line.startswith("done ")]


def test_kill_at_random_moments_and_resume(tmp_path, zygote):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(20261202)
    last_finished = -1  # the last epoch a process reported finished (and backed up)
    kills, resumed_starts = 0, []
    process = None  # a child left by a failed assertion is killed, not left running
    try:
        with open(tmp_path / "child.log", "w") as log:
            while kills < KILLS:
                process, start_epoch = start(zygote, child, run_dir, log)
                # the epoch in progress at the kill is lost, nothing more; a kill after the
                # backup of an epoch but before its "done" line resumes one epoch later
                assert start_epoch in (last_finished + 1, last_finished + 2)
                if kills:
                    resumed_starts.append(start_epoch)
                check_run_folder(run_dir, start_epoch)
                process.stdin.write("go\n")
                process.stdin.flush()
                # kill at a random moment up to about two epochs after the validation of a
                # random epoch: in the writes that follow it (best model, score copy, history,
                # backup) or in the training and validation of the next epoch
                output, validated = [], 0
                target = rng.integers(1, 4)
                while validated < target:
                    line = process.stdout.readline()
                    output.append(line)
                    validated += line.startswith("validated ")
                    if not line or line.startswith("finished"):
                        break
                try:
                    process.wait(timeout=rng.uniform(0.0, 0.15))
                except subprocess.TimeoutExpired:
                    process.kill()
                    kills += 1
                output = "".join(output) + process.communicate()[0]
                done = finished_epochs(output)
                if process.returncode != -signal.SIGKILL:  # it ended on its own: it completed
                    log.flush()
                    assert process.returncode == 0, open(log.name).read()[-3000:]
                    assert "finished" in output and done[-1] == EPOCHS - 1
                    last_finished = -1  # the next run is a new run
                elif done:
                    last_finished = done[-1]

            process, start_epoch = start(zygote, child, run_dir, log)
            assert start_epoch in (last_finished + 1, last_finished + 2)
            check_run_folder(run_dir, start_epoch)
            output, _ = process.communicate("go\n", timeout=300)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert "finished" in output and process.returncode == 0
    assert [int(row["epoch"]) for row in history_rows(run_dir / "history.csv")] == list(
        range(EPOCHS)
    )
    assert not (run_dir / "backup").exists()
    # the kills came after finished epochs often enough that resuming was exercised
    assert sum(epoch > 0 for epoch in resumed_starts) >= KILLS // 2
    check_run_folder(run_dir, EPOCHS)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.keras",
        "best.keras.json",
        "history.csv",
    ]

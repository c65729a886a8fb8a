"""Session 26: what the lead found while applying the helpers' reports."""

import shutil

import numpy as np
from test_runs_25 import _interrupted_run


def _sigmoid_model(path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, None, 1)),
                              keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    model.save(path)


def test_an_input_folder_of_lctsc_test_patients_alone_is_scored(tmp_path, capsys):
    """The LCTSC challenge's test patients (``LCTSC-Test-*``) downloaded apart and scored
    with ``kseg evaluate RUN --input DIR``: the builder dealt only training patients into
    folds and, with none, stopped ("needs at least 1 patients, got 0"). They are the
    challenge's own test split, scored every one."""
    from kseg import cli
    from kseg.phantoms.lctsc import write_lctsc

    written = write_lctsc(tmp_path / "download", num_patients=1, num_test_patients=2,
                          num_slices=3, size=32, seed=0)
    tests = tmp_path / "challenge test" / "LCTSC"
    tests.mkdir(parents=True)
    for patient in sorted((written / "LCTSC").glob("LCTSC-Test-*")):
        shutil.copytree(patient, tests / patient.name)
    run = _interrupted_run(tmp_path / "run", recipe="lctsc_lungs", config="lungs")
    shutil.rmtree(run / "backup")
    _sigmoid_model(run / "best.keras")
    assert cli.main(["evaluate", str(run), "--input", str(tests.parent)]) == 0, (
        capsys.readouterr().err)
    scores = (run / "evaluation" / "input-challenge test" / "scores.csv").read_text()
    rows = [line.split(",")[0] for line in scores.splitlines()[1:]]
    assert rows == ["LCTSC-Test-S1-101", "LCTSC-Test-S2-101"]
    assert np.isfinite([float(line.split(",")[1]) for line in scores.splitlines()[1:]]).all()

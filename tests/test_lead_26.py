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


def test_an_evaluation_stopped_while_scoring_leaves_no_stale_table(tmp_path, monkeypatch):
    """``kseg evaluate --input`` again after the model changed, stopped part-way through
    scoring: the case files scored so far were the new model's while ``scores.csv`` still
    held the earlier evaluation's rows, which the report showed beside them. The table goes
    when scoring starts; the finished evaluation writes its own."""
    from test_runs_25 import _softmax_model

    from kseg import cli
    from kseg.phantoms import xray
    from kseg.recipes import _evaluation

    run = _interrupted_run(tmp_path / "run", config="generic", phantom_images=3)
    shutil.rmtree(run / "backup")
    _softmax_model(run / "best.keras", channels=len(xray.GENERIC_CLASSES) + 1)
    images = xray.write_generic(tmp_path / "outside", num_images=3, size=16, seed=0,
                                classes=xray.GENERIC_CLASSES)
    assert cli.main(["evaluate", str(run), "--input", str(images)]) == 0
    folder = run / "evaluation" / "input-outside"
    assert len((folder / "scores.csv").read_text().splitlines()) == 4

    written, real_write_case = [], _evaluation.write_case

    def stopped_after_one(*args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(real_write_case(*args, **kwargs))

    monkeypatch.setattr(_evaluation, "write_case", stopped_after_one)
    try:
        cli.main(["evaluate", str(run), "--input", str(images)])
    except KeyboardInterrupt:
        pass
    assert len(written) == 1
    assert not (folder / "scores.csv").exists()
    monkeypatch.setattr(_evaluation, "write_case", real_write_case)
    assert cli.main(["evaluate", str(run), "--input", str(images)]) == 0
    assert len((folder / "scores.csv").read_text().splitlines()) == 4


def test_integer_images_through_a_clipping_augmenter_are_refused():
    """8-bit radiographs given to kseg's default augmenter as read (0..255): its Gaussian
    noise clips to [0, 1], so every image it drew noise for came out black and white
    (each pixel 0 or 1) and trained so, silently. The image dtype is known when the step is
    traced: refused there, naming the layer and the range. Float images in [0, 1] pass."""
    import keras
    import pytest
    import tensorflow as tf

    from kseg.augment import segmentation_augmenter

    augmenter = segmentation_augmenter(2, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)
    masks = (images > 127).astype(np.uint8)

    @tf.function
    def step(batch):
        return augmenter(batch, training=True)

    with pytest.raises(ValueError, match=r"dtype uint8, but .* clips intensities to \[0"):
        step({"images": images, "segmentation_masks": masks})
    scaled = step({"images": images.astype(np.float32) / 255, "segmentation_masks": masks})
    out = keras.ops.convert_to_numpy(scaled["images"])
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_one_class_name_given_as_a_string_is_refused():
    """``flip_tta(model, class_names="lung_left")``: the string was read letter by letter,
    no letter says "left", so the left-right axis was mirrored and the lungs swapped. A
    string is refused wherever the mirror axes are derived from class names."""
    import pytest

    from kseg.inference import flip_tta, tta_uncertainty
    from kseg.inference.tta import inference_mirror_axes
    from kseg.plan import rule_mirror_axes

    def model(batch):
        return np.stack([batch[..., 0], 1 - batch[..., 0]], axis=-1)

    x = np.random.default_rng(0).random((1, 8, 8, 1)).astype(np.float32)
    assert rule_mirror_axes(2, ["background", "lung_left"]) == (0,)
    for derive in (lambda: rule_mirror_axes(2, "lung_left"),
                   lambda: inference_mirror_axes(None, 2, "lung_left"),
                   lambda: flip_tta(model, class_names="lung_left")(x),
                   lambda: tta_uncertainty(model, x, samples=2, class_names="lung_left")):
        with pytest.raises(ValueError, match=r"single name 'lung_left'; pass \['lung_left'\]"):
            derive()


def test_the_default_augmenter_keeps_left_and_right_classes_on_their_side():
    """``segmentation_augmenter()`` for LCTSC's lung_left / lung_right mirrored the
    left-right axis half the time (and turned it in 3D), teaching the model the labels
    swapped. With the class names it leaves those transforms out: a left-lung blob on the
    image's right stays there in every augmented sample (no mirror puts it on the left)."""
    import keras

    from kseg.augment import segmentation_augmenter

    names = ["background", "lung_left", "lung_right"]
    for spatial_dims, shape in ((2, (16, 16)), (3, (8, 16, 16))):
        image = np.zeros((32, *shape, 1), np.float32)
        image[..., 4:12, 11:15, 0] = 1.0  # right of the image: the patient's left
        mask = (image > 0.5).astype(np.int32)
        batch = {"images": image, "segmentation_masks": mask}
        for class_names, mirrored_somewhere in ((None, True), (names, False)):
            augmenter = segmentation_augmenter(spatial_dims, intensity=False, seed=3,
                                               class_names=class_names)
            out = keras.ops.convert_to_numpy(
                augmenter(batch, training=True)["segmentation_masks"])
            width = shape[-1]
            left_half = out[..., : width // 2, 0].reshape(32, -1).sum(axis=1)
            right_half = out[..., width // 2:, 0].reshape(32, -1).sum(axis=1)
            assert bool(np.any(left_half > right_half)) == mirrored_somewhere, (
                spatial_dims, class_names)


def test_a_tracking_folder_given_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``--mlflow-uri=~/mlruns`` reaches kseg with its tilde (the shell expands ``~`` only
    at the start of a word): the runs went to a folder literally named ``~`` in the working
    directory. ``~`` is the home folder, as ``os.path.expanduser`` reads it."""
    import pathlib

    from kseg.tracking import _tracking_uri

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    uri = _tracking_uri(tmp_path / "run", "~/mlruns", mlflow=None)
    assert uri == (tmp_path / "home" / "mlruns").as_uri()
    assert _tracking_uri(tmp_path / "run", pathlib.Path("store"), mlflow=None) == (
        (tmp_path / "store").as_uri())

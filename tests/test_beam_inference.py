"""Batch prediction on Beam equals the plain loop, and a finished volume is never redone.

Three small NIfTI volumes and a tiny saved 2D model: the pipeline (DirectRunner, two worker
processes) must write, per volume, the prediction a plain loop of
:func:`kseg.predict.predict_path` + :func:`kseg.predict.write_predictions` writes (read back
with nibabel: labels and affine); a second run must skip every volume without touching its
file, and a run after one file is removed must redo that volume only.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")
keras = pytest.importorskip("keras")

from kseg.errors import LayoutError  # noqa: E402
from kseg.inference import BatchPrediction, predict_volumes, prediction_file  # noqa: E402
from kseg.predict import predict_path, write_predictions  # noqa: E402

SIZE = 16
INFERENCE = {
    "kind": "slices",
    "window": [-100.0, 200.0],
    "image_size": [SIZE, SIZE],
    "num_classes": 2,
}
LABELS = {"organ": 1}


def _two_workers():
    return beam.options.pipeline_options.PipelineOptions(
        flags=[], direct_running_mode="multi_processing", direct_num_workers=2
    )


@pytest.fixture(scope="module")
def volumes_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_inference")
    rng = np.random.default_rng(0)
    volumes = []
    for index in range(3):
        # (x, y, z) on disk; bright blobs the model can pick out, on another grid each.
        hu = rng.normal(0.0, 30.0, size=(SIZE, SIZE, 3 + index)).astype(np.int16)
        hu[4:10, 5:12, :] += 150
        affine = np.diag([0.8 + 0.1 * index, 0.8, 2.5 + index, 1.0])
        path = root / "volumes" / f"case_{index}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(hu, affine), str(path))
        volumes.append(path)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Conv2D(2, 3, padding="same", activation="softmax"),
        ]
    )
    model_path = root / "best.keras"
    model.save(model_path)
    return volumes, model_path, model


def _plain_loop(model, volumes, output_dir):
    for volume in volumes:
        write_predictions(
            predict_path(model, INFERENCE, volume), output_dir, "nifti", labels=LABELS
        )


def _read(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def test_beam_predictions_equal_the_plain_loop_and_a_rerun_skips_them(volumes_and_model, tmp_path):
    volumes, model_path, model = volumes_and_model
    _plain_loop(model, volumes, tmp_path / "plain")
    output_dir = tmp_path / "beam"

    result = predict_volumes(
        model_path, INFERENCE, volumes, output_dir, labels=LABELS, beam_options=_two_workers()
    )
    expected = tuple(output_dir / f"case_{i}.nii.gz" for i in range(3))
    assert result == BatchPrediction(written=expected, skipped=())
    for index, path in enumerate(expected):
        labels, affine = _read(path)
        plain_labels, plain_affine = _read(tmp_path / "plain" / f"case_{index}.nii.gz")
        assert labels.shape == (SIZE, SIZE, 3 + index)
        np.testing.assert_array_equal(labels, plain_labels)
        np.testing.assert_array_equal(affine, plain_affine)
    assert any(_read(path)[0].any() for path in expected)  # not an all-background model
    assert sorted(p.name for p in output_dir.iterdir()) == [p.name for p in expected]

    finished = {path: os.stat(path).st_mtime_ns for path in expected}
    again = predict_volumes(
        model_path, INFERENCE, volumes, output_dir, labels=LABELS, beam_options=_two_workers()
    )
    assert again == BatchPrediction(written=(), skipped=expected)
    assert {path: os.stat(path).st_mtime_ns for path in expected} == finished

    # A run stopped after two volumes: only the third is predicted; a temporary file a
    # killed writer left beside it is removed. The driver decides both before the pipeline
    # starts, so the in-process DirectRunner does here (two more worker processes would
    # only import TensorFlow again).
    expected[2].unlink()
    leftover = output_dir / ".case_2.nii.gz.k3x9a0q1.nii.gz"
    leftover.write_bytes(b"half a file")
    resumed = predict_volumes(
        model_path,
        INFERENCE,
        [volumes[0].parent],
        output_dir,
        labels=LABELS,
        beam_options=beam.options.pipeline_options.PipelineOptions(flags=[]),
    )
    assert resumed == BatchPrediction(written=expected[2:], skipped=expected[:2])
    assert {p: os.stat(p).st_mtime_ns for p in expected[:2]} == {
        p: finished[p] for p in expected[:2]
    }
    np.testing.assert_array_equal(
        _read(expected[2])[0], _read(tmp_path / "plain" / "case_2.nii.gz")[0]
    )
    assert not leftover.exists()


def test_the_worker_skips_a_volume_whose_file_appeared_after_the_driver_looked(
    volumes_and_model, tmp_path
):
    # A retried bundle, or a second job on the same folder: the DoFn itself checks.
    volumes, model_path, _ = volumes_and_model
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    existing = prediction_file(volumes[0], output_dir)
    existing.write_bytes(b"finished elsewhere")
    from kseg.inference import PredictVolumeFn

    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(flags=[])) as p:
        _ = (
            p
            | beam.Create([str(volumes[0]), str(volumes[1])])
            | beam.ParDo(PredictVolumeFn(model_path, INFERENCE, output_dir, labels=LABELS))
        )
    assert existing.read_bytes() == b"finished elsewhere"
    assert prediction_file(volumes[1], output_dir).is_file()


def test_inputs_are_checked_before_anything_runs(volumes_and_model, tmp_path):
    volumes, model_path, _ = volumes_and_model
    # two volumes of one name in one folder (volumes of one name in different folders are
    # written into those folders' names: tests/test_runs_25.py)
    twin = tmp_path / "in" / "case_0.nii"
    twin.parent.mkdir()
    twin.write_bytes(volumes[0].read_bytes())
    (tmp_path / "in" / "case_0.nii.gz").write_bytes(volumes[0].read_bytes())
    with pytest.raises(LayoutError, match=r"would write \S*case_0\.nii\.gz"):
        predict_volumes(model_path, INFERENCE, [tmp_path / "in" / "case_0.nii.gz", twin],
                        tmp_path / "out", labels=LABELS)
    with pytest.raises(LayoutError, match="is neither a NIfTI file"):
        predict_volumes(
            model_path, INFERENCE, [tmp_path / "missing.nii.gz"], tmp_path / "o", labels=LABELS
        )
    with pytest.raises(ValueError, match="one file per volume"):
        predict_volumes(model_path, INFERENCE, volumes, tmp_path / "o", labels=LABELS, format="png")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_a_run_folder_gives_the_model_inference_and_labels(volumes_and_model, tmp_path):
    import json
    import shutil

    volumes, model_path, model = volumes_and_model
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model_path, run / "best.keras")
    config = {
        "kseg_config_version": 1,
        "recipe": "chaos_liver",
        "arguments": {},
        "seed": 0,
        "created": "2026-12-02T03:00:00+00:00",
        "versions": {},
        "git_commit": None,
        "dataset": {},
        "labels": LABELS,
        "inference": INFERENCE,
    }
    (run / "config.json").write_text(json.dumps(config))
    from kseg.inference import predict_run_volumes

    result = predict_run_volumes(
        run,
        volumes[:1],
        tmp_path / "out",
        beam_options=beam.options.pipeline_options.PipelineOptions(flags=[]),
    )
    assert result.written == (tmp_path / "out" / "case_0.nii.gz",)
    _plain_loop(model, volumes[:1], tmp_path / "plain")
    np.testing.assert_array_equal(
        _read(result.written[0])[0], _read(tmp_path / "plain" / "case_0.nii.gz")[0]
    )

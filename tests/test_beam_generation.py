"""Beam generation writes what the plain path writes: every builder, on phantom data.

Each dataset is prepared twice from one phantom folder, once plainly and once with the Beam
DirectRunner (two worker processes for the X-ray builder and the failing pipeline, two
threads for the others), and the two datasets are compared
split by split: the serialized examples (the bytes TFDS wrote for every feature, examples
sorted, since the two writers need not shard alike), the example counts and the foreground
statistics saved in ``metadata.json``. The reference is the plain path, which the builders'
own tests check against the phantoms' ground truth.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image

beam = pytest.importorskip("apache_beam")
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from kseg.errors import MaskError  # noqa: E402
from kseg.phantoms.chaos import write_chaos  # noqa: E402
from kseg.phantoms.lctsc import write_lctsc  # noqa: E402
from kseg.phantoms.msd_spleen import write_msd_spleen  # noqa: E402
from kseg.phantoms.xray import write_generic  # noqa: E402
from tfds_builders._foreground import EmptyLabelWarning, ForegroundTally  # noqa: E402
from tfds_builders.chaos import chaos_dataset_builder  # noqa: E402
from tfds_builders.lctsc import lctsc_dataset_builder  # noqa: E402
from tfds_builders.msd_spleen import msd_spleen_dataset_builder  # noqa: E402
from tfds_builders.xray import xray_dataset_builder  # noqa: E402


def _two_worker_options():
    return beam.options.pipeline_options.PipelineOptions(
        flags=[], direct_running_mode="multi_processing", direct_num_workers=2
    )


def _two_thread_options():
    """The DirectRunner pickles every DoFn in this mode too (an unpicklable one fails as in
    the multi-process mode) and runs two bundles at once; what it leaves out is only the
    crossing of process boundaries, which the X-ray test's warnings and the failing
    pipeline check. Each multi-process pipeline costs ~9 s of worker start-up."""
    return beam.options.pipeline_options.PipelineOptions(
        flags=[], direct_running_mode="multi_threading", direct_num_workers=2
    )


def _prepare(builder_class, config, manual_dir, data_dir, **download):
    builder = builder_class(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), **download)
    )
    return builder


def _serialized(builder, split):
    """Every example of ``split`` as its features' serialized bytes, sorted by name.

    A tf.train.Example's features are a protobuf map, whose order on the wire is
    unspecified (it follows the process's string hashing), so the records' bytes are
    compared feature by feature: the encoded (ZLIB-compressed) image and mask, the shapes,
    the ids and every scalar, each byte for byte.
    """
    files = [str(path) for path in builder.info.splits[split].filepaths]
    examples = []
    for record in tf.data.TFRecordDataset(files):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        examples.append(
            tuple(sorted((name, value.SerializeToString()) for name, value in features.items()))
        )
    return sorted(examples)


def _prepare_both_ways(builder_class, config, manual_dir, tmp_path, beam_options=None):
    """The plain and the Beam dataset, each reloaded from disk, and each run's warnings."""
    with warnings.catch_warnings(record=True) as plain_warnings:
        warnings.simplefilter("always", EmptyLabelWarning)
        _prepare(builder_class, config, manual_dir, tmp_path / "plain")
    with warnings.catch_warnings(record=True) as beam_warnings:
        warnings.simplefilter("always", EmptyLabelWarning)
        _prepare(
            builder_class,
            config,
            manual_dir,
            tmp_path / "beam",
            beam_options=beam_options or _two_worker_options(),
        )
    # Reloaded: the statistics compared are the ones saved with each dataset.
    plain = builder_class(config=config, data_dir=str(tmp_path / "plain"))
    beamed = builder_class(config=config, data_dir=str(tmp_path / "beam"))

    def empty_label_messages(caught):
        return [str(w.message) for w in caught if issubclass(w.category, EmptyLabelWarning)]

    return plain, beamed, empty_label_messages(plain_warnings), empty_label_messages(beam_warnings)


def _assert_same_datasets(plain, beamed, expected_splits):
    assert sorted(plain.info.splits) == sorted(beamed.info.splits) == sorted(expected_splits)
    for split in expected_splits:
        plain_records, beam_records = _serialized(plain, split), _serialized(beamed, split)
        assert len(plain_records) == plain.info.splits[split].num_examples > 0
        assert beam_records == plain_records, split
        assert beamed.info.splits[split].num_examples == len(beam_records)
    assert beamed.info.metadata["foreground"] == plain.info.metadata["foreground"]
    assert set(plain.info.metadata["foreground"]) <= set(expected_splits)
    # Nothing of Beam's bookkeeping is left in the dataset folder.
    assert sorted(p.name for p in beamed.data_path.iterdir()) == sorted(
        p.name for p in plain.data_path.iterdir()
    )


def test_chaos_mr_beam_examples_and_statistics_equal_the_plain_ones(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(
        manual,
        modality="MR",
        num_patients=3,
        num_slices=7,
        size=32,
        mask_encoding="8bit",
        progress=False,
    )
    config = dataclasses.replace(
        chaos_dataset_builder.Builder.builder_configs["mr_t2spir"],
        name="mr_3fold",
        num_folds=3,
    )
    plain, beamed, _, _ = _prepare_both_ways(
        chaos_dataset_builder.Builder, config, manual, tmp_path, beam_options=_two_thread_options()
    )
    _assert_same_datasets(plain, beamed, ["fold0", "fold1", "fold2"])
    assert plain.info.metadata["foreground"]["fold0"]["patients"] == 1


def test_lctsc_beam_examples_and_statistics_equal_the_plain_ones(tmp_path):
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=2, num_test_patients=1, num_slices=4, size=64, seed=0)
    config = dataclasses.replace(
        lctsc_dataset_builder.Builder.builder_configs["organs"],
        name="organs_2fold",
        num_folds=2,
    )
    plain, beamed, _, _ = _prepare_both_ways(
        lctsc_dataset_builder.Builder, config, manual, tmp_path, beam_options=_two_thread_options()
    )
    _assert_same_datasets(plain, beamed, ["fold0", "fold1", "challenge_test"])


def test_msd_spleen_beam_examples_and_statistics_equal_the_plain_ones(tmp_path):
    manual = tmp_path / "manual"
    write_msd_spleen(manual, num_training=2, num_test=1, shape=(4, 16, 16), spacing=(5.0, 2.5, 2.5))
    config = dataclasses.replace(
        msd_spleen_dataset_builder.Builder.builder_configs["raw"],
        name="raw_2fold",
        num_folds=2,
    )
    plain, beamed, _, _ = _prepare_both_ways(
        msd_spleen_dataset_builder.Builder,
        config,
        manual,
        tmp_path,
        beam_options=_two_thread_options(),
    )
    # The unlabeled split is written but has no foreground entry, under Beam too.
    _assert_same_datasets(plain, beamed, ["fold0", "fold1", "unlabeled"])
    assert "unlabeled" not in beamed.info.metadata["foreground"]


def test_xray_beam_examples_statistics_and_empty_label_warnings_equal_the_plain_ones(
    tmp_path,
):
    manual = tmp_path / "manual"
    write_generic(manual, num_images=4, size=32, seed=0)
    # A heart class no phantom mask holds: optional, so every radiograph warns once, and
    # the Beam workers' warnings must reach the caller as the plain path's do.
    config = dataclasses.replace(
        xray_dataset_builder.Builder.builder_configs["generic"],
        name="lungs_heart_2fold",
        class_names=("background", "lungs", "heart"),
        required_labels=(1,),
        num_folds=2,
    )
    plain, beamed, plain_warnings, beam_warnings = _prepare_both_ways(
        xray_dataset_builder.Builder, config, manual, tmp_path
    )
    _assert_same_datasets(plain, beamed, ["fold0", "fold1"])
    assert len(plain_warnings) == 4
    assert beam_warnings == plain_warnings
    without_heart = [
        patient
        for stats in beamed.info.metadata["foreground"].values()
        for patient in stats["patients_without_label"]["heart"]
    ]
    assert len(without_heart) == 4


def test_a_patient_without_a_required_label_fails_the_beam_pipeline_naming_it(tmp_path):
    manual = tmp_path / "manual"
    write_chaos(manual, modality="CT", num_patients=3, num_slices=3, size=16, progress=False)
    ground = manual / "Train_Sets" / "CT" / "5" / "Ground"
    for path in sorted(ground.iterdir()):
        path.unlink()
        Image.fromarray(np.zeros((16, 16), bool)).save(path.with_suffix(".png"))
    config = dataclasses.replace(
        chaos_dataset_builder.Builder.builder_configs["ct"], name="ct_3fold", num_folds=3
    )
    # The DirectRunner re-raises a worker's error as a RuntimeError holding its traceback.
    with pytest.raises(RuntimeError, match=r"CT/5/Ground: patient 5: .* no liver \(1\)") as raised:
        _prepare(
            chaos_dataset_builder.Builder,
            config,
            manual,
            tmp_path / "beam",
            beam_options=_two_worker_options(),
        )
    assert f"{MaskError.__module__}.MaskError: " in str(raised.value)


def test_counts_added_patient_by_patient_equal_the_hand_count():
    # What a Beam worker does per patient, then the driver: two one-patient tallies whose
    # counts are added in order. Hand count: a has 2 slices (one with 3 liver voxels), b has
    # 1 slice with 1 liver and 2 spleen voxels; a lacks spleen (optional).
    a = np.array([[[0, 0], [0, 0]], [[1, 1], [1, 0]]], np.uint8)
    b = np.array([[[1, 2], [2, 0]]], np.uint8)
    organs = {1: "liver", 2: "spleen"}
    driver_metadata = {}
    driver = ForegroundTally(organs, required=[1], metadata=driver_metadata)
    messages = []
    for patient, labels in (("a", a), ("b", b)):
        worker = ForegroundTally(organs, required=[1], metadata={}, collect_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # collected, not emitted
            worker.check("fold0", patient, labels, mask_source=f"masks/{patient}")
        driver.add_counts("fold0", worker.split_counts("fold0"))
        messages += worker.collected_warnings
    assert driver_metadata["foreground"] == {
        "fold0": {
            "patients": 2,
            "slices": 3,
            "slices_with_foreground": 2,
            "voxels_per_label": {"liver": 4, "spleen": 2},
            "patients_without_label": {"liver": [], "spleen": ["a"]},
        }
    }
    assert messages == ["masks/a: patient a has no spleen (2) voxel"]


def test_the_build_command_passes_unknown_flags_to_beam(tmp_path, monkeypatch, capsys):
    from tfds_builders import _beam, build

    manual = tmp_path / "manual"
    write_generic(manual, num_images=5, size=16, seed=0)
    pipelines = []
    real_pipeline = _beam._patient_pipeline
    monkeypatch.setattr(
        _beam,
        "_patient_pipeline",
        lambda split, *rest: pipelines.append(split) or real_pipeline(split, *rest),
    )
    arguments = ["xray/generic", "--manual_dir", str(manual), "--data_dir"]
    build.main([*arguments, str(tmp_path / "plain")])
    assert pipelines == []
    # The in-process DirectRunner: Beam without worker processes to start.
    build.main([*arguments, str(tmp_path / "beam"), "--runner=DirectRunner"])
    assert pipelines == [f"fold{i}" for i in range(5)]
    assert f"xray/generic/{xray_dataset_builder.Builder.VERSION} in " in capsys.readouterr().out
    plain = xray_dataset_builder.Builder(config="generic", data_dir=str(tmp_path / "plain"))
    beamed = xray_dataset_builder.Builder(config="generic", data_dir=str(tmp_path / "beam"))
    _assert_same_datasets(plain, beamed, [f"fold{i}" for i in range(5)])
    with pytest.raises(SystemExit):
        build.main([*arguments, str(tmp_path / "x"), "stray"])


def test_lctsc_stratified_folds_under_beam_equal_the_plain_ones(tmp_path):
    # The driver reads the training masks for the strata, the workers read each case again.
    manual = tmp_path / "manual"
    write_lctsc(manual, num_patients=4, num_test_patients=1, num_slices=4, size=32, seed=2)
    config = dataclasses.replace(
        lctsc_dataset_builder.Builder.builder_configs["lungs_stratified"],
        name="lungs_stratified_2fold",
        num_folds=2,
    )
    # The in-process DirectRunner: the multi-process one is tested above.
    in_process = beam.options.pipeline_options.PipelineOptions(flags=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the phantom's ROI names warn
        plain, beamed, _, _ = _prepare_both_ways(
            lctsc_dataset_builder.Builder, config, manual, tmp_path, beam_options=in_process
        )
    _assert_same_datasets(plain, beamed, ["fold0", "fold1", "challenge_test"])

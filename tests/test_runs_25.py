"""Run folders, the kseg command, the report, resume, tuning and Beam prediction (session 25).

Each case is checked against a hand-written run folder or config, files written in the test
with PIL / pydicom, or what a stub records being called; no test trains a network.
"""

import argparse
import json
import pathlib
import re
import shutil
import types

import numpy as np
import pytest

from kseg.errors import LayoutError
from kseg.recipes.run_config import CONFIG_VERSION, write_json


def _config(arguments: dict, recipe="xray_multiclass", **extra) -> dict:
    return {"kseg_config_version": CONFIG_VERSION, "recipe": recipe, "arguments": arguments,
            "seed": 0, "created": "2026-12-03T03:00:00+00:00", "versions": {},
            "git_commit": None, "dataset": {"name": "xray", "config": "phantom_3class_3fold"},
            "labels": {"lungs": 1}, "inference": {}, **extra}  # fmt: skip


def _fake_builder(data_dir):
    """What kseg.recipes._common.prepare and dataset_fingerprint read of a prepared TFDS
    builder: its folder (holding dataset_info.json) and split sizes."""
    data_dir.mkdir(parents=True)
    (data_dir / "dataset_info.json").write_text("{}")
    return types.SimpleNamespace(
        data_dir=str(data_dir), is_prepared=lambda: True,
        info=types.SimpleNamespace(splits={"fold0": types.SimpleNamespace(num_examples=3)}),
    )  # fmt: skip


# --- 1. kseg evaluate --split said "Using the dataset prepared in ..." twice ----------------


def test_evaluate_split_names_the_prepared_dataset_once(tmp_path, monkeypatch, capsys):
    """``kseg evaluate RUN --split test`` prepares the dataset to check its fingerprint, then
    the recipe's evaluate prepares it again to score it: the line came out twice."""
    from kseg import cli, recipes
    from kseg.recipes import _common, run_config

    run = tmp_path / "run"
    builder = _fake_builder(tmp_path / "tfds" / "xray" / "generic" / "1.1.0")
    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": 1}
    fingerprint = run_config.dataset_fingerprint(builder)
    write_json(run / "config.json",
               _config(arguments, dataset={"name": "xray", "fingerprint": fingerprint}))
    (run / "best.keras").write_bytes(b"model")
    module = recipes.load("xray_multiclass")

    def prepare(args):  # the recipe's prepare, on the prepared dataset
        _common.prepare(builder, tmp_path / "download")
        return builder

    scored = []
    monkeypatch.setattr(module, "prepare", prepare)
    monkeypatch.setattr(module, "evaluate", lambda args, split, input_dir=None: scored.append(
        prepare(args)))  # as the recipes' evaluate does
    assert cli.main(["evaluate", str(run), "--split", "test"]) == 0
    assert scored == [builder]
    output = capsys.readouterr().out
    assert output.count(f"Using the dataset prepared in {builder.data_dir}") == 1, output


# --- 2. a run folder holding another run's resume backup -----------------------------------


def _interrupted_run(run, recipe="xray_multiclass", **arguments):
    """A run folder as a kill mid-training leaves it: config.json and a resume backup."""
    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "folds": 3,
                 "test_fold": 0, "validation_fold": 1, "epochs": 5, "image_size": 32,
                 "depth": 3, "base_filters": 4, "dropout": 0.0, **arguments}
    write_json(run / "config.json", _config(arguments, recipe=recipe))
    (run / "backup").mkdir()
    (run / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    return run


@pytest.mark.parametrize("recipe, data_dir", [("chaos_liver", None),
                                              ("xray_multiclass", "other-download")])
def test_another_recipes_backup_is_refused_before_anything_is_prepared(
    tmp_path, monkeypatch, recipe, data_dir
):
    """``kseg train chaos_liver --output-dir RUN`` on the folder of an interrupted X-ray
    run: config.json of another recipe made it a "new training", so CHAOS's phantom and
    dataset were written into the X-ray run's folder, its config.json replaced, and Keras
    then resumed the X-ray backup into the CHAOS network (a U-Net's weights fit at any
    image size). The same with another --data-dir. Refused now, naming the folder and the
    run its config.json records, before anything is prepared or written."""
    from kseg.recipes import _common

    run = _interrupted_run(tmp_path / "run")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    prepared = []

    def prepare(args):
        prepared.append(args)

    prepare.__module__ = f"kseg.recipes.{recipe}"
    args = argparse.Namespace(output_dir=run, data_dir=data_dir, seed=0, batch_size=2,
                              learning_rate=1e-3, distribution="default", folds=3,
                              test_fold=0, validation_fold=1)  # fmt: skip
    expected = (f"the recipe xray_multiclass (now {recipe})" if data_dir is None
                else f"--data-dir none (now {tmp_path / 'other-download'})")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LayoutError, match=re.escape(f"{run}: holds the resume backup of a run "
                                                    f"trained with {expected}")) as error:
        _common.start_training(args, prepare)
    assert "recipe xray_multiclass, dataset xray/phantom_3class_3fold" in str(error.value)
    assert prepared == []
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_resuming_with_another_network_is_refused_and_more_epochs_resume(tmp_path):
    """The same recipe resumed with another --base-filters, --depth, --dropout or
    --image-size went on from the backup of the first network (or ended in Keras' shape
    error) and config.json then described a network that was never trained."""
    from kseg.recipes.run_config import read_config, write_config

    run = _interrupted_run(tmp_path / "run")
    data = tmp_path / "tfds"
    builder = _fake_builder(data)
    builder.name, builder.version = "xray", "1.1.0"
    builder.builder_config = types.SimpleNamespace(name="phantom_3class_3fold")
    recorded = read_config(run)
    recorded["dataset"] = {"name": "xray", "config": "phantom_3class_3fold",
                           "version": "1.1.0"}
    write_json(run / "config.json", recorded)
    before = (run / "config.json").read_bytes()

    def write(**changes):
        options = {**recorded["arguments"], "output_dir": run, **changes}
        return write_config(run, argparse.Namespace(**options), "xray_multiclass", builder,
                            {"lungs": 1}, {"kind": "slices"})

    for changed, shown in (({"base_filters": 8}, "--base-filters 4 (now 8)"),
                           ({"depth": 4}, "--depth 3 (now 4)"),
                           ({"dropout": 0.2}, "--dropout 0.0 (now 0.2)"),
                           ({"image_size": 64}, "--image-size 32 (now 64)")):
        with pytest.raises(LayoutError, match=re.escape(f"trained with {shown} (config.json: "
                                                        "recipe xray_multiclass")):
            write(**changed)
        assert (run / "config.json").read_bytes() == before
    write(epochs=9)  # more epochs: resumed
    assert json.loads((run / "config.json").read_text())["arguments"]["epochs"] == 9


# --- 3. report.html and the run's training.json / input.json ------------------------------


def test_report_lists_training_json_and_names_each_input_folder(tmp_path):
    """The report's "Run folder" table left out training.json (whether training finished:
    kseg train on a finished run trains nothing), and an ``evaluate --input`` section did not
    say which folder its scores are of (its input.json), so input-test and input-test-2
    read alike."""
    from test_report import parse
    from test_report import write_config as write_report_config

    from kseg import report

    run = tmp_path / "run"
    write_report_config(run)
    write_json(run / "training.json", {"started": "2026-12-03T10:00:00+00:00",
                                       "finished": "2026-12-03T10:05:00+00:00"})
    inputs = {"input-test": str(tmp_path / "site-a" / "test"),
              "input-test-2": str(tmp_path / "site-b" / "test")}
    for name, source in inputs.items():
        (run / "evaluation" / name).mkdir(parents=True)
        write_json(run / "evaluation" / name / "input.json", {"input": source})
    page = parse(report.write_report(run))
    files = {row.attributes["data-file"]: row.find("td").all_text()
             for row in page.find("table", "files").find_all("tr")}
    size = (run / "training.json").stat().st_size
    assert files["training.json"] == (f"{size:,} bytes; started 2026-12-03T10:00:00+00:00, "
                                      "finished 2026-12-03T10:05:00+00:00")
    for name, source in inputs.items():
        section = next(section for section in page.find_all("section", "evaluation")
                       if section.attributes["id"] == f"evaluation-{name}")
        shown = section.find("p", "input")
        assert shown is not None and shown.find("code").all_text() == source
    write_json(run / "training.json", {"started": "2026-12-03T11:00:00+00:00",
                                       "finished": None})  # a training in progress
    page = parse(report.write_report(run))
    row = next(row for row in page.find("table", "files").find_all("tr")
               if row.attributes["data-file"] == "training.json")
    assert row.find("td").all_text().endswith("started 2026-12-03T11:00:00+00:00, not finished")


# --- 4. a tuner search of logits models scored by a VolumeValidation without from_logits --


def _logits_problem():
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 1), dtype=np.float32)
    labels = (images > 0.5).astype(np.float32)
    volumes = [("p0", images[:2], labels[:2, ..., 0].astype(np.uint8), (1.0, 1.0, 1.0))]
    return images, labels, volumes


@pytest.mark.parametrize("kind", ["segmentation_hypermodel", "build_function"])
def test_a_search_of_logits_models_without_from_logits_stops_before_training(tmp_path, kind):
    """A hypermodel whose models output logits, searched with a VolumeValidation that
    thresholds probabilities, trained every trial's first epoch before VolumeValidation
    refused its logits; Keras Tuner marked the trial invalid and went on to the next (the
    search "finished" with no scored trial). It stops before any training now, with
    VolumeValidation's message."""
    import keras

    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel, tuner

    images, labels, volumes = _logits_problem()
    if kind == "segmentation_hypermodel":
        hypermodel = SegmentationHyperModel(
            (8, 8, 1), 1, models="unet", model_kwargs={"activation": None},
            fixed={"base_filters": 2, "depth": 1, "loss": "dice"})  # fmt: skip
    else:
        def hypermodel(hp):
            inputs = keras.Input((8, 8, 1))
            outputs = keras.layers.Conv2D(1, 3, padding="same", name="logits")(inputs)
            model = keras.Model(inputs, outputs)
            model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
            return model

    trained = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *a, **k: trained.append(1))
    search = tuner("random", hypermodel, max_trials=2, directory=tmp_path, project_name="s")
    with pytest.raises(ValueError, match=re.escape("needs VolumeValidation(..., "
                                                   "from_logits=True)")):
        search.search(images, labels, epochs=1, batch_size=2, verbose=0,
                      callbacks=[VolumeValidation(volumes), counter])
    assert trained == []
    # logits with from_logits=True, probabilities without it: nothing is refused
    from kseg.training.callbacks import output_kind
    from kseg.tuning import _check_outputs

    _check_outputs([VolumeValidation(volumes, from_logits=True)], True, "activation=None")
    _check_outputs([VolumeValidation(volumes)], False, "a sigmoid")
    probabilities = keras.Sequential([keras.Input((8, 8, 1)),
                                      keras.layers.Conv2D(1, 3, activation="sigmoid")])
    assert output_kind(probabilities)[0] is False


def test_a_search_of_probability_models_scored_as_logits_stops_before_training(tmp_path):
    """The opposite mistake: VolumeValidation(from_logits=True) on a search whose models end
    in a sigmoid passed their probabilities through a sigmoid again, into [0.5, 0.73]: every
    pixel foreground, every trial scored (and ranked) by the Dice of an all-foreground mask,
    without a word. The search stops before training, naming the mismatch."""
    import keras

    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel, tuner

    images, labels, volumes = _logits_problem()
    hypermodel = SegmentationHyperModel((8, 8, 1), 1, models="unet",
                                        fixed={"base_filters": 2, "depth": 1, "loss": "dice"})
    trained = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *a, **k: trained.append(1))
    search = tuner("random", hypermodel, max_trials=2, directory=tmp_path, project_name="s")
    with pytest.raises(ValueError, match=re.escape("VolumeValidation(from_logits=True): the "
                                                   "search's models output probabilities")):
        search.search(images, labels, epochs=1, batch_size=2, verbose=0,
                      callbacks=[VolumeValidation(volumes, from_logits=True), counter])
    assert trained == []

# --- 5. radiograph case files drawn with square pixels --------------------------------------


def _computed_radiograph(path, pixels, **spacing):
    """A CR image written with pydicom, its pixel size in the given attributes."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.SOPClassUID = ComputedRadiographyImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.PatientID = "CR", path.stem
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    for keyword, value in spacing.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


def test_radiograph_case_files_carry_the_pixel_spacing_the_file_states(tmp_path):
    """X-ray case files recorded spacing (1, 1, 1) whatever the radiograph said, so the
    report drew a CR image of 0.2 x 0.1 mm pixels twice as wide as it is. The spacing a
    DICOM radiograph states (PixelSpacing, else ImagerPixelSpacing, as kseg predict places
    it) goes into its case file; a PNG, which states none, keeps 1 mm; the scores stay in
    pixels."""
    from PIL import Image
    from test_predict import identity_model

    from kseg.recipes import _evaluation
    from tfds_builders.xray import Builder

    folder = tmp_path / "cxr"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    pixels = (np.arange(12 * 10).reshape(12, 10) * 30).astype(np.uint16)
    _computed_radiograph(folder / "images" / "imager.dcm", pixels,
                         ImagerPixelSpacing=[0.2, 0.1])
    _computed_radiograph(folder / "images" / "both.dcm", pixels, PixelSpacing=[0.5, 0.25],
                         ImagerPixelSpacing=[0.2, 0.1])
    _computed_radiograph(folder / "images" / "none.dcm", pixels)
    Image.fromarray((pixels // 16).astype(np.uint8)).save(folder / "images" / "plain.png")
    mask = np.zeros((12, 10), np.uint8)
    mask[3:9, 2:7] = 1
    for stem in ("imager", "both", "none", "plain"):
        Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")
    spacing = _evaluation.radiograph_case_spacing(Builder.builder_configs["generic"], folder)
    assert spacing == {"imager.dcm": (1.0, 0.2, 0.1), "both.dcm": (1.0, 0.5, 0.25)}

    shown = (pixels / pixels.max()).astype(np.float32)[..., None]
    cases = [(name, shown, shown, mask, None)
             for name in ("imager.dcm", "both.dcm", "none.dcm", "plain.png")]
    table = _evaluation.score_slice_cases(identity_model(2), cases, cases_dir=tmp_path / "c",
                                          metrics=("dice", "hd95"), case_spacing=spacing)
    for name, expected in (("imager.dcm", [1.0, 0.2, 0.1]), ("both.dcm", [1.0, 0.5, 0.25]),
                           ("none.dcm", [1.0, 1.0, 1.0]), ("plain.png", [1.0, 1.0, 1.0])):
        with np.load(tmp_path / "c" / f"{name}.npz") as case:
            assert case["spacing"].tolist() == expected
    # the same arrays scored alike: distances in pixels whatever the case file draws
    assert len({row["hd95"] for row in table.rows}) == 1


# --- 6. Beam prediction of CHAOS's series folders, all named DICOM_anon --------------------


def test_beam_predicts_chaos_series_of_one_folder_name_into_patient_folders(tmp_path):
    """CHAOS keeps each patient's CT series in ``Train_Sets/CT/<patient>/DICOM_anon``: Beam
    prediction of several patients refused them all as "would write DICOM_anon.nii.gz" (the
    download cannot be renamed). Each is written below the patients' common folder, as
    MONAI's SaveImage(data_root_dir=...) keeps folders, and equals the plain kseg.predict
    loop's prediction of that series; a rerun skips them."""
    import keras
    import nibabel as nib
    from test_beam_inference import INFERENCE, LABELS

    from kseg.inference import predict_volumes
    from kseg.phantoms import chaos
    from kseg.predict import predict_path, write_predictions

    download = tmp_path / "CHAOS"
    chaos.write_chaos(download, modality="CT", num_patients=2, num_slices=3, size=16, seed=0)
    ct = download / "Train_Sets" / "CT"
    series = sorted(ct.glob("*/DICOM_anon"))
    assert len(series) == 2
    model = keras.saving.load_model(_softmax_model(tmp_path / "best.keras"))
    out = tmp_path / "out"
    result = predict_volumes(tmp_path / "best.keras", INFERENCE, series, out, labels=LABELS)
    expected = [out / folder.parent.name / "DICOM_anon.nii.gz" for folder in series]
    assert list(result.written) == expected and result.skipped == ()
    for folder, written in zip(series, expected, strict=True):
        plain = tmp_path / "plain" / folder.parent.name
        (path,) = write_predictions(predict_path(model, INFERENCE, folder), plain, "nifti",
                                    labels=LABELS)
        image, reference = nib.load(written), nib.load(path)
        np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(reference.dataobj))
        np.testing.assert_allclose(image.affine, reference.affine)
    again = predict_volumes(tmp_path / "best.keras", INFERENCE, series, out, labels=LABELS)
    assert again.written == () and list(again.skipped) == expected


def finished_member(first, fold):
    """The member of cross-validation ``first`` validated on ``fold``, as a finished run
    leaves it: ``best.keras`` and the record of its arguments."""
    from kseg.recipes import cross_validation

    member = cross_validation.member_args(first, fold)
    member.output_dir.mkdir(parents=True)
    (member.output_dir / "best.keras").write_bytes(b"model")
    write_json(member.output_dir / cross_validation.FINISHED_FILE,
               {"validation_fold": fold, "arguments": json.loads(json.dumps(
                   vars(member), default=str))})  # fmt: skip
    return member


def _softmax_model(path, channels=2):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(
        channels, 3, padding="same", activation="softmax")])
    model.save(path)
    return path


def test_beam_skips_the_apple_double_companions_of_an_msd_folder(tmp_path):
    """The MSD Task09 tar extracted on a Mac holds ``._spleen_1.nii.gz`` beside every
    image; ``kseg predict`` skips hidden files, Beam prediction of ``imagesTs/`` read them
    as volumes and failed on the first (no prediction written at all). A link in the folder
    whose target is gone is named before anything runs, as kseg predict names it."""
    import os

    import nibabel as nib
    from test_beam_inference import INFERENCE, LABELS

    from kseg.errors import UnreadableFileError
    from kseg.inference import predict_volumes

    images = tmp_path / "imagesTs"
    images.mkdir()
    for name in ("spleen_1", "spleen_7"):
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.int16), np.eye(4)),
                 images / f"{name}.nii.gz")
        # an AppleDouble file: its magic number, then Finder metadata
        (images / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac "
                                                  b"OS X        " + bytes(64))
    model = _softmax_model(tmp_path / "best.keras")
    result = predict_volumes(model, INFERENCE, [images], tmp_path / "out", labels=LABELS)
    assert [path.name for path in result.written] == ["spleen_1.nii.gz", "spleen_7.nii.gz"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "spleen_1.nii.gz", "spleen_7.nii.gz"]
    os.symlink(tmp_path / "gone.nii.gz", images / "spleen_9.nii.gz")
    with pytest.raises(UnreadableFileError, match=re.escape(f"{images / 'spleen_9.nii.gz'}: "
                                                            "is a link to")):
        predict_volumes(model, INFERENCE, [images], tmp_path / "again", labels=LABELS)
    assert not (tmp_path / "again").exists()


# --- a stopped search continued with other options --------------------------------------


def test_a_search_continued_with_other_epochs_or_data_is_refused(tmp_path):
    """``kseg tune`` continues a stopped search from Keras Tuner's saved state whatever the
    command says: a rerun with --epochs 3 ranked its trials with the first run's 1-epoch
    trials and wrote epochs_per_trial 3 for all of them, and another --data-dir or
    --learning-rate range was mixed in or ignored the same way. A larger --max-trials
    still continues the search."""
    import tensorflow as tf

    from kseg.recipes import _tuning
    from kseg.training import VolumeValidation
    from kseg.tuning import SegmentationHyperModel

    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 1), dtype=np.float32)
    labels = (images > 0.5).astype(np.float32)
    training = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    volumes = [("p0", images[:2], labels[:2, ..., 0].astype(np.uint8), (1.0, 1.0, 1.0))]

    class Untrained(SegmentationHyperModel):
        def fit(self, hp, model, *args, **kwargs):  # a trial's score, without training
            return {"val_volume_dice": float(hp.get("learning_rate"))}

    def search(**options):
        arguments = {"strategy": "random", "max_trials": 1, "epochs": 1, "seed": 0,
                     "output_dir": str(tmp_path), "data_dir": None, "learning_rate": 1e-3,
                     **options}  # fmt: skip
        hypermodel = Untrained((8, 8, 1), 1, models="unet", depth=1, base_filters=2,
                               losses="dice", learning_rate=(arguments["learning_rate"],
                                                             10 * arguments["learning_rate"]))
        return _tuning.run_search(argparse.Namespace(**arguments), hypermodel,
                                  training=training, validation_data=training,
                                  volume_validation=VolumeValidation(volumes))

    assert len(search()["trials"]) == 1
    project = tmp_path / "tuning" / "random"
    state = {path: path.read_bytes() for path in project.rglob("*") if path.is_file()}
    for changed, shown in (({"epochs": 3}, "--epochs 1 (now 3)"),
                           ({"data_dir": str(tmp_path / "CHAOS")},
                            f"--data-dir none (now {tmp_path / 'CHAOS'})"),
                           ({"learning_rate": 1e-2}, "--learning-rate 0.001 (now 0.01)")):
        with pytest.raises(LayoutError, match=re.escape(f"{project}: holds a search whose "
                                                        f"trials were trained with {shown}")):
            search(max_trials=2, **changed)
        assert {path: path.read_bytes() for path in project.rglob("*")
                if path.is_file()} == state  # fmt: skip
    results = search(max_trials=2)  # more trials of the same search
    assert len(results["trials"]) == 2 and results["epochs_per_trial"] == 1
    # the same download named through a link is the same data
    import os

    (tmp_path / "disk").mkdir()
    os.symlink(tmp_path / "disk", tmp_path / "link")
    assert _tuning._searched_options(argparse.Namespace(data_dir=str(tmp_path / "link"))) == (
        _tuning._searched_options(argparse.Namespace(data_dir=str(tmp_path / "disk"))))


# --- evaluate --input of a folder of one case -----------------------------------------------


def test_evaluating_an_input_folder_of_one_case_scores_it(tmp_path, capsys):
    """``kseg evaluate RUN --input DIR`` of a folder holding one labelled radiograph ended
    in a bare ValueError traceback from the fold assignment ("num_folds=2 needs at least 2
    patients"), then (session 25) in a one-line error asking for a second case: a user
    scoring one outside image expects its score. The input is prepared in one fold now:
    its one row is scored and written."""
    from kseg import cli
    from kseg.phantoms import xray

    run = tmp_path / "run"
    _interrupted_run(run, config="generic", phantom_images=3)
    _softmax_model(run / "best.keras", channels=len(xray.GENERIC_CLASSES) + 1)
    single = xray.write_generic(tmp_path / "one case", num_images=1, size=16, seed=0,
                                classes=xray.GENERIC_CLASSES)  # the run's phantom classes
    assert cli.main(["evaluate", str(run), "--input", str(single)]) == 0
    scores = (run / "evaluation" / "input-one case" / "scores.csv").read_text().splitlines()
    assert len(scores) == 2 and scores[1].startswith("P0001_0.png,"), scores
    assert [path.name for path in (run / "evaluation" / "input-one case" / "cases").iterdir()
            ] == ["P0001_0.png.npz"]


# --- a prepared dataset refused because a file manager browsed the download ---------------


def _every_file_listing(folder) -> str:
    """The listing digest kseg recorded before it left hidden files out: every file's
    relative name and size, sorted, one per line."""
    import hashlib
    import os

    entries = sorted(f"{path.relative_to(folder).as_posix()}\t{os.path.getsize(path)}"
                     for path in folder.rglob("*") if path.is_file())
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()


def test_files_a_file_manager_adds_do_not_make_a_prepared_dataset_stale(tmp_path, capsys):
    """Opening the download in macOS Finder writes .DS_Store (and an archive extracted on a
    Mac holds ._<name> companions); Windows Explorer writes Thumbs.db. No builder reads
    them, but they changed the recorded listing, so kseg train / evaluate refused the
    prepared dataset as "prepared from other files" and asked to prepare it again. A real
    change (an added radiograph) is still refused, and a dataset recorded by the earlier
    kseg (listing every file) is still reused."""
    from test_prepared_source import builder_for

    from kseg.phantoms import xray
    from kseg.recipes import _common

    download = xray.write_generic(tmp_path / "download", num_images=4, size=16, seed=0)
    builder = builder_for(tmp_path / "tfds")
    _common.prepare(builder, download)
    (download / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (download / "images" / "._P0001_0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (download / "images" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (download / ".Trashes").mkdir()
    (download / ".Trashes" / "501").write_bytes(b"x")
    capsys.readouterr()
    _common.prepare(builder_for(tmp_path / "tfds"), download)  # reused
    assert f"Using the dataset prepared in {builder.data_dir}" in capsys.readouterr().out
    # a dataset recorded by the earlier kseg, its hidden files listed: the same files
    record = pathlib.Path(builder.data_dir) / _common.SOURCE_FILE
    recorded = json.loads(record.read_text())
    write_json(record, {**recorded, "listing_sha256": _every_file_listing(download)})
    _common.prepare(builder_for(tmp_path / "tfds"), download)
    # another radiograph is other data
    shutil.copyfile(download / "images" / "P0001_0.png", download / "images" / "P0009_0.png")
    with pytest.raises(LayoutError, match="holds other files now"):
        _common.prepare(builder_for(tmp_path / "tfds"), download)


# --- evaluate --input of the download the run trained on ---------------------------------


def test_evaluating_the_training_download_as_input_warns(tmp_path, monkeypatch):
    """``kseg evaluate RUN --input DIR`` with DIR the run's own --data-dir scored every
    patient of it, those the model was fitted and chosen on among them, without a word:
    its table read as a result on new data. It warns now, pointing to --split test; another
    folder is scored without the warning."""
    import warnings

    from kseg import cli, recipes

    download = tmp_path / "download"
    (download / "images").mkdir(parents=True)
    run = _interrupted_run(tmp_path / "run", data_dir=str(download),
                           manual_dir=str(download))
    (run / "best.keras").write_bytes(b"model")
    scored = []
    monkeypatch.setattr(recipes.load("xray_multiclass"), "evaluate",
                        lambda args, split="test", input_dir=None: scored.append(input_dir))
    for given in (download, tmp_path / "." / "download"):
        with pytest.warns(cli.TrainingDataWarning, match=re.escape(
                f"{given} is the folder {run} was trained on")) as caught:
            assert cli.main(["evaluate", str(run), "--input", str(given)]) == 0
        assert f"kseg evaluate {run} --split test" in str(caught[0].message)
    other = tmp_path / "new site"
    (other / "images").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cli.TrainingDataWarning)
        assert cli.main(["evaluate", str(run), "--input", str(other)]) == 0
    assert scored == [download, tmp_path / "." / "download", other]


# --- a run evaluated after its download was moved or deleted ----------------------------


def test_a_prepared_dataset_is_read_after_its_download_is_gone(tmp_path, capsys):
    """A run trained with --data-dir DOWNLOAD, evaluated after DOWNLOAD was moved or
    deleted: the prepared dataset (RUN/tfds, complete, its fingerprint in config.json) was
    refused as prepared from other files, "DOWNLOAD holds other files now (0 files)", and
    the error advised deleting the prepared dataset, which could not be prepared again.
    It is read as it was prepared now, saying the download is gone; a download that is
    there with other files is still refused."""
    from kseg.recipes import _common

    builder = _fake_builder(tmp_path / "run" / "tfds" / "xray" / "generic" / "1.1.0")
    download = tmp_path / "download"
    write_json(pathlib.Path(builder.data_dir) / _common.SOURCE_FILE,
               {"folder": str(download), "files": 19, "listing_sha256": "0" * 64})
    _common.prepare(builder, download)
    assert capsys.readouterr().out == (f"Using the dataset prepared in {builder.data_dir} "
                                       f"({download}, which it was prepared from, is gone: it "
                                       "is read as it was prepared)\n")
    (download / "images").mkdir(parents=True)
    (download / "images" / "other.png").write_bytes(b"png")
    with pytest.raises(LayoutError, match=re.escape(f"but {download.resolve()} holds other "
                                                    "files now (1 files")):
        _common.prepare(builder, download)


def test_the_same_download_named_through_a_link_resumes(tmp_path, monkeypatch):
    """The backup guard compares --data-dir as a folder: the same download named through a
    link (a mounted disk's path and its link in the home folder) resumes, and another
    folder is refused."""
    import os

    from kseg.recipes import _common

    download = tmp_path / "disk" / "CXR"
    download.mkdir(parents=True)
    os.symlink(download, tmp_path / "cxr")
    run = _interrupted_run(tmp_path / "run", data_dir=str(download))
    prepared = []

    def prepare(args):
        prepared.append(args)

    prepare.__module__ = "kseg.recipes.xray_multiclass"
    args = argparse.Namespace(output_dir=run, data_dir=tmp_path / "cxr", seed=0, batch_size=2,
                              learning_rate=1e-3, distribution="default")  # fmt: skip
    _common.start_training(args, prepare)
    assert prepared == [args]
    (tmp_path / "copy").mkdir()
    args.data_dir = tmp_path / "copy"
    with pytest.raises(LayoutError, match=re.escape(f"--data-dir {download} (now "
                                                    f"{tmp_path / 'copy'})")):
        _common.start_training(args, prepare)


def test_a_finished_run_named_its_download_through_a_link_is_finished(tmp_path):
    """``kseg train`` on a finished run says it finished and trains nothing; given its
    --data-dir through a link, the finished-run guard read it as another download and
    refused the command as "a finished run trained with --data-dir X (now LINK)"."""
    import os

    from kseg.recipes import _common
    from kseg.recipes.run_config import mark_finished, mark_started

    download = tmp_path / "disk" / "CXR"
    download.mkdir(parents=True)
    os.symlink(download, tmp_path / "cxr")
    run = _interrupted_run(tmp_path / "run", data_dir=str(download))
    shutil.rmtree(run / "backup")
    (run / "best.keras").write_bytes(b"model")
    mark_started(run)
    mark_finished(run)

    def prepare(args):
        pytest.fail("a finished run prepared its data again")

    prepare.__module__ = "kseg.recipes.xray_multiclass"
    args = argparse.Namespace(output_dir=run, data_dir=tmp_path / "cxr", seed=0, folds=3,
                              test_fold=0, validation_fold=1, distribution="default")
    with pytest.raises(_common.TrainingFinished):
        _common.start_training(args, prepare)
    args.data_dir = tmp_path / "other"
    with pytest.raises(LayoutError, match=re.escape(f"--data-dir {download} (now "
                                                    f"{tmp_path / 'other'})")):
        _common.start_training(args, prepare)


def test_a_cross_validation_rerun_names_its_download_as_it_likes(tmp_path, monkeypatch):
    """Running the same --validation-fold all command again keeps its finished members;
    given --data-dir relative to the working folder the first time and absolute (or through
    a link) the next, every finished member was refused as "trained with other options
    (data_dir)". Another download is still refused."""
    import os

    from kseg.recipes import cross_validation

    download = tmp_path / "data" / "CHAOS"
    download.mkdir(parents=True)
    os.symlink(download, tmp_path / "chaos")
    monkeypatch.chdir(tmp_path)
    first = argparse.Namespace(output_dir=tmp_path / "cv", data_dir=pathlib.Path("data/CHAOS"),
                               manual_dir=pathlib.Path("data/CHAOS"),  # as recipes set it
                               validation_fold="all", folds=3, test_fold=0, seed=0)
    finished_member(first, 1)
    for given in (download, tmp_path / "chaos"):
        again = cross_validation.member_args(argparse.Namespace(
            **{**vars(first), "data_dir": given, "manual_dir": given}), 1)
        assert cross_validation._finished_record(again)["validation_fold"] == 1
    (tmp_path / "other").mkdir()
    other = cross_validation.member_args(argparse.Namespace(
        **{**vars(first), "data_dir": tmp_path / "other", "manual_dir": tmp_path / "other"}), 1)
    with pytest.raises(LayoutError, match=r"trained with other options \(data_dir, manual_dir\)"):
        cross_validation._finished_record(other)


def test_beam_takes_one_path_as_one_input(tmp_path):
    """``predict_volumes(model, inference, "imagesTs", out)``, one folder given as a string
    rather than in a list, read the string's characters as inputs ("i: is neither a NIfTI
    file ..."), and a pathlib.Path ended in a bare TypeError ("not iterable"). One path is
    one input, as in a list."""
    import nibabel as nib
    from test_beam_inference import INFERENCE, LABELS

    from kseg.inference import predict_volumes

    images = tmp_path / "imagesTs"
    images.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.int16), np.eye(4)),
             images / "spleen_1.nii.gz")
    model = _softmax_model(tmp_path / "best.keras")
    for given, out in ((str(images), tmp_path / "a"), (images, tmp_path / "b")):
        result = predict_volumes(model, INFERENCE, given, out, labels=LABELS)
        assert result.written == (out / "spleen_1.nii.gz",)


@pytest.mark.parametrize("format, expected", [("dicom-seg", "a DICOM-SEG references"),
                                              ("rtstruct", "an RT Structure Set references")])
def test_beam_refuses_a_dicom_format_for_nifti_volumes_before_running(tmp_path, format,
                                                                      expected):
    """Beam prediction of NIfTI volumes as DICOM-SEG / RTSTRUCT started the pipeline, loaded
    the model on every worker and predicted the first volume before the writer refused it;
    kseg predict refuses it before the model loads. So does Beam now (the model file is
    never opened: here there is none)."""
    import nibabel as nib
    from test_beam_inference import INFERENCE, LABELS

    from kseg.inference import predict_volumes

    volume = tmp_path / "spleen_1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.int16), np.eye(4)), volume)
    with pytest.raises(LayoutError, match=re.escape(f"{volume}: is a NIfTI volume; {expected}")):
        predict_volumes(tmp_path / "no model.keras", INFERENCE, [volume], tmp_path / "out",
                        labels=LABELS, format=format)
    assert not (tmp_path / "out").exists()

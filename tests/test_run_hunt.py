"""What users do with a run folder and kseg's outputs: ``kseg predict`` into output paths
that are files or hold an earlier prediction of another kind, a training resumed with
options that change its data, and run folders moved, half-written or reused.

Each case is checked against what was on disk before the command (file hashes, folder
listings) or a hand-written config, never against kseg's own description of itself.
"""

import json
import pathlib
import re
import shutil

import numpy as np
import pytest
from test_predict import (
    file_hashes,
    identity_model,
    slices_inference,
    synthetic_hu,
    write_ct_series,
    write_run,
)

from kseg.errors import LayoutError


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunt_ct")
    folder = write_ct_series(root / "patient7", synthetic_hu((3, 12, 10)))
    run = write_run(root / "run", identity_model(2), slices_inference((12, 10)))
    return folder, run


def _no_model_load(monkeypatch):
    import kseg

    monkeypatch.setattr(kseg, "load_model", lambda *a, **k: pytest.fail("the model loaded"))


@pytest.mark.parametrize("below", [False, True])
def test_predict_into_an_output_that_is_a_file_is_named_before_the_model_loads(
    ct_case, tmp_path, monkeypatch, below
):
    """``--output results.nii.gz`` (a file name where a folder goes) or a folder below a
    file: a LayoutError naming the file before the model runs, the file unchanged (was a
    bare FileExistsError / NotADirectoryError after every input had been predicted)."""
    from kseg.predict import predict_command

    folder, run = ct_case
    existing = tmp_path / "results.nii.gz"
    existing.write_bytes(b"an earlier file")
    output = existing / "sub" if below else existing
    _no_model_load(monkeypatch)
    with pytest.raises(LayoutError, match=f"{existing}: is not a folder; --output"):
        predict_command(run, folder, output, "nifti")
    assert existing.read_bytes() == b"an earlier file"


@pytest.mark.parametrize("format, make", [("nifti", "folder"), ("png", "file")])
def test_overwrite_of_an_output_of_the_other_kind_is_named_before_the_model_loads(
    ct_case, tmp_path, monkeypatch, format, make
):
    """``--overwrite`` where the output name is taken by a folder (NIfTI goes to a file)
    or a file (a volume's PNG slices go to a folder): named before the model loads, nothing
    changed (was a bare IsADirectoryError / FileExistsError after predicting)."""
    from kseg.predict import predict_command

    folder, run = ct_case
    out = tmp_path / "out"
    taken = out / ("patient7.nii.gz" if format == "nifti" else "patient7")
    if make == "folder":
        taken.mkdir(parents=True)
        (taken / "notes.txt").write_text("mine")
    else:
        out.mkdir()
        taken.write_text("mine")
    before = file_hashes(out)
    _no_model_load(monkeypatch)
    with pytest.raises(LayoutError, match=f"{taken}: is a {make}; --overwrite"):
        predict_command(run, folder, out, format, overwrite=True)
    assert file_hashes(out) == before


@pytest.mark.parametrize("relative", [False, True])
def test_a_moved_run_reads_its_own_phantom_and_tfds_not_the_old_place(
    tmp_path, monkeypatch, relative
):
    """A run trained without --data-dir records ``manual_dir`` = OUTPUT_DIR/phantom (and
    a --tfds-dir given inside it) as written. Moved, copied or named from another working
    folder, ``kseg evaluate`` must read RUN/phantom of the folder it was given: it read
    (and, the phantom being missing there, wrote a new phantom into) the old place.
    A --data-dir outside the run stays as recorded."""
    from kseg.recipes import load_run
    from kseg.recipes.run_config import CONFIG_VERSION, write_json

    monkeypatch.chdir(tmp_path)
    old = "runs/cxr" if relative else str(tmp_path / "runs" / "cxr")
    arguments = {"output_dir": old, "manual_dir": f"{old}/phantom", "tfds_dir": f"{old}/tfds",
                 "data_dir": None, "seed": 0, "epochs": 1}
    moved = tmp_path / "elsewhere" / "cxr copy ü"
    write_json(moved / "config.json", {
        "kseg_config_version": CONFIG_VERSION, "recipe": "xray_multiclass",
        "arguments": arguments, "seed": 0, "created": "2026-12-02T03:00:00+00:00",
        "versions": {}, "git_commit": None, "dataset": {"name": "xray"},
        "labels": {"lungs": 1}, "inference": {}})  # fmt: skip
    _, args = load_run(moved)
    assert (args.output_dir, args.manual_dir, args.tfds_dir) == (
        moved, moved / "phantom", moved / "tfds")
    shared = tmp_path / "data" / "cxr"
    arguments.update(data_dir=str(shared), manual_dir=str(shared), tfds_dir=None)
    config = {**json.loads((moved / "config.json").read_text()),
              "arguments": arguments}
    write_json(moved / "config.json", config)
    _, args = load_run(moved)
    assert (args.data_dir, args.manual_dir, args.tfds_dir) == (shared, shared, None)


def _hand_written_run(run, recipe="xray_multiclass", **arguments):
    """A run folder as a training killed before its first validation leaves it: config.json
    (written before the first epoch) and a resume backup, no best.keras."""
    from kseg.recipes.run_config import CONFIG_VERSION, write_json

    arguments = {"output_dir": str(run), "data_dir": None, "seed": 0, "test_fold": 0,
                 "validation_fold": 1, "folds": 3, **arguments}
    write_json(run / "config.json", {
        "kseg_config_version": CONFIG_VERSION, "recipe": recipe, "arguments": arguments,
        "seed": 0, "created": "2026-12-02T03:00:00+00:00", "versions": {},
        "git_commit": None, "dataset": {"name": "xray"}, "labels": {"lungs": 1},
        "inference": {}})  # fmt: skip
    (run / "backup").mkdir()
    return run


def test_evaluate_of_a_run_without_best_keras_is_one_line_before_any_data(
    tmp_path, monkeypatch, capsys
):
    """A run killed before its first validation has config.json and backup/ only. ``kseg
    evaluate RUN --split test`` prepared the data, then ended in a bare FileNotFoundError
    traceback; now one ``kseg: error:`` line names RUN/best.keras and says to resume."""
    from kseg import cli, recipes

    run = _hand_written_run(tmp_path / "run")
    monkeypatch.setattr(recipes.load("xray_multiclass"), "evaluate",
                        lambda *a, **k: pytest.fail("evaluation started without a model"))
    assert cli.main(["evaluate", str(run), "--split", "test"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"kseg: error: {run / 'best.keras'}: is missing")
    assert "run the same kseg train command again" in error


def _builder(data_dir, examples=3):
    """What write_config reads of a prepared TFDS builder."""
    from types import SimpleNamespace

    return SimpleNamespace(
        name="xray", builder_config=SimpleNamespace(name="phantom_3class_3fold"),
        version="1.1.0", data_dir=str(data_dir),
        info=SimpleNamespace(splits={f"fold{k}": SimpleNamespace(num_examples=examples)
                                     for k in range(3)}),
    )  # fmt: skip


def test_resuming_with_another_split_or_dataset_is_refused(tmp_path):
    """A training killed mid-run (config.json and backup/ in RUN) and started again with
    --test-fold 1 --validation-fold 0 went on silently from the weights trained with fold 1
    as validation (the best model chosen on it) and now scored on it as the test fold
    (seen in a real kill -9 and rerun of kseg train xray_multiclass: history went on at
    epoch 3, config.json said test_fold 1). Options that do not move patients (--epochs)
    still resume; a folder without a backup is a new training and takes any options."""
    import argparse

    from kseg.recipes.run_config import write_config

    run, data = tmp_path / "run", tmp_path / "tfds"
    data.mkdir()
    (data / "fold0.tfrecord").write_bytes(b"x" * 10)

    def args(**changes):
        options = {"output_dir": str(run), "seed": 0, "epochs": 2, "folds": 3,
                   "test_fold": 0, "validation_fold": 1, **changes}
        return argparse.Namespace(**options)

    def write(namespace, builder=None):
        return write_config(run, namespace, "xray_multiclass", builder or _builder(data),
                            {"lungs": 1}, {"kind": "slices"})

    write(args())
    (run / "backup").mkdir()
    write(args(folds=4))  # an empty backup folder (a kill as it was made) resumes nothing
    write(args())
    (run / "backup" / "latest.weights.h5").write_bytes(b"weights")
    config = run / "config.json"
    before = config.read_bytes()
    for changed, shown in (({"test_fold": 1, "validation_fold": 0}, "--test-fold 0 (now 1)"),
                           ({"folds": 4}, "--folds 3 (now 4)"),
                           ({"test_fold": None}, "--test-fold 0 (now none)")):
        with pytest.raises(LayoutError, match=f"{run}: holds the resume backup of a run "
                                              f"trained with {re.escape(shown)}"):
            write(args(**changed))
        assert config.read_bytes() == before
    with pytest.raises(LayoutError, match="prepared dataset xray/phantom_3class_3fold"):
        write(args(), _builder(data, examples=4))  # other patients prepared
    assert config.read_bytes() == before
    write(args(epochs=5))  # more epochs: resumed
    assert len(json.loads(config.read_text())["resumed"]) == 3
    shutil.rmtree(run / "backup")  # a new training in the folder
    write(args(test_fold=1, validation_fold=0))
    assert json.loads(config.read_text())["arguments"]["test_fold"] == 1


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_ct_run_refuses_an_image_file_before_the_model_loads(
    ct_case, tmp_path, monkeypatch, suffix
):
    """A CT slice exported as PNG / JPEG (display values 0..255) given to a CT run: the
    model got the CT window applied to the pixel values as if they were HU (0..255 HU is
    all soft tissue in an abdomen window) and a plausible-looking mask was written without
    a word. Now the image is named before the model loads, and nothing is written."""
    from PIL import Image

    from kseg.predict import predict_command

    _, run = ct_case
    image = tmp_path / "exported" / f"ct_slice.{suffix}"
    image.parent.mkdir()
    Image.fromarray((np.arange(120).reshape(12, 10) * 2).astype(np.uint8)).save(image)
    _no_model_load(monkeypatch)
    message = f"{image}: is a {suffix.upper()} radiograph; the run's model is a CT model"
    for given in (image, image.parent):
        with pytest.raises(LayoutError, match=re.escape(message)):
            predict_command(run, given, tmp_path / "out", "nifti")
    assert not (tmp_path / "out").exists()


def test_report_shows_only_the_cases_of_the_evaluation_in_scores_csv(tmp_path):
    """``kseg evaluate RUN --input site_a/test`` then ``--input site_b/test`` both write
    RUN/evaluation/input-test: scores.csv is site B's, cases/ still holds site A's patients
    too. The report showed site A's slices and per-slice Dice under site B's table; now it
    shows the patients of scores.csv and names the left-over case files."""
    from test_report import box_case, parse, viewers, write_config, write_evaluation

    from kseg import report

    run = tmp_path / "run"
    write_config(run)
    write_evaluation(run, {  # site A
        "a-1": box_case(4, 20, 18, (1, 3, 4, 12, 4, 12), (1, 3, 5, 12, 4, 12), 0),
        "a-2": box_case(4, 20, 18, (0, 2, 2, 8, 2, 8), (0, 2, 2, 8, 4, 10), 1),
    }, name="input-test")  # fmt: skip
    rows = write_evaluation(run, {  # site B, into the same folder
        "b-1": box_case(5, 20, 18, (1, 4, 4, 12, 4, 12), (1, 4, 4, 12, 6, 12), 2),
    }, name="input-test")  # fmt: skip
    page = parse(report.write_report(run))
    assert set(viewers(page)) == {row[0] for row in rows[1:]} == {"b-1"}
    notes = " ".join(p.all_text() for p in page.find_all("p", "note"))
    assert "2 case files of input-test/cases/ are of no patient of scores.csv" in notes
    assert "a-1.npz, a-2.npz" in notes


@pytest.mark.parametrize("where", ["folder", "below a file"])
def test_report_output_that_is_a_folder_or_below_a_file_is_one_line(
    tmp_path, capsys, monkeypatch, where
):
    """``kseg report RUN --output reports`` with reports/ an existing folder (or a path
    below a file) ended in a bare IsADirectoryError / FileExistsError traceback after the
    page was made; now one ``kseg: error:`` line names it, and nothing is written."""
    from test_report import write_config

    from kseg import cli, report

    run = tmp_path / "run"
    write_config(run)
    if where == "folder":
        (tmp_path / "reports").mkdir()
        output, named = tmp_path / "reports", tmp_path / "reports"
    else:
        (tmp_path / "notes").write_text("mine")
        output, named = tmp_path / "notes" / "report.html", tmp_path / "notes"
    monkeypatch.setattr(report._Page, "render",
                        lambda self: pytest.fail("the page was made for an unwritable output"))
    assert cli.main(["report", str(run), "--output", str(output)]) == 1
    assert capsys.readouterr().err.startswith(f"kseg: error: {named}: is ")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["run", "reports" if where == "folder" else "notes"])
    assert (where != "folder") or not any((tmp_path / "reports").iterdir())


def test_config_json_records_relative_paths_absolute(tmp_path, monkeypatch):
    """``kseg train chaos_liver --data-dir data/chaos --output-dir runs/c`` recorded the
    paths as typed; ``cd runs && kseg evaluate c --split test`` then looked for the
    download in runs/data/chaos and said the prepared dataset was stale (seen end to end:
    "was prepared from .../proj/data/chaos (72 files), but .../proj/runs/data/chaos holds
    other files now (0 files)", suggesting to delete it). config.json now holds them
    absolute (os.path.abspath in the training folder); a gs:// folder is kept as given."""
    import argparse

    from kseg.recipes import load_run
    from kseg.recipes.run_config import write_config

    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    monkeypatch.chdir(project)
    args = argparse.Namespace(output_dir=pathlib.Path("runs/c"), seed=0, folds=3,
                              data_dir=pathlib.Path("data/chaos"), manual_dir="data/chaos",
                              tfds_dir="gs://bucket/tfds", test_fold=0, validation_fold=1)
    write_config(project / "runs" / "c", args, "chaos_liver", _builder(project / "data"),
                 {"liver": 1}, {"kind": "slices"})
    recorded = json.loads((project / "runs" / "c" / "config.json").read_text())["arguments"]
    assert recorded["data_dir"] == recorded["manual_dir"] == str(project / "data" / "chaos")
    assert recorded["output_dir"] == str(project / "runs" / "c")
    assert recorded["tfds_dir"] == "gs://bucket/tfds"
    monkeypatch.chdir(project / "runs")
    _, reread = load_run("c")
    assert reread.data_dir == project / "data" / "chaos" and reread.output_dir == pathlib.Path("c")


def test_a_moved_cross_validation_reads_its_own_phantom(tmp_path, monkeypatch):
    """A cross-validation's RUN/config.json is its first member's, with ``output_dir`` set
    to the --output-dir as given (``runs/cv``) and saved with save_config: a relative
    output_dir beside the member's absolute phantom path, so a moved cross-validation read
    (and rewrote) the phantom at its old place. save_config records the folders absolute,
    as write_config does, and the moved run reads its own."""
    from kseg.recipes import load_run
    from kseg.recipes.run_config import CONFIG_VERSION, save_config

    monkeypatch.chdir(tmp_path)
    first_member = {"output_dir": str(tmp_path / "runs/cv/folds/fold_1"),
                    "manual_dir": str(tmp_path / "runs/cv/phantom"), "data_dir": None,
                    "tfds_dir": str(tmp_path / "runs/cv/tfds"), "validation_fold": 1}
    config = {"kseg_config_version": CONFIG_VERSION, "recipe": "chaos_liver",
              "arguments": {**first_member, "output_dir": "runs/cv", "validation_fold": "all"},
              "seed": 0, "created": "2026-12-02T03:00:00+00:00", "versions": {},
              "git_commit": None, "dataset": {"name": "chaos"}, "labels": {"liver": 1},
              "inference": {}}  # fmt: skip
    save_config(tmp_path / "runs" / "cv", config)
    shutil.move(tmp_path / "runs" / "cv", tmp_path / "moved")
    _, args = load_run(tmp_path / "moved")
    assert (args.manual_dir, args.tfds_dir) == (tmp_path / "moved" / "phantom",
                                                tmp_path / "moved" / "tfds")


def test_a_radiograph_run_refuses_a_ct_volume_before_the_model_loads(tmp_path, monkeypatch):
    """A chest X-ray run given a CT NIfTI volume (3 slices) labelled every CT slice as a
    chest radiograph (lungs, heart ... on an abdomen) and wrote it without a word; now the
    file is named before the model loads. A one-slice NIfTI (a 2D radiograph stored as
    NIfTI) is still predicted."""
    from test_predict import radiograph_inference, write_volume_nifti

    from kseg.predict import predict_command

    run = write_run(tmp_path / "run", identity_model(2), radiograph_inference((12, 10)))
    volume = tmp_path / "abdomen_ct.nii.gz"
    write_volume_nifti(volume, synthetic_hu((3, 12, 10)), np.eye(4))
    with monkeypatch.context() as patch:
        _no_model_load(patch)
        with pytest.raises(LayoutError, match=f"{re.escape(str(volume))}: is a volume of 3 "
                                              "slices; the run's model segments radiographs"):
            predict_command(run, volume, tmp_path / "out", "nifti")
    assert not (tmp_path / "out").exists()
    flat = tmp_path / "flat" / "chest.nii.gz"
    flat.parent.mkdir()
    write_volume_nifti(flat, synthetic_hu((1, 12, 10)), np.eye(4))
    written = predict_command(run, flat, tmp_path / "out", "nifti")
    assert written == [tmp_path / "out" / "chest.nii.gz"]


def test_an_interrupted_png_prediction_leaves_no_partial_slice_folder(
    ct_case, tmp_path, monkeypatch
):
    """A volume predicted as PNG is a folder of slices. Interrupted (Ctrl-C, a full disk)
    after some slices, it left OUT/patient7/ holding 2 of 3 slices under the prediction's
    name, which a later step takes for a whole prediction. Now the slices are written
    beside it and moved in once complete: nothing visible is left under OUT, and the same
    command then writes all 3 slices."""
    import kseg.predict
    from kseg.io.png_stack import write_png_stack
    from kseg.predict import predict_command

    folder, run = ct_case
    out = tmp_path / "out"

    def interrupted(array, where, **kwargs):
        write_png_stack(array[:2], where, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(kseg.predict, "write_png_stack", interrupted)
        with pytest.raises(KeyboardInterrupt):
            predict_command(run, folder, out, "png")
    assert [entry.name for entry in out.iterdir() if not entry.name.startswith(".")] == []
    written = predict_command(run, folder, out, "png")
    assert written == [out / "patient7" / f"slice_{k:04d}.png" for k in range(3)]
    assert sorted(out.iterdir()) == [out / "patient7"]

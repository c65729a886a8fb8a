"""The example scripts' command line: ``--help`` and argument errors answer before
TensorFlow loads, and ``--folds`` larger than the number of patients stops with one clear
line before anything is written or trained.

The expected counts come from the folders the tests make (or the phantom option given),
the expected wording from the message the scripts document; the scripts run as a user
runs them, in a fresh interpreter, where ``-X importtime`` lists every module imported.
"""

import json
import subprocess
import sys

import pytest
from test_examples import EXAMPLES, load_example

# the option that sets how many patients each script's phantom has
PHANTOM_OPTION = {
    "chaos_liver": "--phantom-patients",
    "lctsc_lungs": "--phantom-patients",
    "xray_multiclass": "--phantom-images",
    "msd_spleen_highresnet": "--phantom-cases",
}
TENSORFLOW_STACK = {"tensorflow", "keras"}


def run_script(name, *args, cwd):
    return subprocess.run(
        [sys.executable, "-X", "importtime", str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300, check=False,
    )


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def last_message(stderr: str) -> str:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")][-1]


@pytest.mark.parametrize("name", sorted(PHANTOM_OPTION))
def test_help_answers_without_importing_tensorflow(name, tmp_path):
    result = run_script(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--folds FOLDS" in result.stdout
    modules = imported_modules(result.stderr)
    assert "argparse" in modules  # the -X importtime listing is there to be read
    assert not TENSORFLOW_STACK & modules


@pytest.mark.parametrize("name", sorted(PHANTOM_OPTION))
def test_more_folds_than_phantom_patients_stops_before_any_work(name, tmp_path):
    option = PHANTOM_OPTION[name]
    output_dir = tmp_path / "run"
    result = run_script(name, "--output-dir", str(output_dir), "--folds", "5", option, "4",
                        cwd=tmp_path)
    assert result.returncode == 2
    assert last_message(result.stderr) == (
        f"{name}.py: error: --folds 5 needs at least 5 patients; the phantom ({option}) "
        "holds 4: use --folds 4 or fewer"
    )
    assert not output_dir.exists()  # no phantom, no dataset, no model
    assert not TENSORFLOW_STACK & imported_modules(result.stderr)


def chaos_download(root):
    """Train_Sets/CT with patient folders 1..4, plus a folder and a file that are not
    patients (the builder reads folders named by number)."""
    for name in ("1", "2", "3", "4", "notes"):
        (root / "Train_Sets" / "CT" / name).mkdir(parents=True)
    (root / "Train_Sets" / "CT" / "5").write_text("a file, not a patient folder")
    return 4


def lctsc_download(root):
    """LCTSC/ with four training patients and a challenge test patient, which has no fold."""
    for name in ("LCTSC-Train-S1-001", "LCTSC-Train-S1-002", "LCTSC-Train-S2-001",
                 "LCTSC-Train-S3-001", "LCTSC-Test-S1-101"):
        (root / "LCTSC" / name).mkdir(parents=True)
    return 4


def xray_download(root):
    """images/ with four radiographs (one per patient) and a hidden file."""
    (root / "images").mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png", ".DS_Store"):
        (root / "images" / name).write_bytes(b"")
    return 4


def msd_download(root):
    """Task09_Spleen/dataset.json listing four labelled cases and one unlabelled case."""
    (root / "Task09_Spleen").mkdir()
    listing = {
        "training": [{"image": f"./imagesTr/spleen_{i}.nii.gz",
                      "label": f"./labelsTr/spleen_{i}.nii.gz"} for i in (2, 3, 6, 8)],
        "test": ["./imagesTs/spleen_1.nii.gz"],
    }
    (root / "Task09_Spleen" / "dataset.json").write_text(json.dumps(listing))
    return 4


DOWNLOADS = {
    "chaos_liver": chaos_download,
    "lctsc_lungs": lctsc_download,
    "xray_multiclass": xray_download,
    "msd_spleen_highresnet": msd_download,
}


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_more_folds_than_patients_in_data_dir_names_the_folder(name, tmp_path, capsys):
    patients = DOWNLOADS[name](tmp_path)
    example = load_example(name)
    args = example.parse_args(["--data-dir", str(tmp_path), "--folds", str(patients)])
    assert args.folds == patients
    with pytest.raises(SystemExit) as stopped:
        example.parse_args(["--data-dir", str(tmp_path), "--folds", str(patients + 1)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --folds {patients + 1} needs at least {patients + 1} patients; {tmp_path} "
        f"holds {patients}: use --folds {patients} or fewer"
    )


def test_data_dir_without_the_layout_is_left_to_the_builder(tmp_path):
    # nothing to count: the dataset builder reports the missing folders with the layout
    (tmp_path / "readme.txt").write_text("not the CHAOS layout")
    args = load_example("chaos_liver").parse_args(["--data-dir", str(tmp_path), "--folds", "9"])
    assert args.folds == 9


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--folds", "2"], "--folds must be at least 3 (a test, a validation and a training "
                           "fold), got 2"),
        (["--folds", "3", "--test-fold", "3"], "--test-fold must be in 0..2 with --folds 3, "
                                               "got 3"),
        (["--test-fold", "1"], "--test-fold and --validation-fold must differ, both are 1"),
        (["--folds", "5", "--phantom-cases", "2"], "--folds 5 needs at least 5 patients; the "
         "phantom (--phantom-cases) holds 2: the examples need at least 3 patients"),
    ],
)
def test_bad_folds_are_named(arguments, message, tmp_path, capsys):
    example = load_example("msd_spleen_highresnet")
    with pytest.raises(SystemExit) as stopped:
        example.parse_args(["--output-dir", str(tmp_path / "run"), *arguments])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


def _data_dir(tmp_path, kind):
    target = tmp_path / kind
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("not a folder")
    return target


@pytest.mark.parametrize("name", sorted(PHANTOM_OPTION))
@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("file", "is a file; give the folder the download was extracted into"),
        ("empty", "is empty; extract the download into it"),
    ],
)
def test_unusable_data_dir_is_one_usage_line(name, kind, message, tmp_path, capsys):
    data_dir = _data_dir(tmp_path, kind)
    with pytest.raises(SystemExit) as stopped:
        load_example(name).parse_args(["--data-dir", str(data_dir)])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert f"error: --data-dir {data_dir} {message}" in last


@pytest.mark.parametrize("name", sorted(PHANTOM_OPTION))
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--epochs", "-1"], "--epochs must be at least 1, got -1"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--learning-rate", "nan"], "--learning-rate must be positive, got nan"),
    ],
)
def test_non_positive_counts_are_one_usage_line(name, arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_example(name).parse_args(["--output-dir", str(tmp_path / "run"), *arguments])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["chaos_liver", "lctsc_lungs", "xray_multiclass"])
def test_image_size_zero_is_one_usage_line(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_example(name).parse_args(["--output-dir", str(tmp_path / "run"), "--image-size", "0"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --image-size must be at least 1, got 0"
    )


def test_output_dir_that_is_a_file_is_one_usage_line(tmp_path, capsys):
    output = tmp_path / "out"
    output.write_text("keep me")
    with pytest.raises(SystemExit) as stopped:
        load_example("chaos_liver").parse_args(["--output-dir", str(output)])
    assert stopped.value.code == 2
    assert "is a file; expected a folder to write into" in capsys.readouterr().err
    assert output.read_text() == "keep me"


def test_a_kseg_error_during_the_run_is_printed_without_traceback(monkeypatch, capsys):
    from kseg.errors import LayoutError
    from kseg.recipes import _common as common

    monkeypatch.setattr(sys, "argv", ["chaos_liver.py"])

    def main():
        raise LayoutError("/data/CHAOS/Train_Sets/CT", "not found; expected the layout")

    with pytest.raises(SystemExit) as stopped:
        common.run(main)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "chaos_liver.py: error: /data/CHAOS/Train_Sets/CT: not found; expected the layout\n"
    )

    def failing():
        raise RuntimeError("a bug, not a data problem")

    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        common.run(failing)


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "--max-minutes must be positive, got 0.0"),
        ("-5", "--max-minutes must be positive, got -5.0"),
        ("nan", "--max-minutes must be positive, got nan"),
        ("inf", "--max-minutes must be a finite number of minutes; leave it out for no time "
                "budget"),
    ],
)
@pytest.mark.parametrize("example", ["xray_multiclass", "msd_spleen_highresnet"])
def test_a_time_budget_that_is_not_positive_is_one_usage_line(
    example, value, message, tmp_path, capsys
):
    with pytest.raises(SystemExit) as stopped:
        load_example(example).parse_args(
            ["--output-dir", str(tmp_path / "run"), "--max-minutes", value]
        )
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_the_spleen_example_keeps_a_time_budget_like_the_2d_ones(tmp_path):
    """The budget reaches _common.fit, whose TimeBudget callback test_recipes_strategy checks."""
    args = load_example("msd_spleen_highresnet").parse_args(
        ["--output-dir", str(tmp_path / "run"), "--max-minutes", "2.5"]
    )
    assert args.max_minutes == 2.5

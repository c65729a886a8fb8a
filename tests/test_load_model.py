"""kseg.load_model reloads a saved model in a fresh interpreter that never imported kseg's
Keras modules, which plain keras.saving.load_model cannot do."""

import textwrap
import zipfile

import numpy as np
import pytest
from child_processes import run_forked

import kseg
from kseg.errors import UnreadableFileError


def test_load_model_in_fresh_process_without_custom_objects(tmp_path, zygote):
    import keras

    import kseg.losses
    import kseg.metrics
    import kseg.models

    model = kseg.models.build("attention_unet", input_shape=(16, 16, 1), depth=2, base_filters=4)
    model.compile(loss=kseg.losses.ComboLoss(), metrics=[kseg.metrics.DiceScore()])
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = keras.ops.convert_to_numpy(model(x))

    script = textwrap.dedent(
        f"""
        import sys, numpy as np, kseg
        assert "kseg.models" not in sys.modules
        model = kseg.load_model({str(path)!r})
        assert type(model.loss).__name__ == "ComboLoss", model.loss
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, np.asarray(model(x)))
        """
    )
    # forked from a process that imported TensorFlow and Keras, never kseg
    returncode, _, stderr = run_forked(zygote, script, stderr_path=tmp_path / "child.stderr")
    assert returncode == 0, stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


# ---- files that are not saved models ------------------------------------------------------
# Keras says "File not found" for a truncated or foreign .keras file that exists, and a bare
# KeyError for a zip without a model in it.


@pytest.fixture(scope="module")
def saved_model_bytes(tmp_path_factory):
    import kseg.models

    model = kseg.models.build("unet", input_shape=(8, 8, 1), depth=1, base_filters=2)
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    model.save(path)
    return path.read_bytes()


def _expect_unreadable(path, message):
    with pytest.raises(UnreadableFileError, match=message) as info:
        kseg.load_model(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)
    return info.value


@pytest.mark.parametrize("kept", [0.5, 0.99, 0.0], ids=["half", "last-bytes-missing", "empty"])
def test_truncated_keras_file_is_named_as_not_a_zip_archive(saved_model_bytes, tmp_path, kept):
    path = tmp_path / "best.keras"
    path.write_bytes(saved_model_bytes[: int(len(saved_model_bytes) * kept)])
    _expect_unreadable(path, r"is not a zip archive \(\d+ bytes.*expected a \.keras model file")


def test_random_bytes_are_named_as_not_a_zip_archive(tmp_path):
    path = tmp_path / "random.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _expect_unreadable(path, "is not a zip archive")


def test_zip_archive_without_a_model_is_named(tmp_path):
    path = tmp_path / "notes.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    _expect_unreadable(path, r"without config\.json \(it holds \['notes\.txt'\]\)")


def test_damaged_member_is_named(saved_model_bytes, tmp_path):
    path = tmp_path / "damaged.keras"
    path.write_bytes(saved_model_bytes)
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("model.weights.h5")
    assert member.compress_type == zipfile.ZIP_STORED
    damaged = bytearray(saved_model_bytes)
    start = member.header_offset + 30 + len(member.filename) + len(member.extra) + 100
    damaged[start : start + 64] = bytes(64)  # zeroes inside the weights: the CRC fails
    path.write_bytes(bytes(damaged))
    _expect_unreadable(path, r"is a damaged \.keras archive .*CRC")


def test_folder_is_named(tmp_path):
    folder = tmp_path / "saved_model.keras"
    folder.mkdir()
    _expect_unreadable(folder, r"is a folder; expected a \.keras model file")


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    path = tmp_path / "runs" / "best.keras"
    with pytest.raises(FileNotFoundError, match=r"no such file.*\.keras model file") as info:
        kseg.load_model(path)
    assert info.value.filename == str(path)


def test_legacy_h5_name_on_a_non_hdf5_file_is_named(tmp_path):
    path = tmp_path / "model.h5"
    path.write_text("not hdf5")
    _expect_unreadable(path, r"is not an HDF5 file")


def test_a_good_file_still_loads(saved_model_bytes, tmp_path):
    path = tmp_path / "good.keras"
    path.write_bytes(saved_model_bytes)
    assert kseg.load_model(path, compile=False).output_shape == (None, 8, 8, 1)

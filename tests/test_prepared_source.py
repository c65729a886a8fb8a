"""A prepared TFDS dataset records the files it was made from, and is not reused for others.

Before this record, a run folder's dataset was reused whatever ``--data-dir`` held later, and
``evaluate --input`` cached every folder by its base name: a second hospital's ``images``
folder was scored with the first one's images.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import pytest

from kseg.errors import LayoutError
from kseg.phantoms import xray
from kseg.recipes import _common, _evaluation


def digests(folder: pathlib.Path) -> dict:
    return {path.relative_to(folder): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _generic_config(folds: int):
    from tfds_builders.xray import Builder

    generic = next(config for config in Builder.BUILDER_CONFIGS if config.name == "generic")
    return _common.with_folds(generic, folds)


def builder_for(data_dir: pathlib.Path):
    from tfds_builders.xray import Builder

    return Builder(config=_generic_config(2), data_dir=str(data_dir))


def examples(builder) -> int:
    return sum(split.num_examples for split in builder.info.splits.values())


def test_listing_follows_names_and_sizes_not_times(tmp_path):
    download = tmp_path / "download"
    (download / "images").mkdir(parents=True)
    (download / "images" / "a.png").write_bytes(b"12345")
    (download / "masks").mkdir()
    (download / "masks" / "a.png").write_bytes(b"1")
    listing = _common.source_listing(download)
    expected = hashlib.sha256(b"images/a.png\t5\nmasks/a.png\t1").hexdigest()
    assert listing == {"folder": os.fspath(download.resolve()), "files": 2,
                       "listing_sha256": expected, "every_file_sha256": expected}

    copy = tmp_path / "copy"
    shutil.copytree(download, copy, copy_function=shutil.copyfile)  # new times, same files
    os.utime(copy / "masks" / "a.png", (1, 1))
    assert _common.source_listing(copy)["listing_sha256"] == expected

    (copy / "masks" / "a.png").write_bytes(b"22")  # an edited mask
    assert _common.source_listing(copy)["listing_sha256"] != expected
    (copy / "masks" / "a.png").write_bytes(b"1")
    (copy / "masks" / "a.png").rename(copy / "masks" / "b.png")
    assert _common.source_listing(copy)["listing_sha256"] != expected


def test_a_dataset_of_other_files_is_an_error_not_reused(tmp_path, capsys):
    download = xray.write_generic(tmp_path / "download", num_images=4, size=16, seed=0)
    builder = builder_for(tmp_path / "tfds")
    _common.prepare(builder, download)
    record = json.loads((pathlib.Path(builder.data_dir) / _common.SOURCE_FILE).read_text())
    # 4 images, 4 masks and the phantom's SYNTHETIC.txt
    assert record["files"] == 9 and record["folder"] == os.fspath(download.resolve())

    _common.prepare(builder_for(tmp_path / "tfds"), download)  # the same files: reused
    assert f"Using the dataset prepared in {builder.data_dir}" in capsys.readouterr().out

    other = xray.write_generic(tmp_path / "other", num_images=6, size=16, seed=1)
    before = digests(other)
    with pytest.raises(LayoutError) as raised:
        _common.prepare(builder_for(tmp_path / "tfds"), other)
    message = str(raised.value)
    assert builder.data_dir in message
    assert f"prepared from {download.resolve()} (9 files)" in message
    assert f"{other.resolve()} holds other files now (13 files" in message
    assert digests(other) == before  # the download is only read


def test_evaluate_input_prepares_a_folder_of_the_same_name_again(tmp_path, capsys):
    from tfds_builders.xray import Builder

    config = _generic_config(2)
    run = tmp_path / "run"
    first = xray.write_generic(tmp_path / "site_a" / "images_of_b", num_images=4, size=16)
    builder = _evaluation.input_builder(Builder, config, first, run, "input-images_of_b")
    assert examples(builder) == 4

    again = _evaluation.input_builder(Builder, config, first, run, "input-images_of_b")
    assert examples(again) == 4
    assert "preparing it again" not in capsys.readouterr().out

    second = xray.write_generic(tmp_path / "site_b" / "images_of_b", num_images=6, size=16,
                                seed=3)
    builder = _evaluation.input_builder(Builder, config, second, run, "input-images_of_b")
    assert examples(builder) == 6  # the second folder's images, not the cached first ones
    assert "preparing it again" in capsys.readouterr().out


def test_preparing_and_reading_say_nothing_of_tfds_internals(tmp_path, caplog):
    # "Variant folder ... has no dataset_info.json" came from asking TFDS whether a folder
    # that does not exist yet is prepared; the dtype deprecation from TFDS decoding our
    # encoded tensors; "Using custom data configuration" from the fold count kseg derives.
    # None names anything a user could change.
    from absl import logging as absl_logging

    download = xray.write_generic(tmp_path / "download", num_images=4, size=16, seed=0)
    builder = builder_for(tmp_path / "tfds")
    with caplog.at_level("WARNING"):
        _common.prepare(builder, download)
        absl_logging.warning(
            "`FeatureConnector.dtype` is deprecated. Please change your code to use NumPy "
            "with the field `FeatureConnector.np_dtype` or use TensorFlow with the field "
            "`FeatureConnector.tf_dtype`."
        )
        absl_logging.warning("another TFDS warning")  # the filter drops only these
        absl_logging.warning("Using custom data configuration: %s", "someone else's")
    messages = [record.getMessage() for record in caplog.records]
    assert not [
        m for m in messages
        if "Variant folder" in m or "dtype` is deprecated" in m or "XrayConfig" in m
    ]  # fmt: skip
    assert "another TFDS warning" in messages
    assert "Using custom data configuration: someone else's" in messages
    assert _common.is_prepared(builder_for(tmp_path / "tfds"))
    assert not _common.is_prepared(builder_for(tmp_path / "nothing here"))

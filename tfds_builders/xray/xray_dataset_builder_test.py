"""Tests of the xray builder.

``dummy_data/`` was written by ``python -m kseg.phantoms.xray
tfds_builders/xray/dummy_data`` (defaults: 5 images per layout, 32 x 32, seed 0): the JSRT +
SCR, Montgomery and generic layouts side by side, five synthetic patients each, so every
one of the five folds holds one image. Expected values below come from the phantom's own
arrays, from numpy decoding of the raw bytes and from Pillow, never from the builder.
"""

import dataclasses

import numpy as np
import pydicom
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.pixels import apply_voi_lut

from kseg.data.pipeline import keep_patients, split_patient_ids
from kseg.data.splits import assign_folds, fold_names, nested_patient_subset
from kseg.errors import AlignmentError, LayoutError, MaskError, UnreadableFileError
from kseg.io import LossyMaskWarning
from kseg.phantoms import xray as xray_phantom
from tfds_builders._foreground import EmptyLabelWarning
from tfds_builders.xray import xray_dataset_builder as xray


class XrayTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = xray.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [
        "jsrt_scr",
        "jsrt_scr_left_right",
        "montgomery",
        "montgomery_lungs",
        "generic",
    ]
    SPLITS = {name: 1 for name in fold_names(5)}


SIZE = 32


def _prepare(manual_dir, data_dir, config):
    builder = xray.Builder(config=config, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _config(name, **changes):
    base = xray.Builder.builder_configs[name]
    return dataclasses.replace(base, name=changes.pop("rename", f"{name}_test"), **changes)


def _examples(builder, num_folds):
    """{image_id: example}, checking that no patient sits in two folds."""
    examples, fold_of = {}, {}
    for fold in fold_names(num_folds):
        for example in tfds.as_numpy(builder.as_dataset(split=fold)):
            patient = example["patient_id"].decode()
            assert fold_of.setdefault(patient, fold) == fold, f"{patient} in two folds"
            example["fold"] = fold
            examples[example["image_id"].decode()] = example
    return examples, fold_of


@pytest.fixture(scope="module")
def jsrt_root(tmp_path_factory):
    return xray_phantom.write_jsrt_scr(
        tmp_path_factory.mktemp("jsrt"), num_images=4, size=SIZE, seed=3
    )


def test_jsrt_images_are_inverted_raw_words_averaged_onto_the_mask_grid(jsrt_root, tmp_path):
    builder = _prepare(jsrt_root, tmp_path, _config("jsrt_scr", num_folds=2))
    examples, _ = _examples(builder, 2)
    names = xray_phantom.jsrt_names(4)
    assert sorted(examples) == sorted(f"{n}.IMG" for n in names)
    for k, name in enumerate(names):
        example = examples[f"{name}.IMG"]
        raw = np.frombuffer((jsrt_root / "All247images" / f"{name}.IMG").read_bytes(), ">u2")
        bright = 4095 - raw.reshape(SIZE, SIZE).astype(np.float64)
        expected = np.zeros((SIZE // 2, SIZE // 2))
        for dr in (0, 1):
            for dc in (0, 1):
                expected += bright[dr::2, dc::2] / 4
        np.testing.assert_array_equal(example["image"], np.rint(expected))
        assert example["image"].dtype == np.uint16 and int(example["bit_depth"]) == 12
        assert example["patient_id"].decode() == name
        # Labels from the phantom's anatomy on the mask grid, merged in the config's order.
        anatomy = xray_phantom.structure_masks((SIZE // 2, SIZE // 2), seed=3000 + k)
        labels = np.zeros((SIZE // 2, SIZE // 2), np.uint8)
        for structure, label in (
            ("right lung", 1),
            ("left lung", 1),
            ("heart", 2),
            ("right clavicle", 3),
            ("left clavicle", 3),
        ):
            labels[anatomy[structure]] = label
        np.testing.assert_array_equal(example["mask"], labels)
    assert builder.info.metadata["class_names"] == ["background", "lungs", "heart", "clavicles"]


def test_jsrt_left_right_labels_follow_the_structures_in_both_gif_palettes(jsrt_root, tmp_path):
    builder = _prepare(jsrt_root, tmp_path, _config("jsrt_scr_left_right", num_folds=2))
    examples, _ = _examples(builder, 2)
    structures = ("right lung", "left lung", "heart", "right clavicle", "left clavicle")
    palettes = set()
    for k, name in enumerate(xray_phantom.jsrt_names(4)):
        fold = 1 if int(name[-3:]) % 2 else 2
        gif = Image.open(jsrt_root / "scratch" / f"fold{fold}" / "masks" / "heart" / f"{name}.gif")
        colours = np.asarray(gif.convert("RGB"))
        palettes.add("grey" if (colours == colours[..., :1]).all() else "colour")
        anatomy = xray_phantom.structure_masks((SIZE // 2, SIZE // 2), seed=3000 + k)
        expected = np.zeros((SIZE // 2, SIZE // 2), np.uint8)
        for label, structure in enumerate(structures, start=1):
            expected[anatomy[structure]] = label
        np.testing.assert_array_equal(examples[f"{name}.IMG"]["mask"], expected)
    # Grey palettes (as SCR's GIFs) are read by grey value, colour palettes by index.
    assert palettes == {"grey", "colour"}


def test_jsrt_file_of_wrong_size_is_refused(tmp_path):
    manual = xray_phantom.write_jsrt_scr(tmp_path / "manual", num_images=3, size=16)
    (manual / "All247images" / "JPCNN001.IMG").write_bytes(b"\0" * 100)
    with pytest.raises(UnreadableFileError, match=r"JPCNN001\.IMG: 100 bytes is not a square"):
        _prepare(manual, tmp_path / "data", _config("jsrt_scr", num_folds=2))


def test_jsrt_mask_grid_that_does_not_divide_the_image_is_refused(tmp_path):
    manual = xray_phantom.write_jsrt_scr(tmp_path / "manual", num_images=2, size=16)
    gif = manual / "scratch" / "fold1" / "masks" / "right lung" / "JPCLN001.gif"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(gif)
    with pytest.raises(AlignmentError, match=r"right lung/JPCLN001\.gif: mask is 5x5"):
        _prepare(manual, tmp_path / "data", _config("jsrt_scr", num_folds=2))


def test_montgomery_left_and_right_masks_and_16_bit_images(tmp_path):
    manual = xray_phantom.write_montgomery(tmp_path / "manual", num_images=3, size=SIZE, seed=1)
    builder = _prepare(manual, tmp_path / "data", _config("montgomery", num_folds=3))
    examples, fold_of = _examples(builder, 3)
    assert set(fold_of) == {"MCUCXR_0001", "MCUCXR_0002", "MCUCXR_0003"}
    for k in range(3):
        name = f"MCUCXR_{k + 1:04d}_{k % 2}.png"
        example = examples[name]
        png = np.asarray(Image.open(manual / "MontgomerySet" / "CXR_png" / name))
        np.testing.assert_array_equal(example["image"], png)
        assert int(example["bit_depth"]) == 16
        phantom = xray_phantom.chest_radiograph((SIZE, SIZE), seed=1000 + k)
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[phantom.structures["left lung"]] = 1
        expected[phantom.structures["right lung"]] = 2
        np.testing.assert_array_equal(example["mask"], expected)


def test_generic_label_map_class_map_and_patient_pattern(tmp_path):
    manual = xray_phantom.write_generic(
        tmp_path / "manual",
        num_images=3,
        size=SIZE,
        seed=2,
        bit_depth=16,
        classes=xray_phantom.GENERIC_CLASSES,
        images_per_patient=2,
    )
    config = _config(
        "generic",
        num_folds=3,
        class_names=("background", "lungs", "heart", "clavicles"),
        mask_value_ranges=((0, 0, 0), (85, 85, 1), (170, 170, 2), (255, 255, 3)),
        patient_id_pattern=r"^(?P<patient>P\d+)_\d$",
    )
    builder = _prepare(manual, tmp_path / "data", config)
    examples, fold_of = _examples(builder, 3)
    assert fold_of == {
        p: f"fold{f}" for p, f in assign_folds(["P0001", "P0002", "P0003"], 3, seed=0).items()
    }
    modes = set()
    for k in range(6):
        stem = xray_phantom.generic_stem(k, images_per_patient=2)
        example = examples[f"{stem}.png"]
        assert example["patient_id"].decode() == stem[:5]
        png = np.asarray(Image.open(manual / "images" / f"{stem}.png"))
        np.testing.assert_array_equal(example["image"], png)
        # Whatever each file's encoding (8/16-bit, palettes, RGB(A)), the labels are the
        # phantom's anatomy, painted lungs -> heart -> clavicles.
        s = xray_phantom.chest_radiograph((SIZE, SIZE), seed=2000 + k, bit_depth=16).structures
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[s["right lung"] | s["left lung"]] = 1
        expected[s["heart"]] = 2
        expected[s["right clavicle"] | s["left clavicle"]] = 3
        np.testing.assert_array_equal(example["mask"], expected)
        assert int(example["bit_depth"]) == 16
        modes.add(Image.open(manual / "masks" / f"{stem}.png").mode)
    assert modes == {"L", "I;16", "P", "RGB", "RGBA"}


def test_generic_per_class_folders_paint_later_classes_on_top(tmp_path):
    manual = xray_phantom.write_generic(
        tmp_path / "manual",
        num_images=3,
        size=SIZE,
        seed=4,
        classes=("lungs", "clavicles"),
        per_class_folders=True,
    )
    config = _config(
        "generic",
        num_folds=3,
        class_names=("background", "lungs", "clavicles"),
        mask_folders=(("lungs", 1), ("clavicles", 2)),
    )
    examples, _ = _examples(_prepare(manual, tmp_path / "data", config), 3)
    for k in range(3):
        phantom = xray_phantom.chest_radiograph((SIZE, SIZE), seed=4000 + k, bit_depth=8)
        s = phantom.structures
        lungs = s["right lung"] | s["left lung"]
        clavicles = s["right clavicle"] | s["left clavicle"]
        assert (lungs & clavicles).any()  # the overlap the painting order decides
        expected = np.where(clavicles, 2, np.where(lungs, 1, 0))
        np.testing.assert_array_equal(examples[f"P{k + 1:04d}_0.png"]["mask"], expected)


@pytest.mark.parametrize("image_format, bit_depth", [("tiff", 16), ("dicom", 12)])
def test_generic_reads_tiff_and_dicom_images(tmp_path, image_format, bit_depth):
    manual = xray_phantom.write_generic(
        tmp_path / "manual",
        num_images=3,
        size=16,
        seed=5,
        image_format=image_format,
        bit_depth=bit_depth,
    )
    examples, _ = _examples(_prepare(manual, tmp_path / "data", _config("generic", num_folds=3)), 3)
    for k in range(3):
        phantom = xray_phantom.chest_radiograph((16, 16), seed=5000 + k, bit_depth=bit_depth)
        suffix = ".tif" if image_format == "tiff" else ".dcm"
        example = examples[f"P{k + 1:04d}_0{suffix}"]
        np.testing.assert_array_equal(example["image"], phantom.image)
        assert int(example["bit_depth"]) == bit_depth


def _displayed_by_pydicom(path):
    """A DICOM radiograph as displayed, by pydicom's apply_voi_lut (unsigned, no rescale:
    its output range is kseg's), then MONOCHROME1 / INVERSE polarity; and its bits."""
    ds = pydicom.dcmread(path)
    shown = np.rint(apply_voi_lut(ds.pixel_array, ds))
    bits = ds.VOILUTSequence[0].LUTDescriptor[2] if "VOILUTSequence" in ds else ds.BitsStored
    if ds.PhotometricInterpretation == "MONOCHROME1" or ds.get("PresentationLUTShape") == (
        "INVERSE"
    ):
        shown = 2**bits - 1 - shown
    return shown, bits


@pytest.mark.parametrize("display", sorted(xray_phantom.DICOM_DISPLAY_ENCODINGS))
def test_generic_dicom_images_are_read_as_displayed_by_default(tmp_path, display):
    manual = xray_phantom.write_generic(
        tmp_path / "manual", num_images=2, size=16, seed=6, image_format="dicom",
        bit_depth=12, dicom_display=display,
    )  # fmt: skip
    builder = _prepare(manual, tmp_path / "data", _config("generic", num_folds=2))
    assert builder.info.metadata["image_formats"] == ["dicom"]
    examples, _ = _examples(builder, 2)
    for k in range(2):
        expected, bits = _displayed_by_pydicom(manual / "images" / f"P{k + 1:04d}_0.dcm")
        example = examples[f"P{k + 1:04d}_0.dcm"]
        np.testing.assert_array_equal(example["image"], expected)
        assert int(example["bit_depth"]) == bits
        # the phantom, higher brighter, survives every encoding's display
        phantom = xray_phantom.chest_radiograph((16, 16), seed=6000 + k, bit_depth=12)
        assert np.corrcoef(example["image"].ravel(), phantom.image.ravel())[0, 1] > 0.9


def test_generic_dicom_modality_config_keeps_the_stored_values(tmp_path):
    manual = xray_phantom.write_generic(
        tmp_path / "manual", num_images=2, size=16, seed=6, image_format="dicom",
        bit_depth=12, dicom_display="window",
    )  # fmt: skip
    config = _config("generic", num_folds=2, dicom_values="modality")
    examples, _ = _examples(_prepare(manual, tmp_path / "data", config), 2)
    for k in range(2):
        phantom = xray_phantom.chest_radiograph((16, 16), seed=6000 + k, bit_depth=12)
        np.testing.assert_array_equal(examples[f"P{k + 1:04d}_0.dcm"]["image"], phantom.image)
    with pytest.raises(ValueError, match="dicom_values must be one of"):
        xray.Builder(config=_config("generic", dicom_values="shown"), data_dir=tmp_path)


def test_generic_mask_values_outside_the_class_map_are_a_mask_error(tmp_path):
    manual = xray_phantom.write_generic(
        tmp_path / "manual", num_images=3, size=16, classes=("lungs", "heart")
    )
    config = _config(
        "generic",
        num_folds=3,
        class_names=("background", "lungs", "heart"),
        mask_value_ranges=((0, 0, 0), (127, 127, 1)),
    )
    with pytest.raises(MaskError, match=r"masks/P000\d_0\.png: values in no range.*254 \("):
        _prepare(manual, tmp_path / "data", config)


def test_generic_missing_mask_and_missing_folder_name_the_file(tmp_path):
    manual = xray_phantom.write_generic(tmp_path / "manual", num_images=3, size=16)
    (manual / "masks" / "P0002_0.png").unlink()
    with pytest.raises(MaskError, match=r"images/P0002_0\.png: has no mask named P0002_0\.\*"):
        _prepare(manual, tmp_path / "data", _config("generic", num_folds=3))
    with pytest.raises(LayoutError, match=r"(?s)MontgomerySet/CXR_png: not found.*leftMask"):
        _prepare(manual, tmp_path / "data2", _config("montgomery", num_folds=3))


def test_generic_mask_without_an_image_is_skipped_with_a_warning(tmp_path):
    import shutil

    from kseg.io import SkippedFileWarning

    manual = xray_phantom.write_generic(tmp_path / "manual", num_images=4, size=SIZE)
    orphan = manual / "masks" / "P0099_0.png"
    shutil.copy(manual / "masks" / "P0001_0.png", orphan)
    with pytest.warns(SkippedFileWarning, match=r"1 mask file\(s\) without an image") as caught:
        builder = _prepare(manual, tmp_path / "data", _config("generic", num_folds=3))
    assert any(str(orphan) in str(warning.message) for warning in caught)
    assert builder.info.splits.total_num_examples == 4


def test_mask_suffix_pairs_shenzhen_style_names(tmp_path):
    manual = xray_phantom.write_generic(tmp_path / "manual", num_images=3, size=16, seed=6)
    for path in (manual / "masks").iterdir():
        path.rename(path.with_name(f"{path.stem}_mask.png"))
    config = _config("generic", num_folds=3, mask_suffix="_mask")
    examples, _ = _examples(_prepare(manual, tmp_path / "data", config), 3)
    for k in range(3):
        phantom = xray_phantom.chest_radiograph((16, 16), seed=6000 + k, bit_depth=8)
        lungs = phantom.structures["right lung"] | phantom.structures["left lung"]
        np.testing.assert_array_equal(examples[f"P{k + 1:04d}_0.png"]["mask"], lungs)


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    """Generic layout whose images are flat 16-bit fields: noise is all that varies."""
    root = tmp_path_factory.mktemp("flat")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for k, level in enumerate((30000, 10, 65530)):
        Image.fromarray(np.full((64, 64), level, np.uint16)).save(root / "images" / f"f{k}.png")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / f"f{k}.png")
    return root


def test_noisy_config_adds_noise_of_sigma_and_leaves_the_clean_copy(flat_root, tmp_path):
    # The flat fields have empty masks: legal once no label is required (a warning each).
    clean_config = _config("generic", rename="flat", num_folds=3, required_labels=())
    noisy = xray.noisy_config(clean_config, 200.0, seed=1)
    assert noisy.name == "flat_noise200_seed1"
    with pytest.warns(EmptyLabelWarning, match=r"masks/f0\.png: patient f0, radiograph"):
        clean_builder = _prepare(flat_root, tmp_path, clean_config)
    with pytest.warns(EmptyLabelWarning):
        noisy_builder = _prepare(flat_root, tmp_path, noisy)
    assert clean_builder.data_dir != noisy_builder.data_dir
    clean, _ = _examples(clean_builder, 3)
    noisy_examples, _ = _examples(noisy_builder, 3)
    mid = noisy_examples["f0.png"]["image"].astype(np.float64)
    assert abs(mid.std() - 200.0) < 0.05 * 200.0  # std of the std over 4096 px is ~1.1 %
    assert abs(mid.mean() - 30000.0) < 4 * 200.0 / 64
    # Near the ends of the range the noise is clipped to 0 .. 65535, never wrapped.
    low = noisy_examples["f1.png"]["image"]
    high = noisy_examples["f2.png"]["image"]
    assert low.min() == 0 and low.max() < 1000 and high.max() == 65535 and high.min() > 64000
    for name, level in (("f0.png", 30000), ("f1.png", 10), ("f2.png", 65530)):
        np.testing.assert_array_equal(clean[name]["image"], np.full((64, 64), level))
        np.testing.assert_array_equal(noisy_examples[name]["mask"], clean[name]["mask"])
    with pytest.warns(EmptyLabelWarning):
        again, _ = _examples(_prepare(flat_root, tmp_path / "again", noisy), 3)
    np.testing.assert_array_equal(again["f0.png"]["image"], noisy_examples["f0.png"]["image"])


def test_nested_patient_subsets_are_nested_deterministic_and_patient_level(tmp_path):
    pool = [f"P{i:04d}" for i in range(30)]
    subsets = {n: nested_patient_subset(pool, n, seed=7) for n in (5, 10, 20, 30)}
    for small, large in ((5, 10), (10, 20), (20, 30)):
        assert set(subsets[small]) < set(subsets[large])
        assert subsets[large][:small] == subsets[small]
    assert nested_patient_subset(list(reversed(pool)) + pool[:3], 10, seed=7) == subsets[10]
    assert nested_patient_subset(pool, 10, seed=8) != subsets[10]
    with pytest.raises(ValueError, match=r"n must be an integer in 1\.\.30"):
        nested_patient_subset(pool, 31)

    manual = xray_phantom.write_generic(
        tmp_path / "manual", num_images=6, size=16, images_per_patient=2
    )
    config = _config("generic", num_folds=3, patient_id_pattern=r"^(P\d+)_")
    builder = _prepare(manual, tmp_path / "data", config)
    train = "fold1+fold2"
    patients = split_patient_ids(builder, train)
    _, fold_of = _examples(builder, 3)
    assert patients == sorted(p for p, f in fold_of.items() if f in ("fold1", "fold2"))
    chosen = nested_patient_subset(patients, 2)
    kept = list(tfds.as_numpy(keep_patients(builder.as_dataset(split=train), chosen)))
    assert sorted(e["image_id"].decode() for e in kept) == sorted(
        f"{p}_{view}.png" for p in chosen for view in (0, 1)
    )


def test_invalid_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"labels \[4\] are outside 0\.\.3"):
        xray.Builder(config=_config("jsrt_scr", mask_folders=(("heart", 4),)), data_dir=tmp_path)
    with pytest.raises(ValueError, match="mask_value_ranges: grey level ranges .* overlap"):
        xray.Builder(
            config=_config("generic", mask_value_ranges=((0, 10, 0), (5, 255, 1))),
            data_dir=tmp_path,
        )
    with pytest.raises(ValueError, match=r"mask_value_ranges: grey level range \(9, 3\)"):
        xray.Builder(config=_config("generic", mask_value_ranges=((9, 3, 0),)), data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"required_labels \[2\] are not foreground labels 1\.\.1"):
        xray.Builder(config=_config("generic", required_labels=(2,)), data_dir=tmp_path)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        xray.noisy_config(xray.Builder.builder_configs["generic"], 0)


# --- masks read by what each file holds; no silent empty masks ----------------------------


@pytest.mark.parametrize("encoding", sorted(xray_phantom.MASK_ENCODINGS))
def test_montgomery_masks_in_every_phantom_encoding_give_the_lungs(tmp_path, encoding):
    manual = xray_phantom.write_montgomery(
        tmp_path / "manual", num_images=2, size=SIZE, seed=8, mask_encoding=encoding
    )
    config = _config("montgomery", num_folds=2)
    if encoding == "jpg":
        with pytest.warns(LossyMaskWarning, match=r"leftMask/MCUCXR_0001_0\.jpg"):
            examples, _ = _examples(_prepare(manual, tmp_path / "data", config), 2)
    else:
        examples, _ = _examples(_prepare(manual, tmp_path / "data", config), 2)
    for k in range(2):
        name = f"MCUCXR_{k + 1:04d}_{k % 2}"
        if encoding == "8bit_edges":
            # The README rule of resized masks: stored grey above 127 is the structure.
            folder = manual / "MontgomerySet" / "ManualMask"
            left = np.asarray(Image.open(folder / "leftMask" / f"{name}.png"))
            right = np.asarray(Image.open(folder / "rightMask" / f"{name}.png"))
            assert ((left > 0) & (left < 255)).any()  # the edges really are interpolated
            expected = np.where(right > 127, 2, np.where(left > 127, 1, 0))
        else:
            s = xray_phantom.chest_radiograph((SIZE, SIZE), seed=8000 + k).structures
            expected = np.where(s["right lung"], 2, np.where(s["left lung"], 1, 0))
        np.testing.assert_array_equal(examples[f"{name}.png"]["mask"], expected)


def _pil_encodings():
    """Writers of a boolean lung mask in each encoding, using Pillow alone."""
    def grey(m):
        return m.astype(np.uint8) * 255

    def palette(indices, colours):
        image = Image.fromarray(indices.astype(np.uint8), mode="P")
        image.putpalette(colours)
        return image

    return {
        "1-bit": lambda m: Image.fromarray(m),
        "8-bit 0 255": lambda m: Image.fromarray(grey(m)),
        "8-bit 0 1": lambda m: Image.fromarray(m.astype(np.uint8)),
        "16-bit 0 65535": lambda m: Image.fromarray(m.astype(np.uint16) * 65535),
        "16-bit 0 1": lambda m: Image.fromarray(m.astype(np.uint16)),
        "palette grey, reversed": lambda m: palette(~m, [255, 255, 255, 0, 0, 0]),
        "palette colour": lambda m: palette(m, [0, 0, 0, 255, 0, 0]),
        "grey RGB": lambda m: Image.fromarray(grey(m)).convert("RGB"),
        "grey RGBA": lambda m: Image.fromarray(grey(m)).convert("RGBA"),
        "grey LA": lambda m: Image.fromarray(grey(m)).convert("LA"),
    }


def test_generic_masks_written_with_pillow_in_every_encoding_give_their_lung_count(tmp_path):
    writers = _pil_encodings()
    manual = xray_phantom.write_generic(tmp_path / "manual", num_images=len(writers), size=SIZE)
    truths = {}
    for k, (encoding, write) in enumerate(writers.items()):
        stem = xray_phantom.generic_stem(k)
        rng = np.random.default_rng(k)
        truth = np.kron(rng.random((4, 4)) < 0.5, np.ones((SIZE // 4, SIZE // 4), bool))
        truth[:8, :8] = True
        (manual / "masks" / f"{stem}.png").unlink()
        write(truth).save(manual / "masks" / f"{stem}.png")
        truths[f"{stem}.png"] = (encoding, truth)
    with Image.open(manual / "masks" / "P0001_0.png") as check:
        assert check.mode == "1"
    examples, _ = _examples(_prepare(manual, tmp_path / "data", _config("generic")), 5)
    for image_id, (encoding, truth) in truths.items():
        mask = examples[image_id]["mask"]
        assert int(mask.sum()) == int(truth.sum()), encoding
        np.testing.assert_array_equal(mask, truth, err_msg=encoding)


def test_generic_mask_of_0_and_100_is_a_mask_error_naming_the_file(tmp_path):
    manual = xray_phantom.write_generic(tmp_path / "manual", num_images=3, size=16)
    path = manual / "masks" / "P0002_0.png"
    Image.fromarray(np.where(np.eye(16, dtype=bool), 100, 0).astype(np.uint8)).save(path)
    with pytest.raises(MaskError, match=r"masks/P0002_0\.png: 8-bit grey mask holds 0 .*100"):
        _prepare(manual, tmp_path / "data", _config("generic", num_folds=3))


def test_radiograph_without_a_required_structure_is_a_mask_error_naming_it(tmp_path):
    manual = xray_phantom.write_jsrt_scr(tmp_path / "manual", num_images=3, size=SIZE)
    heart = manual / "scratch" / "fold1" / "masks" / "heart" / "JPCNN001.gif"
    Image.fromarray(np.zeros((SIZE // 2, SIZE // 2), np.uint8)).save(heart)
    with pytest.raises(
        MaskError, match=r"masks/heart/JPCNN001\.gif.*: patient JPCNN001, radiograph "
        r"JPCNN001\.IMG: .* no heart \(2\)"
    ):
        _prepare(manual, tmp_path / "data", _config("jsrt_scr", num_folds=3))


def test_foreground_statistics_per_split_are_saved_with_the_dataset(tmp_path):
    manual = xray_phantom.write_montgomery(tmp_path / "manual", num_images=4, size=SIZE, seed=9)
    config = _config("montgomery", num_folds=2)
    builder = _prepare(manual, tmp_path / "data", config)
    _, fold_of = _examples(builder, 2)
    stats = builder.info.metadata["foreground"]
    assert sorted(stats) == ["fold0", "fold1"]
    for fold in ("fold0", "fold1"):
        indices = [k for k in range(4) if fold_of[f"MCUCXR_{k + 1:04d}"] == fold]
        phantoms = [xray_phantom.chest_radiograph((SIZE, SIZE), seed=9000 + k) for k in indices]
        assert stats[fold]["patients"] == stats[fold]["slices"] == len(indices)
        assert stats[fold]["slices_with_foreground"] == len(indices)
        assert stats[fold]["voxels_per_label"] == {
            "left lung": sum(int(p.structures["left lung"].sum()) for p in phantoms),
            "right lung": sum(int(p.structures["right lung"].sum()) for p in phantoms),
        }
        assert stats[fold]["patients_without_label"] == {"left lung": [], "right lung": []}
    reloaded = xray.Builder(config=config, data_dir=tmp_path / "data")
    assert reloaded.info.metadata["foreground"] == stats

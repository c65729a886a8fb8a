"""Session 24, image files and augmentation: inputs a user or an archive produces that were
read or augmented wrongly without a word, each checked against an independent reference (a
file written directly with Pillow / pydicom here, or a numpy formula)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError
from kseg.io import LabelRule, read_labels


def _structure_rgb(structure, background) -> np.ndarray:
    """A 40 x 48 RGB mask: one rectangle (384 px, under half the image) in ``structure``."""
    rgb = np.empty((40, 48, 3), np.uint8)
    rgb[:] = background
    rgb[8:32, 10:26] = structure
    return rgb


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_colour_structure_on_grey_in_quantizer_order_is_not_read_inverted(tmp_path, suffix):
    # Pillow's GIF writer and quantize() put the green structure at index 0 and its grey
    # background at index 1: read as indices, the background became the structure.
    rgb = _structure_rgb((0, 255, 0), (128, 128, 128))
    path = tmp_path / f"CHNCXR_0001_0_mask{suffix}"
    image = Image.fromarray(rgb)
    (image if suffix == ".gif" else image.quantize(colors=2)).save(path)
    with Image.open(path) as written:  # the premise: the structure is index 0
        assert written.mode == "P" and written.getpalette()[:3] == [0, 255, 0]
    np.testing.assert_array_equal(
        read_labels(path, LabelRule()), (rgb[..., 1] == 255).astype(np.uint8)
    )


def test_two_colour_palette_with_no_background_entry_is_refused(tmp_path):
    # Green on red, neither black nor grey nor transparent: the file does not say which is
    # the background, and the quantizer put the structure first.
    path = tmp_path / "mask.gif"
    Image.fromarray(_structure_rgb((0, 255, 0), (255, 0, 0))).save(path)
    with pytest.raises(MaskError, match=r"mask\.gif: .*none of which is the background"):
        read_labels(path, LabelRule())


def test_transparent_palette_background_at_index_1_is_the_background(tmp_path):
    # An overlay export: red structure, background a transparent (white) entry at index 1.
    structure = np.zeros((40, 48), bool)
    structure[8:32, 10:26] = True
    image = Image.fromarray(np.where(structure, 0, 1).astype(np.uint8), "P")
    image.putpalette([255, 0, 0, 255, 255, 255])
    image.save(tmp_path / "overlay.png", transparency=1)
    np.testing.assert_array_equal(
        read_labels(tmp_path / "overlay.png", LabelRule()), structure.astype(np.uint8)
    )


def _ellipse(shape=(64, 64)) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return ((rows - 32) ** 2 / 400 + (columns - 28) ** 2 / 200) < 1


@pytest.mark.parametrize("suffix", [".webp", ".avif"])
@pytest.mark.parametrize("kind", ["transparent background", "overlay in alpha"])
def test_lossy_mask_with_alpha_reads_the_structure_it_shows(tmp_path, suffix, kind):
    # libwebp's lossy encoder replaces the colours under transparent pixels (649 of 3209
    # background pixels of a white-on-transparent mask came back white: structure); an
    # overlay painting white everywhere with the structure in alpha read as all structure.
    from kseg.io import LossyMaskWarning, read_mask

    structure = _ellipse()
    rgba = np.full((64, 64, 4), 255, np.uint8)
    rgba[..., 3] = np.where(structure, 255, 0)
    if kind == "transparent background":
        rgba[~structure, :3] = 0
    path = tmp_path / f"mask{suffix}"
    Image.fromarray(rgba).save(path, quality=75)
    for read in (lambda p: read_labels(p, LabelRule()), read_mask):
        with pytest.warns(LossyMaskWarning):
            np.testing.assert_array_equal(read(path), structure.astype(np.uint8))


def test_radiograph_with_transparency_over_its_values_is_refused(tmp_path):
    # A grey + alpha export whose frame is transparent: viewers show no image there, while
    # read_radiograph dropped the alpha and gave the hidden grey values as the radiograph.
    from kseg.errors import UnreadableFileError
    from kseg.io import read_radiograph

    grey = np.tile(np.arange(40, 200, dtype=np.uint8), (32, 1))[:, :64]
    alpha = np.zeros(grey.shape, np.uint8)
    alpha[4:28, 4:60] = 255
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "framed.png")
    with pytest.raises(UnreadableFileError, match=r"framed\.png: .*transparency"):
        read_radiograph(tmp_path / "framed.png")
    # Opaque, or transparent only over 0 (padding read as black): read as before.
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "a.png")
    padded = np.where(alpha > 0, grey, 0).astype(np.uint8)
    Image.fromarray(np.dstack([padded, alpha]), "LA").save(tmp_path / "padded.png")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "a.png")[0], grey)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "padded.png")[0], padded)


def test_lossy_dicom_radiograph_warns_like_the_series_reader(tmp_path):
    # A JPEG baseline secondary capture and pydicom's near-lossless JPEG-LS file read
    # without a word, while read_dicom_series warns for the same compression.
    import io

    import pydicom.data
    from test_radiograph_hunt import _chest, _secondary_capture

    from kseg.io import LossyImageWarning, read_radiograph

    buffer = io.BytesIO()
    Image.fromarray(_chest()).convert("RGB").save(buffer, format="JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    path = tmp_path / "sc.dcm"
    _secondary_capture(path, decoded, "YBR_FULL_422", jpeg=buffer.getvalue())
    with pytest.warns(LossyImageWarning, match=r"sc\.dcm: .*JPEG Baseline"):
        image, _ = read_radiograph(path)
    np.testing.assert_array_equal(image, decoded[..., 0])
    near_lossless = pydicom.data.get_testdata_file("JPEGLSNearLossless_16.dcm")
    with pytest.warns(LossyImageWarning, match="NEAR 2"):
        read_radiograph(near_lossless)
    # Uncompressed: no warning.
    _secondary_capture(tmp_path / "plain.dcm", np.stack([_chest()] * 3, -1), "RGB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossyImageWarning)
        read_radiograph(tmp_path / "plain.dcm")


def _affine_and_elastic(seed):
    from kseg.augment import RandomAffine, RandomElasticDeformation

    return [
        RandomAffine(2, rotation=40.0, scale=(0.7, 0.8), probability=1.0, seed=seed),
        RandomElasticDeformation(2, max_displacement=0.3, probability=1.0, seed=seed),
    ]


def test_one_hot_masks_read_background_where_rotated_in_from_outside():
    # A one-hot mask (to_categorical of a label map) came back with all-zero channels, no
    # class at all, in the corners a rotation or a shrinking brings in from outside; the
    # label map through the same draw reads background (0) there.
    import keras

    labels = np.zeros((2, 32, 32, 1), np.int32)
    labels[:, 8:24, 6:20] = 1
    labels[:, 12:20, 20:28] = 2
    images = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    one_hot = keras.utils.to_categorical(labels[..., 0], 3).astype(np.float32)
    for as_labels, as_one_hot in zip(_affine_and_elastic(7), _affine_and_elastic(7), strict=True):
        expected = as_labels({"images": images, "segmentation_masks": labels})
        got = as_one_hot({"images": images, "segmentation_masks": one_hot})
        expected_one_hot = keras.utils.to_categorical(
            np.asarray(expected["segmentation_masks"])[..., 0], 3
        )
        np.testing.assert_array_equal(np.asarray(got["segmentation_masks"]), expected_one_hot)


def test_multi_label_channels_read_no_structure_from_outside():
    # Overlapping region channels (BraTS-style sigmoid targets) are not one-hot: outside is
    # no region, 0 in every channel, as before.
    from kseg.augment import RandomAffine

    regions = np.zeros((1, 32, 32, 2), np.float32)
    regions[0, 4:28, 4:28, 0] = 1
    regions[0, 10:20, 10:20, 1] = 1
    layer = RandomAffine(2, rotation=40.0, scale=(0.7, 0.8), probability=1.0, seed=3)
    moved = np.asarray(
        layer({"images": regions[..., :1], "segmentation_masks": regions})["segmentation_masks"]
    )
    assert moved[0, 0, 0].tolist() == [0.0, 0.0] and moved[0, -1, -1].tolist() == [0.0, 0.0]
    assert moved[0, 16, 16].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "bounds", [(255, 0), (100, 100), (0, float("nan")), (np.uint8(255), np.uint8(0))]
)
def test_scale_intensity_refuses_swapped_or_empty_bounds(bounds):
    # scale_intensity(image, 255, 0) gave an all-zero image without a word.
    from kseg.data.pipeline import scale_intensity

    with pytest.raises(ValueError, match="minimum < maximum"):
        scale_intensity(np.array([0, 51, 255], np.uint8), *bounds)
    np.testing.assert_allclose(
        scale_intensity(np.array([0, 51, 255], np.uint8), 0, 255).numpy(), [0, 0.2, 1]
    )


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _first_batch(image: bytes, mask: bytes, num_classes: int):
    import tensorflow as tf

    from kseg.data.pipeline import segmentation_dataset

    examples = tf.data.Dataset.from_tensor_slices({"image": [image], "mask": [mask]})
    image, mask = next(iter(segmentation_dataset(examples, num_classes=num_classes)))
    return image.numpy()[0, ..., 0], mask.numpy()[0, ..., 0]


_LABELS = np.zeros((32, 32), np.uint8)
_LABELS[8:24, 8:20] = 1
_LABELS[20:28, 22:30] = 2
_GREY = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["BMP", "GIF"])
def test_encoded_bmp_and_gif_strings_decode_to_their_values(fmt):
    # Documented "encoded PNG/JPEG/BMP strings" failed inside tf.data: TensorFlow decodes
    # BMP and GIF only to 3 or 4 channels, not the 1 asked for.
    image, mask = _first_batch(
        _encoded(Image.fromarray(_GREY), fmt), _encoded(Image.fromarray(_LABELS), fmt), 3
    )
    np.testing.assert_array_equal(image, _GREY)
    np.testing.assert_array_equal(mask, _LABELS)


def test_encoded_jpeg_or_colour_mask_strings_are_refused_naming_the_key():
    import tensorflow as tf

    # A 0/255 mask as JPEG: the compression noise around the edges (1, 2, 3 ...) became
    # foreground under num_classes=1 (93 of 1024 pixels wrong), without a word.
    jpeg = _encoded(Image.fromarray((_LABELS > 0).astype(np.uint8) * 255), "JPEG", quality=75)
    png = _encoded(Image.fromarray(_GREY), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask\\?' is an encoded JPEG"):
        _first_batch(png, jpeg, 1)
    # A colour-palette label map: TensorFlow gave the luma of its colours as labels.
    palette = Image.fromarray(_LABELS, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask\\?' is an encoded colour"):
        _first_batch(png, _encoded(palette, "PNG"), 3)
    # The same labels in a grey PNG read as they are.
    np.testing.assert_array_equal(
        _first_batch(png, _encoded(Image.fromarray(_LABELS), "PNG"), 3)[1], _LABELS
    )


def test_augmented_model_weight_channel_does_not_make_masks_look_one_hot():
    # AugmentedModel moves a per-voxel weight map as an extra mask channel. Beside an
    # all-background label map, weights of 1 made the pair sum to 1 per voxel, like a
    # one-hot mask: where a rotation left the grid the label read 1, the structure.
    import keras

    from kseg.augment import AugmentedModel, RandomAffine

    inputs = keras.Input((32, 32, 1))
    model = AugmentedModel(
        keras.Model(inputs, inputs),
        RandomAffine(2, rotation=40.0, scale=(0.7, 0.8), probability=1.0, seed=0),
    )
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    y = np.zeros((2, 32, 32, 1), np.float32)
    y[1, 10:20, 10:20] = 1
    weight = np.full((2, 32, 32), 2.0, np.float32)
    _, moved_y, moved_weight = (np.asarray(t) for t in model.augment_batch(x, y, weight))
    outside = moved_weight == 0
    assert outside[:, 0, 0].all() and not outside[:, 16, 16].any()
    np.testing.assert_array_equal(moved_y[..., 0][outside], 0)
    np.testing.assert_array_equal(moved_weight[~outside], 2.0)
    assert moved_y[0].max() == 0 and moved_y[1, 16, 16, 0] == 1


def test_two_images_of_one_name_are_refused_not_paired_with_one_mask(tmp_path):
    # images/a.png beside images/a.tif (a PNG export next to its source) both paired with
    # masks/a.png: the radiograph was counted twice, or a different image got its mask.
    from etils import epath

    from kseg.errors import LayoutError
    from tfds_builders.xray.layout import find_records
    from tfds_builders.xray.xray_dataset_builder import Builder

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name in ("a.png", "a.tif", "b.png"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "images" / name)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "masks" / name)
    with pytest.raises(LayoutError, match=r"images/a\.tif: a second image named a, besides a\.png"):
        find_records(epath.Path(tmp_path), Builder.builder_configs["generic"])
    (tmp_path / "images" / "a.tif").unlink()
    records = find_records(epath.Path(tmp_path), Builder.builder_configs["generic"])
    assert [record.image_id for record in records] == ["a.png", "b.png"]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_float_masks_are_rounded_to_their_labels_not_truncated(num_classes):
    # A label map read as floats (nibabel's get_fdata of a scaled label NIfTI) holds
    # 0.99999994 for 1: the int cast truncated it to background.
    import tensorflow as tf

    from kseg.data.pipeline import segmentation_dataset

    labels = np.zeros((1, 8, 8), np.int32)
    labels[0, 2:6, 2:6] = 1
    labels[0, 6:, 6:] = 2
    stored = labels.astype(np.float32)
    stored[labels == 1] = np.nextafter(np.float32(1), np.float32(0))
    stored[labels == 2] = np.nextafter(np.float32(2), np.float32(0))
    examples = tf.data.Dataset.from_tensor_slices({"image": np.zeros((1, 8, 8)), "mask": stored})
    _, mask = next(iter(segmentation_dataset(examples, num_classes=num_classes)))
    expected = (labels[0] > 0) if num_classes == 1 else labels[0]
    np.testing.assert_array_equal(mask.numpy()[0, ..., 0], expected)


def test_label_tool_palette_without_black_reads_its_indices_when_index_0_dominates(tmp_path):
    # A label map whose display palette has no black (entry i = (i, 0, 255 - i), as the
    # xray phantom writes): index 0, the background of label tools, covers most pixels.
    structure = np.zeros((40, 48), np.uint8)
    structure[8:32, 10:26] = 1
    image = Image.fromarray(structure, "P")
    image.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    image.save(tmp_path / "label_map.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "label_map.png", LabelRule()), structure)


def test_window_refuses_a_negative_numpy_or_nan_width():
    # A float32 width from an array (np.float32(-400)) or a NaN slipped past the check of
    # Python floats: an inverted window, or an all-NaN image, without a word.
    from kseg.data.pipeline import segmentation_dataset, window

    ct = np.array([-1000, 40, 3000], np.int16)
    for center, width in ((np.float32(40), np.float32(-400)), (40.0, float("nan"))):
        with pytest.raises(ValueError, match="width"):
            window(ct, center, width)
    with pytest.raises(ValueError, match="window width must be > 0"):
        segmentation_dataset(None, window=(40.0, float("nan")))
    np.testing.assert_allclose(window(ct, np.float32(40), np.float32(400)).numpy(), [0, 0.5, 1])


def test_random_patches_round_float_labels_instead_of_truncating():
    # The same truncation in random_patches: a float label volume holding 0.99999994 for
    # label 1 (get_fdata of a scaled label NIfTI) had no foreground at all.
    import tensorflow as tf

    from kseg.data.patches import random_patches

    label = np.zeros((8, 8, 8), np.float32)
    label[2:6, 2:6, 2:6] = np.nextafter(np.float32(1), np.float32(0))
    volumes = tf.data.Dataset.from_tensors({"image": np.zeros_like(label), "label": label})
    patches = random_patches(volumes, (8, 8, 8), positive_fraction=1.0, patches_per_volume=1)
    _, patch_label = next(iter(patches))
    np.testing.assert_array_equal(patch_label.numpy()[..., 0], (label > 0.5).astype(np.int32))

import numpy as np
import pytest
from PIL import Image

from kseg.errors import MaskError, UnreadableFileError
from kseg.io import (
    CHAOS_MR_LABEL_RANGES,
    LossyMaskWarning,
    binarize,
    map_label_ranges,
    read_mask,
    read_mask_stack,
)


def _square_mask(value=255, dtype=np.uint8, shape=(32, 40)):
    mask = np.zeros(shape, dtype)
    mask[8:24, 10:30] = value
    return mask


def test_16_bit_png_keeps_its_values(tmp_path):
    stored = np.array([[0, 1, 300], [65535, 4096, 7]], np.uint16)
    Image.fromarray(stored).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as check:
        assert check.mode.startswith("I")  # really written as a 16-bit PNG
    mask = read_mask(tmp_path / "mask.png")
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, stored)


@pytest.mark.parametrize("suffix", ["png", "tif", "bmp"])
def test_lossless_8_bit_formats_keep_label_values(tmp_path, suffix):
    stored = np.array([[0, 63, 126], [189, 252, 0]], np.uint8)
    Image.fromarray(stored).save(tmp_path / f"mask.{suffix}")
    mask = read_mask(tmp_path / f"mask.{suffix}")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, stored)


def test_palette_bilevel_and_grey_rgb_masks(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), indices)

    Image.fromarray(_square_mask() > 0).convert("1").save(tmp_path / "bilevel.tif")
    np.testing.assert_array_equal(read_mask(tmp_path / "bilevel.tif"), _square_mask(value=1))

    grey = np.repeat(_square_mask()[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), _square_mask())


def test_colour_mask_is_refused(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskError, match="colour.png"):
        read_mask(tmp_path / "colour.png")


def test_noisy_jpeg_mask_is_thresholded_at_half_max_with_a_warning(tmp_path):
    truth = _square_mask(value=1)
    noise = np.random.default_rng(0).integers(-40, 41, truth.shape)
    noisy = np.clip(truth * 255 + noise, 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "liver.jpg", quality=60)
    stored = np.asarray(Image.open(tmp_path / "liver.jpg"))
    assert len(np.unique(stored)) > 2  # compression and noise really left grey levels

    with pytest.warns(LossyMaskWarning, match="liver.jpg"):
        mask = read_mask(tmp_path / "liver.jpg")
    np.testing.assert_array_equal(mask, (stored > stored.max() / 2).astype(np.uint8))
    np.testing.assert_array_equal(mask, truth)


def test_unreadable_and_multi_page_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(UnreadableFileError, match="broken.png"):
        read_mask(tmp_path / "broken.png")
    pages = [Image.fromarray(_square_mask()), Image.fromarray(_square_mask(128))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(MaskError, match="2 frames"):
        read_mask(tmp_path / "pages.tif")


def test_stack_keeps_order_and_names_the_odd_slice(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"slice{index}.png")
        Image.fromarray(np.full((5, 7), index * 10, np.uint8)).save(paths[-1])
    stack = read_mask_stack(list(reversed(paths)))
    assert stack.shape == (3, 5, 7)
    np.testing.assert_array_equal(stack[:, 0, 0], [20, 10, 0])

    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(MaskError, match="wide.png.*5x7"):
        read_mask_stack([*paths, tmp_path / "wide.png"])
    with pytest.raises(MaskError, match="slice0.png.*6x7"):
        read_mask_stack(paths, expected_shape=(6, 7))
    with pytest.raises(MaskError, match="3 mask files, expected 4"):
        read_mask_stack(paths, expected_shape=(4, 5, 7))
    assert read_mask_stack(paths, expected_shape=(3, 5, 7)).shape == (3, 5, 7)


def test_chaos_mr_grey_levels_map_to_organ_labels():
    stored = np.array(
        [
            [0, 63, 55, 70],  # liver, with drift to both range ends
            [126, 110, 135, 0],  # right kidney
            [189, 175, 200, 0],  # left kidney
            [252, 240, 255, 0],  # spleen
        ],
        np.uint8,
    )
    expected = np.array([[0, 1, 1, 1], [2, 2, 2, 0], [3, 3, 3, 0], [4, 4, 4, 0]], np.uint8)
    labels = map_label_ranges(stored, CHAOS_MR_LABEL_RANGES)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected)


def test_unknown_grey_level_is_an_error_listing_it():
    stored = np.array([[0, 63, 100, 100, 150]], np.uint8)
    with pytest.raises(MaskError, match=r"mask7.png.*100 \(2 px\), 150 \(1 px\)"):
        map_label_ranges(stored, CHAOS_MR_LABEL_RANGES, source="mask7.png")


def test_overlapping_ranges_are_refused():
    with pytest.raises(MaskError, match="overlap"):
        map_label_ranges(np.zeros(3), {1: (10, 20), 2: (20, 30)})


def test_binarize_splits_at_half_the_maximum():
    np.testing.assert_array_equal(binarize(np.array([0, 127, 128, 255])), [0, 0, 1, 1])
    np.testing.assert_array_equal(binarize(np.array([0, 1, 1])), [0, 1, 1])
    np.testing.assert_array_equal(binarize(np.zeros(4)), [0, 0, 0, 0])
    np.testing.assert_array_equal(binarize(np.array([0, 5, 9]), threshold=5), [0, 0, 1])


def test_real_lung_mask_binarizes_like_the_dataset_readme(shared_data):
    path = next(iter(sorted((shared_data / "cxr-lungs" / "masks").glob("*.png"))))
    with Image.open(path) as image:
        stored = np.asarray(image)
    mask = read_mask(path)
    np.testing.assert_array_equal(mask, stored)
    np.testing.assert_array_equal(binarize(mask), (stored > 127).astype(np.uint8))

"""Inputs a real user or archive produces, against independent references, for the training
data path: tf.data pipeline, augmentation, patches, splits, losses and metrics."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from kseg.data.pipeline import segmentation_dataset


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encoded_16_bit_png_keeps_its_stored_values_in_the_pipeline():
    # A 16-bit radiograph and its 16-bit 0/1 mask, as a user's tf.data of file bytes gives
    # them; tf.io.decode_image's default uint8 turned the mask into all 0.
    image = (np.arange(24 * 32).reshape(24, 32) * 53).astype(np.uint16)
    mask = np.zeros((24, 32), np.uint16)
    mask[5:15, 3:20] = 1
    eight_bit = np.array([[0, 1, 128, 255]] * 4, np.uint8)
    assert Image.open(io.BytesIO(_png_bytes(mask))).mode == "I;16"
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": [_png_bytes(image)], "mask": [_png_bytes(mask)]}
    )
    images, masks = next(iter(segmentation_dataset(examples, batch_size=1)))
    np.testing.assert_array_equal(images[0, ..., 0], image.astype(np.float32))
    np.testing.assert_array_equal(masks[0, ..., 0], mask.astype(np.float32))

    # 8-bit PNGs keep their 8-bit values (not rescaled to 16 bits)
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": [_png_bytes(eight_bit)], "mask": [_png_bytes((eight_bit > 0).astype(np.uint8))]}
    )
    images, masks = next(iter(segmentation_dataset(examples, batch_size=1)))
    np.testing.assert_array_equal(images[0, ..., 0], eight_bit.astype(np.float32))
    np.testing.assert_array_equal(masks[0, ..., 0], (eight_bit > 0).astype(np.float32))

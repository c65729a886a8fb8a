"""Session 25 findings in inference (uncertainty, TTA, ensembles, sliding window),
consistency training, augmentation, metrics, losses, patches and the data pipeline, each
against an independent reference (numpy formulas, hand-worked cases)."""

import numpy as np
import pytest

# --------------------------------------------------------------------------- uncertainty


def test_decompose_uncertainty_refuses_nan_samples_naming_the_count():
    from kseg.inference import decompose_uncertainty

    diverged = np.full((1, 2, 3, 1), 0.5)
    diverged[0, 0, :2, 0] = np.nan  # 2 NaN of 6 values in the second sample
    with pytest.raises(ValueError, match=r"sample 1 holds NaN in 2 of 6 values"):
        decompose_uncertainty([np.full((1, 2, 3, 1), 0.5), diverged])


def test_decompose_uncertainty_refuses_sigmoid_maps_without_their_channel_axis():
    from kseg.inference import decompose_uncertainty

    rng = np.random.default_rng(0)
    # three MC dropout samples of one sigmoid slice, squeezed to (H, W) = (4, 5)
    samples = [rng.uniform(0.05, 0.95, (4, 5)) for _ in range(3)]
    with pytest.raises(ValueError, match=r"read as 5 class probabilities per voxel"):
        decompose_uncertainty(samples)  # was a (4,) map: each row's 5 values as a softmax
    # with the channel axis: the binary entropy of the mean, per pixel (numpy reference)
    mean = np.mean(samples, axis=0)
    expected = -(mean * np.log(mean) + (1 - mean) * np.log(1 - mean))
    total = decompose_uncertainty([sample[..., None] for sample in samples]).total
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_tta_uncertainty_refuses_a_predictor_that_outputs_nan():
    from kseg.inference import tta_uncertainty

    def diverged(batch):
        return np.full(batch.shape, np.nan, np.float32)

    with pytest.raises(ValueError, match=r"predictor's output: sample 0 holds NaN in 16 of 16"):
        tta_uncertainty(diverged, np.zeros((1, 4, 4, 1), np.float32))


def test_tta_uncertainty_names_nan_in_its_input():
    from kseg.inference import tta_uncertainty

    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"x holds 1 NaN or infinite values of 16"):
        tta_uncertainty(lambda batch: np.full(batch.shape, 0.5, np.float32), x)


def test_mc_dropout_and_tta_uncertainty_refuse_one_image_without_its_batch_axis():
    import keras

    from kseg.inference import mc_dropout, tta_uncertainty

    net = keras.Sequential(
        [keras.Input((None, None, 1)), keras.layers.Dropout(0.5),
         keras.layers.Conv2D(1, 1, activation="sigmoid")]
    )  # fmt: skip
    image = np.random.default_rng(0).random((8, 8, 1)).astype(np.float32)
    # Keras added a trailing axis: 8 images of 8 x 1 pixels, maps of shape (8, 8, 1, 1)
    for run in (lambda x: tta_uncertainty(net, x), lambda x: mc_dropout(net, x, samples=2)):
        with pytest.raises(ValueError, match=r"x has shape \(8, 8, 1\).*x\[None\]"):
            run(image)
        assert run(image[None]).mean.shape == (1, 8, 8, 1)


def test_tta_and_ensemble_wrappers_refuse_one_image_without_its_batch_axis():
    import keras

    from kseg.inference import ensemble_predictor, flip_tta

    net = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 1)])
    image = np.zeros((8, 6, 1), np.float32)
    for wrapper in (flip_tta(net), ensemble_predictor([net, net])):
        with pytest.raises(ValueError, match=r"batch has shape \(8, 6, 1\).*batch\[None\]"):
            wrapper(image)  # was an (8, 6, 1, 1) map: 8 images of 6 x 1 pixels
        assert wrapper(image[None]).shape == (1, 8, 6, 1)


def test_heteroscedastic_maps_refuse_non_finite_outputs():
    from kseg.inference import aleatoric_variance, heteroscedastic_uncertainty

    outputs = np.zeros((1, 1, 2, 2))
    outputs[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"outputs holds 1 NaN or infinite values of 4"):
        heteroscedastic_uncertainty(outputs)
    with pytest.raises(ValueError, match=r"outputs holds 1 NaN or infinite values of 4"):
        aleatoric_variance(outputs)


def test_uncertainty_summary_refuses_nan_maps():
    from kseg.inference import uncertainty_summary

    maps = {"entropy": np.array([[0.1, np.nan, 0.3]])}
    with pytest.raises(ValueError, match=r"maps\['entropy'\] holds NaN in 1 of 3"):
        uncertainty_summary(maps, np.ones((1, 3), bool))


def test_majority_vote_and_fitted_weights_name_the_diverged_member():
    from kseg.inference import fit_ensemble_weights, majority_vote

    good = np.array([[0.9], [0.2], [0.6]])
    diverged = np.array([[0.8], [np.nan], [np.nan]])  # fold model 1 output NaN twice
    with pytest.raises(ValueError, match=r"member 1 holds NaN in 2 of 3 values"):
        majority_vote([good, diverged])
    with pytest.raises(ValueError, match=r"member_probabilities\[0\]: member 1 holds NaN"):
        fit_ensemble_weights([[good, diverged]], [np.array([1, 0, 1])], progress=False)


def test_majority_vote_refuses_sigmoid_maps_without_their_channel_axis():
    from kseg.inference import majority_vote

    rng = np.random.default_rng(1)
    members = [rng.uniform(0.05, 0.95, (4, 5)) for _ in range(3)]  # (H, W) sigmoid slices
    with pytest.raises(ValueError, match=r"read as 5 softmax channels"):
        majority_vote(members)  # was an (4,) argmax over each row
    votes = sum((member >= 0.5).astype(int) for member in members)
    np.testing.assert_array_equal(
        majority_vote([member[..., None] for member in members]), (votes >= 2).astype(int)
    )
    # a float16 softmax sums to 1 only within a few of its epsilons per channel: accepted
    half = np.full((3, 6), 0.1675, np.float16)  # sums 1.0049: float16 rounding, 6 x 9.8e-4
    np.testing.assert_array_equal(majority_vote([half, half]), [0, 0, 0])


# --------------------------------------------------------------------------- augmentation


def test_augment_batch_is_one_function_for_augmented_model_and_fixmatch():
    import keras

    from kseg.augment import AugmentedModel, augment_batch
    from kseg.augment.random_axis_flip import RandomAxisFlip
    from kseg.training.consistency import FixMatch

    def flip():  # always mirrors the first spatial axis: a draw with a known result
        return RandomAxisFlip(axes=(0,), probability=1.0)

    net = keras.Sequential([keras.Input((3, 2, 1)), keras.layers.Conv2D(1, 1)])
    x = np.arange(6, dtype="float32").reshape(1, 3, 2, 1)
    y = (x >= 4).astype("float32")
    weight = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], "float32")  # (B, H, W)
    expected = (x[:, ::-1], y[:, ::-1], weight[:, ::-1])  # the hand-flipped batch
    for outputs in (
        augment_batch(flip(), x, y, weight),
        AugmentedModel(net, flip()).augment_batch(x, y, weight),
        FixMatch(net, weak=flip())._weak_labeled_view(x, y, weight),
    ):
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)


# --------------------------------------------------------------------------- calibration


def test_top_label_calibration_refuses_one_hot_labels_of_class_probabilities():
    from kseg.metrics import expected_calibration_error, reliability_diagram

    probabilities = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    one_hot = np.array([[1, 0, 0], [0, 0, 1]])  # keras.utils.to_categorical([0, 2], 3)
    # Guo et al. by hand: confidences 0.7 (right) and 0.6 (wrong), one bin: |1.3 - 1| / 2
    assert expected_calibration_error(
        probabilities, one_hot.argmax(-1), bins=1, mode="top_label"
    ) == pytest.approx(0.15)
    # read as a 0/1 mask the six channels were six binary voxels (p >= 0.5): confidences
    # 0.7 0.8 0.9 0.7 0.6 0.9, four right, ECE |4.6 - 4| / 6 = 0.1, returned silently
    for function in (expected_calibration_error, reliability_diagram):
        with pytest.raises(ValueError, match=r"one-hot targets of 3 class probabilities"):
            function(probabilities, one_hot, mode="top_label")


# --------------------------------------------------------------------------- sliding window


def test_sliding_window_names_a_bad_roi_size_through_tta_and_ensemble_wrappers():
    import kseg
    from kseg.inference import ensemble_predictor, flip_tta, sliding_window
    from kseg.inference.ensemble import ensemble_model

    unet = kseg.models.build("unet", input_shape=(None, None, 1), num_classes=1, depth=2,
                             base_filters=2)  # fmt: skip
    image = np.zeros((40, 40, 1), np.float32)
    # the model itself: roi_size 30 is named (its windows must be multiples of 2**2 = 4);
    # wrapped, the U-Net's own message said to pad or crop a (1, 30, 30, 1) input instead
    for predictor, name in (
        (unet, "unet"),
        (flip_tta(unet), r"flip_tta\(unet\)"),
        (ensemble_predictor([unet, unet]), r"ensemble_predictor\(unet, unet\)"),
        (ensemble_model([unet], mirror_axes=(0,)), "ensemble"),
    ):
        with pytest.raises(ValueError, match=rf"roi_size \(30, 30\): {name} needs window sizes "
                                             "divisible by 4"):  # fmt: skip
            sliding_window(predictor, image, 30, progress=False)


# --------------------------------------------------------------------------- data pipeline


def test_cache_files_of_two_lambda_windows_are_not_shared(tmp_path):
    import tensorflow as tf

    from kseg.data.pipeline import scale_intensity, segmentation_dataset

    radiograph = np.full((2, 4, 4), 100, np.uint16)  # a 12-bit radiograph's value 100
    slices = tf.data.Dataset.from_tensor_slices(
        {"image": radiograph, "mask": np.zeros((2, 4, 4), np.uint8)}
    )
    windows = {  # a notebook's window edited from 8 to 12 bits, the same cache prefix
        255: lambda image: scale_intensity(image, 0, 255),
        4095: lambda image: scale_intensity(image, 0, 4095),
    }
    for maximum, window in windows.items():
        batches = segmentation_dataset(
            slices, window=window, batch_size=2, cache=str(tmp_path / "train")
        )
        images = np.concatenate([image for image, _ in batches.as_numpy_iterator()])
        # the second run replayed the first run's cache: 100 / 255 instead of 100 / 4095
        np.testing.assert_allclose(images, 100 / maximum, rtol=1e-6)


def test_sliding_window_names_a_volume_without_its_channel_axis_or_a_2d_model():
    import keras

    from kseg.inference import sliding_window

    unet_2d = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 1)])
    unet_3d = keras.Sequential([keras.Input((None, None, None, 1)), keras.layers.Conv3D(1, 1)])
    # was an AlignmentError about the predictor after the first window
    with pytest.raises(ValueError, match=r"volume has shape \(10, 12\).*volume\[\.\.\., None\]"):
        sliding_window(unet_2d, np.zeros((10, 12), np.float32), 8, progress=False)
    with pytest.raises(ValueError, match=r"volume has shape \(4, 10, 12\).*volume\[\.\.\., None\]"):
        sliding_window(unet_3d, np.zeros((4, 10, 12), np.float32), 4, progress=False)
    # was Keras' "Cannot take the length of shape with unknown rank"
    with pytest.raises(ValueError, match=r"predict_slices"):
        sliding_window(unet_2d, np.zeros((4, 10, 12, 1), np.float32), (1, 8, 8), progress=False)
    ct = np.random.default_rng(0).random((4, 10, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(
        sliding_window(unet_3d, ct, 4, progress=False), unet_3d.predict_on_batch(ct[None])[0],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip

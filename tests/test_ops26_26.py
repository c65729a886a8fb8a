"""Session 26 findings in losses, metrics, augmentation, patches and inference, each against
an independent reference (numpy / scipy formulas, hand-worked cases)."""

import numpy as np
import pytest

# --------------------------------------------------------------------------- patches


def test_random_patches_takes_numpy_integers():
    import tensorflow as tf

    from kseg.data.patches import random_patches

    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    volumes = tf.data.Dataset.from_tensors({"image": label.astype(np.float32), "label": label})
    count = np.int64(np.prod([2, 1]))  # a count computed with numpy
    patches = list(
        random_patches(volumes, np.array([4, 4, 4]), patches_per_volume=count, seed=np.int64(0))
    )
    assert len(patches) == 2
    assert patches[0][0].shape == (4, 4, 4, 1)


def test_random_patches_refuses_a_fractional_patch_size():
    import tensorflow as tf

    from kseg.data.patches import random_patches

    volumes = tf.data.Dataset.from_tensors((np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8))))
    size = np.array([8, 8, 8]) * 0.75 + [0, 0, 0.5]  # (6, 6, 6.5): was cut to (6, 6, 6)
    with pytest.raises(ValueError, match=r"patch_size must be three whole numbers"):
        random_patches(volumes, size)
    patches = random_patches(volumes, np.array([8, 8, 8]) * 0.75, patches_per_volume=1, seed=0)
    assert next(iter(patches))[0].shape == (6, 6, 6, 1)


# --------------------------------------------------------------------------- uncertainty


def _lateral_predictor(batch):
    """A stand-in for an LCTSC model with classes (background, lung_left, lung_right):
    it calls the image-right half (the patient's left, radiological view) lung_left and the
    image-left half lung_right, whatever the intensities, as a model trained on upright
    slices does."""
    n, height, width, _ = batch.shape
    probabilities = np.zeros((n, height, width, 3), np.float32)
    probabilities[:, :, : width // 2, 2] = 1.0
    probabilities[:, :, width // 2 :, 1] = 1.0
    return probabilities


def test_tta_uncertainty_keeps_left_and_right_classes_on_their_side():
    from kseg.inference import tta_uncertainty

    x = np.zeros((1, 4, 4, 1), np.float32)
    names = ["background", "lung_left", "lung_right"]
    result = tta_uncertainty(_lateral_predictor, x, class_names=names)
    # every allowed transform keeps the left-right axis: the model's own answer, certain
    np.testing.assert_allclose(result.mean, _lateral_predictor(x))
    np.testing.assert_allclose(result.entropy, 0.0, atol=1e-6)
    # only the top-bottom flip is left (4 quarter turns and the left-right flip mirror or
    # turn the left-right axis): identity and one flip
    assert result.samples == 2
    with pytest.raises(ValueError, match=r"left-right axis 1.*lung_left"):
        tta_uncertainty(_lateral_predictor, x, class_names=names, flip_axes=[0, 1])
    # without class names nothing is known of the labels: every flip and turn, as before
    assert tta_uncertainty(_lateral_predictor, x).samples == 8


def test_flip_tta_keeps_left_and_right_classes_on_their_side():
    from kseg.inference import flip_tta

    x = np.zeros((1, 4, 6, 1), np.float32)
    names = ("background", "lung_left", "lung_right")
    # only the top-bottom flip: the model's own answer
    np.testing.assert_array_equal(
        flip_tta(_lateral_predictor, class_names=names)(x), _lateral_predictor(x)
    )
    with pytest.raises(ValueError, match=r"left-right axis 1.*lung_right"):
        flip_tta(_lateral_predictor, axes=(1,), class_names=names)(x)
    # without class names every axis is mirrored, as before: each lung half left, half right
    mean = flip_tta(_lateral_predictor)(x)
    np.testing.assert_allclose(mean[..., 1:], 0.5)


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize(
    "loss_name", ["DiceLoss", "DiceCELoss", "IoULoss", "TverskyLoss", "FocalLoss", "TopKLoss"]
)
def test_losses_refuse_a_map_without_its_channel_axis(loss_name):
    from kseg import losses

    rng = np.random.default_rng(0)
    mask = (rng.uniform(size=(2, 6, 7)) > 0.5).astype(np.float32)  # (B, H, W) slices
    probabilities = rng.uniform(0.05, 0.95, (2, 6, 7)).astype(np.float32)
    loss = getattr(losses, loss_name)()
    with pytest.raises(ValueError, match=r"\(2, 6, 7\).*no channel axis.*\[\.\.\., None\]"):
        loss(mask, probabilities)  # was read as 7 classes of a 1D signal of length 6
    # with the channel axis the loss is the binary one
    float(loss(mask[..., None], probabilities[..., None]))


def test_dice_ce_refuses_targets_of_several_classes_per_voxel():
    """A 3D binary volume without its channel axis, (B, D, H, W), has the rank of a 2D
    multi-class map: categorical cross-entropy read W as classes (DiceCE 4.01, not 1.45)."""
    from kseg import losses

    rng = np.random.default_rng(1)
    mask = (rng.uniform(size=(1, 3, 6, 7)) > 0.5).astype(np.float32)
    probabilities = rng.uniform(0.05, 0.95, (1, 3, 6, 7)).astype(np.float32)
    for loss in (losses.DiceCELoss(), losses.TopKLoss(), losses.FocalLoss()):
        with pytest.raises(ValueError, match=r"voxels of y_true hold several classes.*None\]"):
            loss(mask, probabilities)
    # a one-hot target is still read as classes: soft labels summing to 1, and all-zero
    # voxels (no class), which a categorical cross-entropy leaves out
    one_hot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (1, 4, 5))]
    soft = 0.9 * one_hot + 0.1 / 3
    soft[0, 0] = 0.0  # the first row holds no class
    softmax = rng.dirichlet(np.ones(3), (1, 4, 5)).astype(np.float32)
    expected = -np.mean(np.sum(soft * np.log(softmax), axis=-1))
    value = float(losses.DiceCELoss(lambda_dice=0.0)(soft, softmax))
    assert value == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_name", ["DiceLoss", "IoULoss", "TverskyLoss", "GeneralizedDiceLoss"])
def test_overlap_losses_of_nan_predictions_are_nan_not_perfect(loss_name):
    """A diverged model's NaN output scored Dice 1 (loss 0.0): 'NaN > 0' is false, and
    that branch meant 'empty against empty'. val_loss 0 made checkpoints keep the diverged
    model and TerminateOnNaN never fired; MONAI's Dice of NaN is NaN."""
    import tensorflow as tf

    from kseg import losses

    target = np.zeros((2, 4, 4, 1), np.float32)
    target[:, 1:3, 1:3] = 1
    diverged = np.full((2, 4, 4, 1), np.nan, np.float32)
    loss = getattr(losses, loss_name)(reduction="none")
    assert np.isnan(np.asarray(loss(target, diverged))).all()
    traced = tf.function(lambda t, p: loss(t, p))  # as inside fit
    assert np.isnan(np.asarray(traced(target, diverged))).all()
    # empty against empty is still agreement (1 - 1), for every smooth
    empty = np.zeros((1, 4, 4, 1), np.float32)
    for smooth in (0.0, 1e-50, 1.0):
        value = getattr(losses, loss_name)(smooth=smooth)(empty, empty)
        assert float(value) == 0.0


def test_nan_in_a_binary_target_is_outside_the_label_set():
    """A mask with NaN voxels (resampled with a NaN fill, a float label file with NaN
    background) made DiceLoss 0.0 and DiceScore 1.0: NaN < 0 and NaN > 1 are both false, so
    the label-set check let it through, and the NaN sums read as empty against empty."""
    import tensorflow as tf

    from kseg import losses, metrics

    target = np.zeros((1, 4, 4, 1), np.float32)
    target[0, 1:3, 1:3] = 1
    target[0, 0, 0] = np.nan
    prediction = np.full((1, 4, 4, 1), 0.7, np.float32)
    with pytest.raises(ValueError, match=r"1 voxels outside the label set.*nan"):
        losses.DiceLoss()(target, prediction)
    with pytest.raises(ValueError, match=r"1 voxels outside the label set.*nan"):
        metrics.DiceScore().update_state(target, prediction)
    metric = metrics.DiceScore()
    tf.function(metric.update_state)(target, prediction)  # traced, as inside fit
    assert np.isnan(float(metric.result()))  # was 1.0
    one_hot = np.concatenate([1 - target, target], axis=-1)
    with pytest.raises(ValueError, match=r"outside the label set"):
        losses.DiceLoss()(one_hot, np.full((1, 4, 4, 2), 0.5, np.float32))


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape", [(2, 2, 9, 8, 1), (2, 1, 5, 6, 1), (1, 2, 3, 1)])
def test_blur_of_a_thin_patch_matches_scipy(shape):
    """A 2-slice (or 1-slice) patch is shorter than the kernel's half-width (3 voxels for
    sigma 0.8): symmetric padding failed in TensorFlow; scipy reflects again and again."""
    from scipy import ndimage

    from kseg.augment import RandomGaussianBlur

    images = np.random.default_rng(2).uniform(size=shape).astype(np.float32)
    layer = RandomGaussianBlur(1.0, sigma=(0.8, 0.8), spatial_dims=len(shape) - 2)
    out = np.asarray(layer(images))
    offsets = np.arange(-layer.radius, layer.radius + 1)
    weights = np.exp(-0.5 * (offsets / 0.8) ** 2)
    weights /= weights.sum()
    expected = images.astype(np.float64)
    for axis in range(1, len(shape) - 1):
        expected = ndimage.correlate1d(expected, weights, axis=axis, mode="reflect")
    np.testing.assert_allclose(out, expected, atol=1e-5)


# --------------------------------------------------------------------------- metrics


def test_per_class_refuses_label_maps_that_are_not_whole_numbers():
    """nibabel's get_fdata of a label file stored with a float scale gives 0.99999994 for
    label 1; == 1 matched no voxel, so every class scored Dice 0 against a perfect
    prediction (a probability map given as the prediction scored the same)."""
    from kseg.metrics import dice, per_class

    reference = np.zeros((4, 6, 6))
    reference[1:3, 2:4, 2:4] = 1
    reference[0, 0, :2] = 2
    scaled = reference * np.float32(0.99999994)
    with pytest.raises(ValueError, match=r"y_true_labels must be a label map of integers"):
        per_class(dice, scaled, reference, labels=[1, 2])
    with pytest.raises(ValueError, match=r"y_pred_labels .*0\.9"):
        per_class(dice, reference, reference * 0.9, labels=[1, 2])
    # whole floats (a label map read as float64) are labels
    assert per_class(dice, np.rint(scaled), reference, labels=[1, 2]) == {1: 1.0, 2: 1.0}


def test_dice_score_takes_one_weight_per_sample_as_b_by_1():
    """Per-example weights of shape (1,), batched by tf.data to (B, 1), failed in
    TensorFlow ("Incompatible shapes: [2,4,4,1] vs. [2,1]"); Keras' own metrics and kseg's
    losses read them as one weight per sample."""
    from kseg.metrics import DiceScore, IoUScore

    rng = np.random.default_rng(3)
    target = (rng.uniform(size=(2, 4, 4, 1)) > 0.5).astype(np.float32)
    probability = rng.uniform(size=(2, 4, 4, 1)).astype(np.float32)
    weights = np.array([[2.0], [0.5]])
    w = weights[:, :, None, None]
    predicted = probability >= 0.5
    tp = np.sum(w * (target * predicted))
    expected = 2 * tp / (np.sum(w * target) + np.sum(w * predicted))
    metric = DiceScore()
    metric.update_state(target, probability, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    metric = IoUScore()
    metric.update_state(target, probability, sample_weight=weights)
    union = np.sum(w * target) + np.sum(w * predicted) - tp
    assert float(metric.result()) == pytest.approx(tp / union, rel=1e-6)
    with pytest.raises(ValueError, match=r"sample_weight of shape \(2, 3\) is neither"):
        DiceScore().update_state(target, probability, sample_weight=np.ones((2, 3)))


# --------------------------------------------------------------------------- numpy scalars


def test_numeric_arguments_take_numpy_scalars():
    """A grid over numpy values (np.arange(0, 3) for the focal gamma, labels.max() + 1 for
    the class count, float32 read from an array) was refused as 'must be a number'."""
    import json

    from kseg import losses, metrics
    from kseg.augment import RandomAffine, RandomElasticDeformation, RandomGaussianNoise

    target = np.array([[[[1.0], [0.0]], [[1.0], [0.0]]]], np.float32)  # (1, 2, 2, 1)
    probability = np.array([[[[0.8], [0.3]], [[0.6], [0.1]]]], np.float32)
    p, y = probability.ravel().astype(np.float64), target.ravel()
    for gamma in np.arange(0, 3):
        loss = losses.FocalLoss(gamma=gamma, alpha=np.float32(0.25))
        # Lin et al., binary: foreground weight alpha, background 1 - alpha
        expected = -np.mean(
            0.25 * y * (1 - p) ** gamma * np.log(p)
            + 0.75 * (1 - y) * p**gamma * np.log(1 - p)
        )
        assert float(loss(target, probability)) == pytest.approx(expected, rel=1e-5)
        json.dumps(loss.get_config())  # a .keras file's compile config is JSON
    for loss in (
        losses.TopKLoss(k=np.int64(50)),
        losses.TverskyLoss(alpha=np.float32(0.3), beta=np.float32(0.7)),
        losses.DiceCELoss(smooth=np.float32(1e-5), lambda_ce=np.int64(1)),
        losses.ComboLoss(alpha=np.float32(0.5), beta=np.float32(0.5)),
        losses.HeteroscedasticCrossEntropy(num_samples=np.int64(2), seed=np.int64(0)),
    ):
        json.dumps(loss.get_config())
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    metric = metrics.DiceScore(num_classes=labels.max() + 1, threshold=np.float32(0.5))
    json.dumps(metric.get_config())
    for layer in (
        RandomGaussianNoise(probability=np.float32(0.5), stddev=np.float32(0.05)),
        RandomAffine(rotation=np.int64(15), translation=np.float32(0.1)),
        RandomElasticDeformation(control_points=np.int64(4), seed=np.int64(7)),
    ):
        json.dumps(layer.get_config())

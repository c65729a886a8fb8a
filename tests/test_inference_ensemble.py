"""Ensemble averaging against numpy, including a saved checkpoint."""

import keras
import numpy as np
import pytest

from kseg.inference import ensemble_predictor


def scaling_model(factor):
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(1, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 1, 1), factor, dtype=np.float32)])
    return model


def test_mean_of_models_and_a_checkpoint(tmp_path):
    path = tmp_path / "member.keras"
    scaling_model(5.0).save(path)
    batch = np.random.default_rng(5).normal(size=(3, 4, 4, 1)).astype(np.float32)
    output = ensemble_predictor([scaling_model(1.0), scaling_model(3.0), path])(batch)
    np.testing.assert_allclose(output, batch * (1 + 3 + 5) / 3, rtol=1e-6)


def test_weights_are_normalised():
    batch = np.ones((1, 4, 4, 1), dtype=np.float32)
    output = ensemble_predictor([lambda b: b * 2, lambda b: b * 10], weights=[3, 1])(batch)
    np.testing.assert_allclose(output, np.full_like(batch, (3 * 2 + 10) / 4))


def test_rejects_members_with_different_outputs_and_bad_weights():
    mismatched = ensemble_predictor([lambda b: b, lambda b: np.concatenate([b, b], axis=-1)])
    with pytest.raises(ValueError, match="member 1"):
        mismatched(np.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="weights"):
        ensemble_predictor([np.square, np.square], weights=[1.0])


# ------------------------------------------------------------------------- per-class weights


def test_per_class_weights_weight_each_channel_separately():
    rng = np.random.default_rng(21)
    first = rng.uniform(size=(2, 3, 3, 2)).astype(np.float32)
    second = rng.uniform(size=(2, 3, 3, 2)).astype(np.float32)
    members = [lambda b: first, lambda b: second]
    batch = np.zeros((2, 3, 3, 1), dtype=np.float32)

    split = ensemble_predictor(members, weights=[[1, 0], [0, 1]])(batch)
    np.testing.assert_array_equal(split[..., 0], first[..., 0])
    np.testing.assert_array_equal(split[..., 1], second[..., 1])

    mixed = ensemble_predictor(members, weights=[[3, 1], [1, 1]])(batch)
    np.testing.assert_allclose(mixed[..., 0], (3 * first[..., 0] + second[..., 0]) / 4, rtol=1e-6)
    np.testing.assert_allclose(mixed[..., 1], (first[..., 1] + second[..., 1]) / 2, rtol=1e-6)

    with pytest.raises(ValueError, match="weights hold 3 per-class columns"):
        ensemble_predictor(members, weights=np.ones((2, 3)))(batch)
    for bad in ([[1, 0], [0, 0]], [[1, -1], [1, 2]], np.ones((3, 2)), [[np.nan, 1], [1, 1]]):
        with pytest.raises(ValueError, match="weights must be"):
            ensemble_predictor(members, weights=bad)


# ----------------------------------------------------------------------------- majority vote


def test_majority_vote_by_hand():
    from kseg.inference import majority_vote

    # three softmax members, four voxels
    members = np.array(
        [
            [[0.1, 0.8, 0.1], [0.45, 0.44, 0.11], [0.2, 0.5, 0.3], [0.4, 0.3, 0.3]],
            [[0.2, 0.5, 0.3], [0.05, 0.9, 0.05], [0.1, 0.2, 0.7], [0.4, 0.3, 0.3]],
            [[0.0, 0.0, 1.0], [0.3, 0.2, 0.5], [0.0, 0.1, 0.9], [0.4, 0.3, 0.3]],
        ]
    )
    # voxel 0: votes 1, 1, 2 -> 1, although the summed probability favours 2 (1.4 vs 1.3)
    # voxel 1: votes 0, 1, 2, a three-way tie -> the highest summed probability: 1 (1.54
    # against 0.8 for label 0 and 0.66 for label 2)
    # voxel 2: votes 1, 2, 2 -> 2
    # voxel 3: all vote 0
    np.testing.assert_array_equal(majority_vote(members), [1, 1, 2, 0])
    np.testing.assert_array_equal(majority_vote(list(members)), [1, 1, 2, 0])


def test_majority_vote_of_two_sigmoid_members_breaks_ties_by_mean_probability():
    from kseg.inference import majority_vote

    first = np.array([[0.9], [0.7], [0.8], [0.2], [0.75]])
    second = np.array([[0.3], [0.1], [0.9], [0.1], [0.25]])
    # disagreements: voxel 0 mean 0.6 -> 1, voxel 1 mean 0.4 -> 0; voxel 4 mean exactly 0.5:
    # both labels have mean probability 0.5, so the lowest label, 0
    np.testing.assert_array_equal(majority_vote([first, second]), [1, 0, 1, 0, 0])


def test_majority_vote_rejects_bad_members():
    from kseg.inference import majority_vote

    with pytest.raises(ValueError, match="member_probabilities must hold at least one"):
        majority_vote([])
    with pytest.raises(ValueError, match="equally shaped"):
        majority_vote([np.zeros((2, 1)), np.zeros((3, 1))])
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        majority_vote([np.full((2, 1), 2.0)])


# ---------------------------------------------------------------------------- fitted weights


def numpy_dice(reference, prediction):
    overlap = np.logical_and(reference, prediction).sum()
    size = reference.sum() + prediction.sum()
    return 1.0 if size == 0 else 2 * overlap / size


def test_fitted_weights_go_to_the_perfect_member_not_the_noise():
    from kseg.inference import fit_ensemble_weights

    rng = np.random.default_rng(22)
    references = [(rng.uniform(size=(6, 6)) < 0.4).astype(np.int64) for _ in range(3)]
    cases = [
        [(0.1 + 0.8 * reference)[..., None], rng.uniform(size=(6, 6, 1))]
        for reference in references
    ]
    fitted = fit_ensemble_weights(cases, references, step=0.1)
    assert fitted.weights.shape == (2,)
    assert (fitted.weights >= 0).all() and fitted.weights.sum() == pytest.approx(1.0)
    assert fitted.weights[0] >= 0.9
    assert fitted.dice == pytest.approx(1.0)
    noise_dice = np.mean(
        [numpy_dice(r, c[1][..., 0] >= 0.5) for r, c in zip(references, cases, strict=True)]
    )
    np.testing.assert_allclose(fitted.member_dice, [1.0, noise_dice])


def test_fitted_weights_can_beat_every_member():
    from kseg.inference import fit_ensemble_weights

    # member A hesitates wrongly on voxels 0-1 (0.4 on foreground), member B on voxels 4-5
    # (0.6 on background); both are confident and right elsewhere, so only a mix of the two
    # is right everywhere. A third member is confidently wrong everywhere.
    reference = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    first = np.where(reference == 1, 0.95, 0.05)
    second = first.copy()
    first[[0, 1]] = 0.4
    second[[4, 5]] = 0.6
    wrong = 1.0 - reference
    members = np.stack([first, second, wrong])[..., None]
    fitted = fit_ensemble_weights([members], [reference], step=0.05)

    assert fitted.dice == pytest.approx(1.0)
    assert fitted.weights[0] > 0 and fitted.weights[1] > 0
    assert fitted.weights.sum() == pytest.approx(1.0) and (fitted.weights >= 0).all()
    combined = np.tensordot(fitted.weights, members[..., 0], axes=1)
    assert numpy_dice(reference, combined >= 0.5) == pytest.approx(1.0)
    expected_members = [numpy_dice(reference, member[..., 0] >= 0.5) for member in members]
    np.testing.assert_allclose(fitted.member_dice, expected_members)
    assert fitted.member_dice.max() < 1.0


def test_fitted_weights_with_softmax_members_average_the_foreground_labels():
    from kseg.inference import fit_ensemble_weights

    reference = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    perfect = np.eye(3)[reference] * 0.7 + 0.1
    shifted = np.eye(3)[(reference + 1) % 3] * 0.7 + 0.1
    fitted = fit_ensemble_weights([[shifted, perfect]], [reference], step=0.25)
    np.testing.assert_allclose(fitted.weights, [0.0, 1.0])
    assert fitted.dice == pytest.approx(1.0)
    # labels=[2] scores class 2 alone; the shifted member predicts 2 where the truth is 1
    only_two = fit_ensemble_weights([[shifted, perfect]], [reference], labels=[2], step=0.25)
    shifted_two = numpy_dice(reference == 2, (reference + 1) % 3 == 2)
    np.testing.assert_allclose(only_two.member_dice, [shifted_two, 1.0])


def test_fit_ensemble_weights_names_the_bad_argument():
    from kseg.inference import fit_ensemble_weights

    members = [np.full((4, 1), 0.6), np.full((4, 1), 0.3)]
    reference = np.ones(4, dtype=int)
    with pytest.raises(ValueError, match="member_probabilities \\(2 cases\\) and references"):
        fit_ensemble_weights([members, members], [reference])
    with pytest.raises(ValueError, match="references\\[0\\] has shape"):
        fit_ensemble_weights([members], [np.ones(5, dtype=int)])
    with pytest.raises(ValueError, match="member_probabilities\\[1\\] holds 1 members"):
        fit_ensemble_weights([members, members[:1]], [reference, reference])
    with pytest.raises(ValueError, match="member_probabilities\\[0\\] must hold probabilities"):
        fit_ensemble_weights([[np.full((4, 1), 1.5)]], [reference])
    with pytest.raises(ValueError, match="labels"):
        fit_ensemble_weights([members], [reference], labels=[2])
    with pytest.raises(ValueError, match="step"):
        fit_ensemble_weights([members], [reference], step=0.3)
    with pytest.raises(ValueError, match="step"):
        fit_ensemble_weights([members], [reference], step=0)
    with pytest.raises(ValueError, match="max_grid_points"):
        fit_ensemble_weights([members * 4], [reference], step=0.01, max_grid_points=1000)
    with pytest.raises(ValueError, match="references must be"):
        fit_ensemble_weights([members], "labels.nii")


def _brute_force_fit(cases, references, labels, step):
    """The fit's definition, one grid point at a time: the best mean hard Dice, ties by the
    mean soft Dice, then by the first point (stars-and-bars order)."""
    import itertools

    members = len(cases[0])
    divisions = round(1 / step)
    grid = []
    for bars in itertools.combinations(range(divisions + members - 1), members - 1):
        edges = (-1, *bars, divisions + members - 1)
        grid.append([(edges[i + 1] - edges[i] - 1) / divisions for i in range(members)])
    best = None
    for weights in grid:
        hard, soft = [], []
        for case, reference in zip(cases, references, strict=True):
            combined = sum(np.float32(w) * np.asarray(m, np.float32)
                           for w, m in zip(weights, case, strict=True))  # fmt: skip
            if combined.shape[-1] == 1:
                predicted = combined[..., 0] >= 0.5
                probabilities = {0: 1 - combined[..., 0], 1: combined[..., 0]}
            else:
                predicted = combined.argmax(-1)
                probabilities = {label: combined[..., label] for label in labels}
            per_label = []
            for label in labels:
                truth, mine = reference == label, predicted == label
                total = truth.sum() + mine.sum()
                per_label.append(2 * (truth & mine).sum() / total if total else 1.0)
                p = probabilities[label].astype(np.float64)
                size = p.sum() + truth.sum()
                soft.append(2 * (p * truth).sum() / size if size else 1.0)
            hard.append(np.mean(per_label))
        key = (np.mean(hard), np.mean(soft))
        if best is None or key > best[1]:
            best = (weights, key)
    return best


@pytest.mark.parametrize("channels, labels", [(1, [1]), (3, [1, 2])])
def test_fitted_weights_equal_the_point_by_point_search(channels, labels, monkeypatch):
    from kseg.inference import ensemble, fit_ensemble_weights

    rng = np.random.default_rng(channels)
    cases, references = [], []
    for shape in [(6, 5), (4, 7), (5, 5)]:
        raw = rng.random((3, *shape, channels)).astype(np.float32)
        members = raw if channels == 1 else raw / raw.sum(-1, keepdims=True)
        cases.append(list(members))
        references.append(rng.integers(0, 1 + max(labels), shape))
    monkeypatch.setattr(ensemble, "_GRID_CHUNK_VALUES", 7 * 5 * channels * 4)  # 4 points a pass
    fitted = fit_ensemble_weights(cases, references, labels=labels, step=0.1, progress=False)
    weights, (hard, _) = _brute_force_fit(cases, references, labels, 0.1)
    np.testing.assert_allclose(fitted.weights, weights)
    assert fitted.dice == pytest.approx(hard, abs=1e-12)
    for member in range(3):
        alone, (member_hard, _) = _brute_force_fit(
            [[c[member]] for c in cases], references, labels, 1.0)
        assert fitted.member_dice[member] == pytest.approx(member_hard, abs=1e-12)

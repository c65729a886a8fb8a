import collections
import itertools

import pytest

from kseg.data.splits import assign_folds, cross_validation_splits, fold_names, split_names

PATIENTS = [f"patient{n:02d}" for n in range(23)]


def test_every_patient_gets_exactly_one_fold_and_sizes_are_balanced():
    folds = assign_folds(PATIENTS, num_folds=5, seed=3)
    assert set(folds) == set(PATIENTS)
    assert set(folds.values()) == {0, 1, 2, 3, 4}
    # 23 patients over 5 folds: sizes 5, 5, 5, 4, 4 in some order.
    assert sorted(collections.Counter(folds.values()).values()) == [4, 4, 5, 5, 5]


def test_same_seed_same_folds_whatever_the_input_order():
    reference = assign_folds(PATIENTS, num_folds=5, seed=7)
    assert assign_folds(list(reversed(PATIENTS)), num_folds=5, seed=7) == reference
    assert assign_folds(set(PATIENTS), num_folds=5, seed=7) == reference
    assert assign_folds(tuple(sorted(PATIENTS, key=hash)), num_folds=5, seed=7) == reference


def test_different_seeds_give_different_assignments():
    assignments = {tuple(assign_folds(PATIENTS, 5, seed=s).values()) for s in range(5)}
    assert len(assignments) > 1


def test_integer_patient_ids_are_kept_as_given():
    folds = assign_folds([10, 2, 1, 5], num_folds=2, seed=0)
    assert set(folds) == {1, 2, 5, 10}
    assert sorted(folds.values()) == [0, 0, 1, 1]


def test_stratified_folds_share_out_every_stratum():
    # Three strata of sizes 10, 7 and 6 (e.g. (sex, empty-fraction bin)).
    strata = {p: ("F", 0) for p in PATIENTS[:10]}
    strata.update({p: ("M", 0) for p in PATIENTS[10:17]})
    strata.update({p: ("M", 1) for p in PATIENTS[17:]})
    for seed in range(4):
        folds = assign_folds(PATIENTS, num_folds=3, seed=seed, strata=strata)
        sizes = collections.Counter(folds.values())
        assert max(sizes.values()) - min(sizes.values()) <= 1
        for stratum in set(strata.values()):
            members = [p for p in PATIENTS if strata[p] == stratum]
            per_fold = collections.Counter(folds[p] for p in members)
            counts = [per_fold.get(fold, 0) for fold in range(3)]
            assert max(counts) - min(counts) <= 1, (seed, stratum, counts)


def test_stratified_assignment_ignores_input_order_and_extra_strata_entries():
    strata = {p: int(p[-2:]) % 3 for p in PATIENTS}
    strata["someone_else"] = 0
    reference = assign_folds(PATIENTS, 4, seed=2, strata=strata)
    assert assign_folds(PATIENTS[::-1], 4, seed=2, strata=strata) == reference
    assert set(reference) == set(PATIENTS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patient_ids": ["a", "b", "a"]}, "more than once"),
        ({"patient_ids": ["a", "b"], "num_folds": 3}, "at least 3 patients"),
        ({"patient_ids": PATIENTS, "num_folds": 0}, "at least 1"),
        ({"patient_ids": PATIENTS, "num_folds": 2.5}, "integer"),
        ({"patient_ids": PATIENTS, "seed": -1}, "seed"),
        ({"patient_ids": "abcdef"}, "single string"),
        ({"patient_ids": PATIENTS, "strata": {"patient00": 1}}, "no stratum"),
    ],
)
def test_bad_arguments_raise_value_errors_saying_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        assign_folds(**kwargs)


def test_split_names_are_tfds_split_expressions_over_disjoint_folds():
    assert split_names() == {"train": "fold2+fold3+fold4", "validation": "fold1", "test": "fold0"}
    assert split_names(4, test_fold=3, validation_fold=0) == {
        "train": "fold1+fold2",
        "validation": "fold0",
        "test": "fold3",
    }
    assert fold_names(3) == ["fold0", "fold1", "fold2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_folds": 2}, "at least 3"),
        ({"test_fold": 5}, "test_fold must be in 0..4"),
        ({"validation_fold": -1}, "validation_fold must be in 0..4"),
        ({"test_fold": 2, "validation_fold": 2}, "must differ"),
    ],
)
def test_split_names_rejects_impossible_arrangements(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_names(**kwargs)


def test_cross_validation_splits_rotate_validation_over_non_test_folds():
    arrangements = cross_validation_splits(5, test_fold=2)
    assert [a["validation"] for a in arrangements] == ["fold0", "fold1", "fold3", "fold4"]
    for arrangement in arrangements:
        assert arrangement["test"] == "fold2"
        parts = [set(arrangement[name].split("+")) for name in ("train", "validation", "test")]
        for first, second in itertools.combinations(parts, 2):
            assert not first & second
        assert set().union(*parts) == {f"fold{f}" for f in range(5)}
    with pytest.raises(ValueError, match="test_fold"):
        cross_validation_splits(3, test_fold=3)

"""kseg.plan: the fingerprint against numpy on a phantom dataset, each plan rule against a
hand-computed value, JSON round trips and argument errors."""

import dataclasses

import numpy as np
import pytest

from kseg import plan as kplan
from kseg.phantoms.chaos import PhantomLabel, chaos_phantom_case, write_chaos

NUM_PATIENTS, NUM_SLICES, SIZE = 2, 3, 16


@pytest.fixture(scope="module")
def chaos_builder(tmp_path_factory):
    import tensorflow_datasets as tfds

    from tfds_builders.chaos import chaos_dataset_builder

    root = tmp_path_factory.mktemp("plan_chaos")
    write_chaos(root / "manual", modality="CT", num_patients=NUM_PATIENTS,
                num_slices=NUM_SLICES, size=SIZE, progress=False)
    config = dataclasses.replace(
        chaos_dataset_builder.Builder.builder_configs["ct"], name="ct_2fold", num_folds=2
    )
    builder = chaos_dataset_builder.Builder(config=config, data_dir=str(root / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual"))
    )
    return builder


@pytest.fixture(scope="module")
def phantom_cases():
    return [chaos_phantom_case("CT", k, num_slices=NUM_SLICES, size=SIZE)
            for k in range(NUM_PATIENTS)]


def test_fingerprint_matches_numpy_on_the_phantoms_arrays(chaos_builder, phantom_cases):
    fp = kplan.fingerprint(chaos_builder)
    assert fp.modality == "CT"
    assert fp.dataset == {"name": "chaos", "version": "1.0.0", "config": "ct_2fold",
                          "splits": ["fold0", "fold1"]}
    assert fp.class_names == ["background", "liver"]
    by_id = {case.case_id: case for case in fp.cases}
    assert sorted(by_id) == sorted(c.patient for c in phantom_cases)
    liver_values, liver_voxels, all_voxels = [], 0, 0
    for source in phantom_cases:
        case = by_id[source.patient]
        liver = source.labels == PhantomLabel.LIVER
        assert case.shape == (NUM_SLICES, SIZE, SIZE)
        np.testing.assert_allclose(case.spacing, source.spacing, rtol=1e-4)
        assert case.label_voxels == {0: int((~liver).sum()), 1: int(liver.sum())}
        assert case.foreground_voxels == int(liver.sum())
        liver_values.append(source.images["CT"][liver].astype(np.float64))
        liver_voxels += int(liver.sum())
        all_voxels += liver.size
    values = np.concatenate(liver_values)
    assert values.size > 0
    stats = fp.foreground_intensity
    low, median, high = np.percentile(values, [0.5, 50, 99.5])
    assert stats["percentile_00_5"] == pytest.approx(low)
    assert stats["percentile_50_0"] == pytest.approx(median)
    assert stats["percentile_99_5"] == pytest.approx(high)
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["std"] == pytest.approx(values.std())
    assert fp.foreground_fraction == {1: pytest.approx(liver_voxels / all_voxels)}


def test_fingerprint_sample_cap_keeps_statistics_close(chaos_builder, phantom_cases):
    full = kplan.fingerprint(chaos_builder)
    capped = kplan.fingerprint(chaos_builder, samples_per_case=20)
    again = kplan.fingerprint(chaos_builder, samples_per_case=20)
    assert capped.foreground_intensity == again.foreground_intensity  # fixed seed
    assert capped.foreground_intensity != full.foreground_intensity
    # 40 samples of the liver's HU: the mean within a few standard errors of the truth.
    error = 4 * full.foreground_intensity["std"] / np.sqrt(40)
    assert abs(capped.foreground_intensity["mean"] - full.foreground_intensity["mean"]) < error
    # Label counts are exact whatever the cap.
    assert capped.cases == full.cases


def test_fingerprint_max_cases_and_split(chaos_builder):
    one = kplan.fingerprint(chaos_builder, split="fold1", max_cases=1)
    assert len(one.cases) == 1 and one.dataset["splits"] == ["fold1"]


def test_reservoir_is_uniform_and_exact_below_capacity():
    rng = np.random.default_rng(0)
    small = kplan._Reservoir(10, rng)
    small.add(np.arange(4))
    small.add(np.arange(4, 9))
    np.testing.assert_array_equal(np.sort(small.values), np.arange(9))
    # Each of 0..99 fed in 10 chunks lands in a 10-sample with probability 1/10.
    hits = np.zeros(100)
    for _ in range(400):
        reservoir = kplan._Reservoir(10, rng)
        for chunk in np.split(np.arange(100), 10):
            reservoir.add(chunk)
        assert reservoir.values.size == 10 and np.unique(reservoir.values).size == 10
        hits[reservoir.values.astype(int)] += 1
    # 40 expected hits per value; first and last chunks alike (no order bias).
    assert abs(hits[:10].mean() - 40) < 8 and abs(hits[90:].mean() - 40) < 8


def test_fingerprint_json_round_trip(chaos_builder, tmp_path):
    fp = kplan.fingerprint(chaos_builder)
    path = tmp_path / "sub" / "fingerprint.json"
    fp.save(path)
    assert kplan.Fingerprint.load(path) == fp
    assert [p.name for p in path.parent.iterdir()] == ["fingerprint.json"]


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"modality": "MR"}, "modality"),
        ({"modality": "PET"}, "modality"),
        ({"max_cases": 0}, "max_cases"),
        ({"samples_per_case": 1.5}, "samples_per_case"),
        ({"split": "fold7"}, "split"),
        ({"seed": -1}, "seed"),
    ],
)
def test_fingerprint_argument_errors_name_the_argument(chaos_builder, kwargs, named):
    with pytest.raises(ValueError, match=named):
        kplan.fingerprint(chaos_builder, **kwargs)


def test_fingerprint_rejects_what_is_not_a_builder():
    with pytest.raises(ValueError, match="dataset_or_builder"):
        kplan.fingerprint(object())

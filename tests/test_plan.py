"""kseg.plan: the fingerprint against numpy on a phantom dataset, each plan rule against a
hand-computed value, JSON round trips and argument errors."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

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


# --- plan rules, each against a value computed by hand --------------------------------


def test_target_spacing_is_the_median_when_isotropic_enough():
    spacings = [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (3.0, 0.5, 0.5)]
    shapes = [(100, 100, 100)] * 3
    assert kplan.rule_target_spacing(spacings, shapes) == (2.0, 1.0, 1.0)


def test_target_spacing_of_the_anisotropic_axis_is_its_10th_percentile():
    # z spacings 4, 5, 5.5, 6, 8: median 5.5 > 3 x 1; 20 x 3 < 200 voxels: anisotropic.
    # 10th percentile (linear): 4 + 0.4 x (5 - 4) = 4.4.
    spacings = [(z, 1.0, 1.0) for z in (5.0, 6.0, 4.0, 8.0, 5.5)]
    shapes = [(20, 200, 200)] * 5
    assert kplan.rule_target_spacing(spacings, shapes) == pytest.approx((4.4, 1.0, 1.0))
    # Same spacings but as many z voxels as in-plane: not anisotropic in voxels, median kept.
    assert kplan.rule_target_spacing(spacings, [(100, 200, 200)] * 5) == (5.5, 1.0, 1.0)


def test_anisotropic_target_never_finer_than_the_other_axes():
    # z: 1, 1, 8 x 8 -> median 8 > 3 x 2.5 (the coarsest other axis); 10th percentile
    # 1 + 0.9 x (1 - 1) = 1 < 2.5, so 2.5 + 1e-5 as nnU-Net.
    spacings = [(1.0, 1.0, 2.5)] * 2 + [(8.0, 1.0, 2.5)] * 8
    shapes = [(10, 300, 300)] * 10
    assert kplan.rule_target_spacing(spacings, shapes) == (2.5 + 1e-5, 1.0, 2.5)
    # The coarsest other axis, not the finest, is compared: 4 < 3 x 2.5, median kept.
    spacings = [(4.0, 1.0, 2.5)] * 5
    assert kplan.rule_target_spacing(spacings, shapes[:5]) == (4.0, 1.0, 2.5)


def test_shape_at_target_spacing_is_the_median_of_resampled_shapes():
    shapes = [(10, 100, 100), (20, 50, 50), (5, 10, 10)]
    spacings = [(2.0, 1.0, 1.0), (1.0, 2.0, 2.0), (1.0, 1.0, 1.0)]
    # At 1 mm: (20, 100, 100), (20, 100, 100), (5, 10, 10).
    assert kplan.rule_shape_at_spacing(shapes, spacings, (1.0, 1.0, 1.0)) == (20, 100, 100)
    assert kplan.rule_shape_at_spacing([(3, 4), (5, 8), (9, 9)], None, None) == (5, 8)


@pytest.mark.parametrize(
    "patch, max_depth, depth",
    [((128, 128), 5, 5), ((160, 96), 5, 4), ((512, 512), 5, 5), ((512, 512), 3, 3),
     ((7, 7), 5, 0), ((3, 100), 5, 0), ((32, 64, 64), 5, 3)],
)
def test_depth_keeps_feature_maps_of_at_least_4(patch, max_depth, depth):
    assert kplan.rule_depth(patch, max_depth) == depth


def test_filters_per_device():
    assert kplan.rule_filters("gpu", 3) == (32, 320)
    assert kplan.rule_filters("gpu", 2) == (32, 512)
    assert kplan.rule_filters("cpu", 3) == (16, 160)


@pytest.mark.parametrize(
    "dims, depth, base, cap, expected",
    [
        (2, 2, 32, 320, 4 * 12 * (32 + 64 / 4 + 128 / 16)),  # 2688
        (3, 1, 32, 320, 4 * 12 * (32 + 64 / 8)),  # 1920
        (2, 2, 32, 64, 4 * 12 * (32 + 64 / 4 + 64 / 16)),  # capped: 2496
    ],
)
def test_bytes_per_voxel(dims, depth, base, cap, expected):
    assert kplan.rule_bytes_per_voxel(dims, depth, base, cap) == pytest.approx(expected)


def test_patch_size_is_the_median_shape_when_it_fits():
    # depth 5, filters 16 32 64 128 256 256: 16 + 8 + 4 + 2 + 1 + 0.25 = 31.25 channels,
    # 48 x 31.25 = 1500 B/voxel; 2 x 128 x 128 x 1500 B = 46.875 MB.
    assert kplan.rule_patch_size((128, 128), 2, 47, 16, 256) == ((128, 128), 5)
    # 40 MB: the first axis loses 32 -> (96, 128), depth floor(log2(96 / 4)) = 4,
    # 48 x 31 = 1488 B/voxel x 2 x 96 x 128 = 34.9 MB.
    assert kplan.rule_patch_size((128, 128), 2, 40, 16, 256) == ((96, 128), 4)


def test_patch_size_rounds_up_to_the_pooling_multiple():
    # (100, 60): depth min(floor(log2 25), floor(log2 15)) = 3 -> multiples of 8.
    assert kplan.rule_patch_size((100, 60), 2, 10_000, 16, 256) == ((104, 64), 3)


def test_patch_size_shrinks_the_relatively_largest_axis():
    # Median (64, 256): depth 4, 48 x 31 = 1488 B/voxel, 2 x 64 x 256 x 1488 B = 48.8 MB.
    # Over 30 MB: ratios tie, axis 0 loses 16 -> (48, 256), depth floor(log2 12) = 3,
    # 48 x 30 = 1440 B/voxel, 35.2 MB. Now axis 1 has the larger ratio (1 > 0.75) and loses
    # 8 at a time until 2 x 48 x x x 1440 <= 30 x 2**20, x <= 227.5: (48, 224), ratio 0.875.
    assert kplan.rule_patch_size((64, 256), 2, 30, 16, 256) == ((48, 224), 3)


def test_initial_patch_is_clipped_to_nnunets_reference_volume():
    # 2D without spacing: 2048 x 2048 at most.
    assert kplan.rule_patch_size((4000, 3000), 2, 20_000, 16, 256) == ((2048, 2048), 5)
    # 3D at (3, 1, 1) mm: aspect (1/3, 1, 1) scaled to 256**3 voxels: s = (3 x 256**3)**(1/3)
    # = 369.25 -> (123, 369, 369); depth floor(log2(123 / 4)) = 4 -> multiples of 16:
    # (128, 384, 384).
    patch = kplan.rule_patch_size((500, 500, 500), 3, 50_000, 16, 160,
                                  target_spacing=(3.0, 1.0, 1.0))
    assert patch == ((128, 384, 384), 4)


def test_patch_size_budget_too_small_names_the_argument():
    with pytest.raises(ValueError, match="memory_budget_mb"):
        kplan.rule_patch_size((128, 128), 2, 0.001, 16, 256)


@pytest.mark.parametrize(
    "budget_mb, dataset_voxels, batch",
    [
        (100, 4096 * 100, 5),  # 100 MB holds 25 patches of 4.096 MB, 5 % of 100 patches is 5
        (12.288e6 / 2**20, 10**9, 3),  # memory holds exactly 3
        (1, 10**9, 2),  # 1 MB holds none: at least 2
        (100, 4096 * 10, 2),  # 5 % of 10 patches is 0: at least 2
    ],
)
def test_batch_size(budget_mb, dataset_voxels, batch):
    assert kplan.rule_batch_size((64, 64), 1000, budget_mb, dataset_voxels) == batch


def _fingerprint(modality="CT", class_names=("background", "liver"), layout="slices",
                 cases=None, stats="default"):
    if stats == "default":
        stats = {"mean": 60.0, "std": 10.0, "min": 0.0, "max": 120.0,
                 "percentile_00_5": 20.0, "percentile_50_0": 60.0, "percentile_99_5": 100.0}
    cases = cases or [
        kplan.CaseStats("a", (20, 64, 64), (3.0, 1.0, 1.0), {0: 80000, 1: 1920}, 1920),
        kplan.CaseStats("b", (30, 32, 32), (3.0, 2.0, 2.0), {0: 30000, 1: 720}, 720),
    ]
    return kplan.Fingerprint(
        dataset={"name": "hand", "version": "1.0.0", "config": None, "splits": ["fold0"]},
        modality=modality, class_names=None if class_names is None else list(class_names),
        cases=cases, foreground_intensity=stats, foreground_fraction={1: 0.02}, layout=layout,
    )


def test_normalization_ct_clips_then_zscores_mr_and_xray_per_image():
    assert kplan.rule_normalization(_fingerprint()) == {
        "scheme": "ct", "clip": [20.0, 100.0], "mean": 60.0, "std": 10.0
    }
    for modality in ("MR", "XRAY"):
        assert kplan.rule_normalization(_fingerprint(modality)) == {"scheme": "zscore_per_image"}
    with pytest.raises(ValueError, match="foreground"):
        kplan.rule_normalization(_fingerprint(stats=None))


def test_optimizer_per_device():
    gpu = kplan.rule_optimizer("gpu")
    assert (gpu["name"], gpu["momentum"], gpu["nesterov"], gpu["schedule"],
            gpu["poly_exponent"], gpu["weight_decay"]) == ("SGD", 0.99, True, "poly", 0.9, 3e-5)
    cpu = kplan.rule_optimizer("cpu")
    assert (cpu["name"], cpu["schedule"], cpu["warmup_fraction"]) == ("Adam", "cosine", 0.05)


@pytest.mark.parametrize(
    "dims, names, axes",
    [(2, ["background", "left lung", "right lung"], (0,)), (2, ["background", "lungs"], (0, 1)),
     (3, None, (0, 1, 2))],
)
def test_mirror_axes_spare_left_right_labels(dims, names, axes):
    assert kplan.rule_mirror_axes(dims, names) == axes


def test_augmentation_rotation_by_patch_shape_and_modality():
    assert kplan.rule_augmentation((64, 96), "MR", (0, 1))["rotation_degrees"] == 180.0
    assert kplan.rule_augmentation((64, 97), "MR", (0, 1))["rotation_degrees"] == 15.0  # > 1.5
    assert kplan.rule_augmentation((32, 64, 64), "CT", (0, 1, 2))["rotation_degrees"] == 30.0
    xray = kplan.rule_augmentation((256, 256), "XRAY", (0,))
    assert xray["rotation_degrees"] == 15.0 and xray["mirror_axes"] == [0]
    assert (xray["scale"], xray["p_mirror"], xray["p_gamma"]) == ([0.7, 1.4], 0.5, 0.3)


def test_training_flops_per_voxel():
    # dims 2, depth 1, filters 4 and 8, one input channel, 9-tap kernels:
    # stage 0: encoder 1x4 + 4x4, decoder 8x4 + 4x4 = 68 -> 612 MACs per voxel;
    # stage 1 (1/4 of the voxels): 4x8 + 8x8 = 96 -> 864 / 4 = 216. 828 MACs, x2 x3.
    assert kplan.rule_training_flops_per_voxel(2, 1, 4, 320) == pytest.approx(828 * 6)


def test_training_steps_from_the_time_budget():
    assert kplan.rule_training_steps(30, 0.5) == 3240  # 30 x 60 x 0.9 / 0.5
    assert kplan.rule_training_steps(10**6, 0.01) == 250_000  # nnU-Net's 1000 x 250 cap


def test_plan_of_a_hand_made_fingerprint():
    fp = _fingerprint()
    p = kplan.plan(fp, memory_budget_mb=2000, time_budget_minutes=10, device="cpu")
    # 2D on a slice dataset: in-plane median spacing (1.5, 1.5); case a at 1.5 mm is
    # 64 x 1 / 1.5 = 42.67 -> 43, case b 32 x 2 / 1.5 = 42.67 -> 43; median 43.
    assert p.spatial_dims == 2 and p.target_spacing == (1.5, 1.5)
    assert p.median_shape == (43, 43)
    # depth floor(log2(43 / 4)) = 3 -> multiples of 8: 48.
    assert (p.patch_size, p.depth, p.base_filters) == ((48, 48), 3, 16)
    # Dataset voxels as nnU-Net: median shape (25, 43, 43) x 2 cases = 92450; 5 % of it is
    # 4622.5 voxels, round(4622.5 / 2304) = 2 patches.
    assert p.batch_size == 2
    flops = kplan.rule_training_flops_per_voxel(2, 3, 16, 256)
    # 2D on CPU: kseg's measured 220 GFLOP/s (2 cores x ~110 GFLOP per CPU-second)
    assert p.seconds_per_step == pytest.approx(2 * 48 * 48 * flops / 220e9)
    assert p.training_steps == int(10 * 60 * 0.9 // p.seconds_per_step)
    assert p.normalization["scheme"] == "ct" and p.tta_mirror_axes == (0, 1)
    assert not p.deep_supervision
    assert p.loss["name"] == "kseg.losses.DiceCELoss"
    assert p.postprocessing["function"] == "kseg.evaluation.choose_postprocessing"
    three = kplan.plan(fp, memory_budget_mb=2000, time_budget_minutes=10, spatial_dims=3,
                       device="gpu", seconds_per_step=0.25, model="unet_plus_plus")
    # z median 3.0 is not > 3 x 1.5, so median spacing; z voxels 20 and 30 -> median 25.
    assert three.target_spacing == (3.0, 1.5, 1.5) and three.median_shape == (25, 43, 43)
    assert three.deep_supervision and three.training_steps == 2160
    assert three.optimizer["name"] == "SGD" and (three.base_filters, three.max_filters) == (32, 320)


def test_plan_of_radiographs_without_spacing():
    cases = [kplan.CaseStats(f"r{k}", (256, 200 + 8 * k), None, {0: 1, 1: 1}, 1)
             for k in range(3)]
    fp = _fingerprint("XRAY", ("background", "lungs"), "images", cases, stats=None)
    p = kplan.plan(fp, memory_budget_mb=4000, time_budget_minutes=30, seconds_per_step=1.0)
    assert p.target_spacing is None and p.median_shape == (256, 208)
    # depth min(floor(log2 64), floor(log2 52)) = 5 -> 32-multiples: (256, 224).
    assert (p.patch_size, p.depth) == ((256, 224), 5)
    assert p.normalization == {"scheme": "zscore_per_image"} and p.training_steps == 1620


def test_plan_json_round_trip(tmp_path):
    p = kplan.plan(_fingerprint(), memory_budget_mb=500, time_budget_minutes=5)
    p.save(tmp_path / "plan.json")
    assert kplan.Plan.load(tmp_path / "plan.json") == p


def test_plan_of_the_phantom_fingerprint_file(chaos_builder, tmp_path):
    fp = kplan.fingerprint(chaos_builder)
    fp.save(tmp_path / "fp.json")
    p = kplan.plan(tmp_path / "fp.json", memory_budget_mb=500, time_budget_minutes=5)
    pixels = [case.spacing[1] for case in fp.cases]
    assert p.spatial_dims == 2
    assert p.target_spacing == pytest.approx((np.median(pixels), np.median(pixels)))
    assert p.normalization["clip"] == [fp.foreground_intensity["percentile_00_5"],
                                       fp.foreground_intensity["percentile_99_5"]]


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"memory_budget_mb": 0}, "memory_budget_mb"),
        ({"time_budget_minutes": float("nan")}, "time_budget_minutes"),
        ({"device": "tpu"}, "device"),
        ({"device": "gpu"}, "seconds_per_step"),
        ({"seconds_per_step": -1}, "seconds_per_step"),
        ({"seconds_per_step": "fast"}, "seconds_per_step"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"model": "vnet"}, "model"),
        ({"max_depth": -1}, "max_depth"),
    ],
)
def test_plan_argument_errors_name_the_argument(kwargs, named):
    arguments = {"memory_budget_mb": 500, "time_budget_minutes": 5, **kwargs}
    with pytest.raises(ValueError, match=named):
        kplan.plan(_fingerprint(), **arguments)
    with pytest.raises(ValueError, match="fp"):
        kplan.plan({"not": "a fingerprint"}, memory_budget_mb=1, time_budget_minutes=1)


def _prepare(builder, manual):
    import tensorflow_datasets as tfds

    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return builder


def test_fingerprint_of_volumes_one_case_per_example(tmp_path):
    from kseg.phantoms.msd_spleen import (
        MSD_SPLEEN_TRAINING_CASES,
        spleen_phantom_case,
        write_msd_spleen,
    )
    from tfds_builders.msd_spleen import msd_spleen_dataset_builder

    shape, spacing = (4, 16, 16), (5.0, 3.0, 3.0)
    write_msd_spleen(tmp_path / "manual", num_training=2, num_test=0, shape=shape,
                     spacing=spacing, apple_double=False)
    config = dataclasses.replace(msd_spleen_dataset_builder.Builder.builder_configs["raw"],
                                 name="raw_2fold", num_folds=2)
    builder = _prepare(msd_spleen_dataset_builder.Builder(config=config, data_dir=tmp_path / "d"),
                       tmp_path / "manual")
    fp = kplan.fingerprint(builder)
    assert fp.modality == "CT" and fp.layout == "volumes"
    sources = [spleen_phantom_case(n, shape=shape, spacing=spacing)
               for n in MSD_SPLEEN_TRAINING_CASES[:2]]
    by_id = {case.case_id: case for case in fp.cases}
    assert sorted(by_id) == sorted(s.patient_id for s in sources)
    values = []
    for source in sources:
        spleen = source.label.array > 0
        case = by_id[source.patient_id]
        assert case.shape == shape and case.foreground_voxels == int(spleen.sum())
        np.testing.assert_allclose(case.spacing, spacing, rtol=1e-5)
        values.append(source.image.array[spleen].astype(np.float64))
    values = np.concatenate(values)
    assert fp.foreground_intensity["percentile_99_5"] == pytest.approx(
        np.percentile(values, 99.5))
    assert fp.foreground_intensity["mean"] == pytest.approx(values.mean())


def test_fingerprint_of_radiographs_has_no_spacing_and_needs_no_modality(tmp_path):
    from kseg.phantoms.xray import write_generic
    from tfds_builders.xray import xray_dataset_builder

    write_generic(tmp_path / "manual", num_images=2, size=24)
    config = dataclasses.replace(xray_dataset_builder.Builder.builder_configs["generic"],
                                 name="generic_2fold", num_folds=2)
    builder = _prepare(xray_dataset_builder.Builder(config=config, data_dir=tmp_path / "d"),
                       tmp_path / "manual")
    fp = kplan.fingerprint(builder)
    assert fp.modality == "XRAY" and fp.layout == "images"
    masks = {}
    for path in sorted((tmp_path / "manual" / "masks").iterdir()):
        masks[path.stem] = np.asarray(Image.open(path).convert("L")) > 0
    assert [c.spacing for c in fp.cases] == [None, None]
    assert sorted(c.shape for c in fp.cases) == [(24, 24), (24, 24)]
    lungs = sum(int(m.sum()) for m in masks.values())
    assert sum(c.foreground_voxels for c in fp.cases) == lungs
    assert fp.foreground_fraction == {1: pytest.approx(lungs / (2 * 24 * 24))}
    with pytest.raises(ValueError, match="modality"):
        kplan.fingerprint(builder, modality="CT")


def test_plan_measures_seconds_per_step_on_this_machine():
    cases = [kplan.CaseStats(f"r{k}", (16, 16), None, {0: 200, 1: 56}, 56) for k in range(40)]
    fp = _fingerprint("XRAY", ("background", "lungs"), "images", cases, stats=None)
    p = kplan.plan(fp, memory_budget_mb=50, time_budget_minutes=1, seconds_per_step="measure",
                   model="unet_plus_plus")
    # 16 x 16: depth floor(log2 4) = 2, batch: 5 % of 40 x 256 voxels is 2 patches.
    assert (p.patch_size, p.depth, p.batch_size, p.deep_supervision) == ((16, 16), 2, 2, True)
    assert 0 < p.seconds_per_step < 30
    assert p.training_steps == min(250_000, int(60 * 0.9 // p.seconds_per_step))
    assert "measured" in p.rules["training_steps"]
    with pytest.raises(ValueError, match="steps"):
        kplan.measure_seconds_per_step(p, steps=0)


def test_cpu_input_size_hand_computed():
    # 2D U-Net flops per pixel, uncapped filters from 16 (rule_training_flops_per_voxel):
    # depth 3: 201312, depth 4: 263520, depth 5: 325728. Budget 1.5 min x 60 x 0.9 = 81 s
    # at 220 GFLOP/s = 1.782e13 FLOP; 20 passes over 192 slices = 3840 images, so
    # side^2 x flops <= 4.640625e9.
    # 128 (depth 5): 16384 x 325728 = 5.34e9 > budget; 127..113: not multiples of 2**depth;
    # 112 (depth 4): 12544 x 263520 = 3.306e9 <= budget.
    assert kplan.rule_training_flops_per_voxel(2, 4, 16, 2**30) == 263520
    assert kplan.rule_cpu_input_size((512, 512), 192, 1.5, 16, min_passes=20,
                                     gflops=220.0) == ((112, 112), 4)
    # 5 minutes: 3.3x the budget; 192 (depth 5): 36864 x 325728 = 1.2008e10 <= 1.547e10;
    # 224 (depth 5): 50176 x 325728 = 1.634e10 > budget; 208: 208 % 32 != 0.
    assert kplan.rule_cpu_input_size((512, 512), 192, 5.0, 16, min_passes=20,
                                     gflops=220.0) == ((192, 192), 5)
    # a median smaller than what fits: the median itself (96: depth 4, a multiple of 16)
    assert kplan.rule_cpu_input_size((96, 96), 36, 1.5, 16, min_passes=20,
                                     gflops=220.0) == ((96, 96), 4)
    # nothing fits: the smallest side, 2**3 x 4 = 32 (depth 3)
    assert kplan.rule_cpu_input_size((512, 512), 10**6, 0.1, 16, min_passes=20,
                                     gflops=220.0) == ((32, 32), 3)
    with pytest.raises(ValueError, match="training_examples must be a positive integer"):
        kplan.rule_cpu_input_size((512, 512), 0, 1.5, 16)


def test_plan_resamples_2d_input_for_a_cpu_budget():
    cases = [kplan.CaseStats(f"p{k}", (32, 512, 512), (3.0, 0.75, 0.75), {0: 9, 1: 1}, 1)
             for k in range(10)]
    fp = _fingerprint("CT", ("background", "liver"), "slices", cases)
    p = kplan.plan(fp, memory_budget_mb=2000, time_budget_minutes=1.5,
                   training_examples=192)
    side = kplan.rule_cpu_input_size((512, 512), 192, 1.5, 16)[0][0]
    assert p.patch_size == (side, side)
    # the in-plane spacing grows as the images shrink: 0.75 x 512 / side
    assert p.target_spacing == pytest.approx((0.75 * 512 / side,) * 2)
    # nnU-Net's 5 % batch on the resampled data: 320 slices x 5 % = 16
    assert p.batch_size == 16
    assert p.rules["patch_size"].startswith("rule_cpu_input_size")
    # without training_examples, nnU-Net's patch (the median shape, memory permitting)
    assert kplan.plan(fp, memory_budget_mb=2000, time_budget_minutes=1.5).patch_size[0] > side

"""``evaluate --input DIR`` lists DIR once per call, however its cached dataset stands.

Listing a folder stats every file of it (a CT archive holds tens of thousands); checking
the cache and preparing it both need that listing, and once is enough.
"""

from __future__ import annotations

from kseg.phantoms import xray
from kseg.recipes import _common, _evaluation


def test_evaluate_input_lists_the_folder_once(tmp_path, monkeypatch):
    from tfds_builders.xray import Builder

    generic = next(config for config in Builder.BUILDER_CONFIGS if config.name == "generic")
    listed = []
    listing = _common.source_listing

    def counted_listing(folder):
        listed.append(folder)
        return listing(folder)

    monkeypatch.setattr(_common, "source_listing", counted_listing)
    run = tmp_path / "run"
    first = xray.write_generic(tmp_path / "a" / "images", num_images=4, size=16, seed=0)
    second = xray.write_generic(tmp_path / "b" / "images", num_images=5, size=16, seed=1)
    # prepared, reused, then prepared again for other files under the same folder name
    for folder, images in ((first, 4), (first, 4), (second, 5)):
        listed.clear()
        builder = _evaluation.input_builder(Builder, generic, folder, run, "input-images")
        assert sum(split.num_examples for split in builder.info.splits.values()) == images
        assert listed == [folder]

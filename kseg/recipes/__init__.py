"""Recipes: one module per worked example, each a complete run from a dataset download (or
a synthetic phantom in its layout) to a per-patient table.

Every recipe module has the same interface, which ``examples/<name>.py`` and the ``kseg``
command both call:

- ``DESCRIPTION``, ``DATASET`` (its TFDS builder name);
- ``add_arguments(parser)`` / ``finish_arguments(parser, args)``: its options and their
  checks (usage errors exit with code 2 before TensorFlow loads);
- ``prepare(args)``: writes the phantom when there is no ``--data-dir``, builds the TFDS
  dataset, returns the builder;
- ``train(args)``: writes ``RUN/config.json`` (:mod:`kseg.recipes.run_config`), trains
  (resumable: the same call continues a crashed run), returns ``RUN/best.keras``;
- ``evaluate(args, split="test", input_dir=None)``: scores the best model per patient on a
  split or on every patient of another folder in the dataset's layout, writes
  ``RUN/evaluation/<name>/scores.csv`` and ``cases/<patient>.npz``, returns the table;
- ``tune(args)``: a Keras Tuner search (:func:`kseg.tuning.tuner`) on the recipe's data,
  trials ranked by whole-volume validation Dice, results in ``RUN/tuning/<strategy>/``;
- ``main(argv=None)``: the example: prepare, train, evaluate on the test fold.

Modules import only the standard library at import time.

Example:
    >>> from kseg import recipes
    >>> chaos = recipes.load("chaos_liver")
    >>> args = chaos.parse_args(["--epochs", "2"])  # checked before TensorFlow loads
    >>> args.epochs, args.output_dir.as_posix()
    (2, 'kseg_runs/chaos_liver_phantom')
    >>> best = chaos.train(args)  # doctest: +SKIP
    >>> table = chaos.evaluate(args, split="test")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pathlib

from kseg.errors import UnreadableFileError
from kseg.recipes import run_config

RECIPES = ("chaos_liver", "lctsc_lungs", "xray_multiclass", "msd_spleen")


def load(name: str):
    """The recipe module ``kseg.recipes.<name>``.

    Raises:
        ValueError: ``name`` is not one of :data:`RECIPES`.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return importlib.import_module(f"kseg.recipes.{name}")


def load_run(run_dir):
    """The recipe module of a run folder and the options it was trained with (as the
    ``argparse.Namespace`` its functions take, ``output_dir`` set to ``run_dir``), read
    from ``run_dir/config.json``.

    Raises:
        kseg.errors.LayoutError, kseg.errors.UnreadableFileError: see
            :func:`kseg.recipes.run_config.read_config`; also a config naming a recipe
            this kseg does not have.
    """
    config = run_config.read_config(run_dir)
    if config["recipe"] not in RECIPES:
        raise UnreadableFileError(
            pathlib.Path(run_dir) / run_config.CONFIG_FILE,
            f"names recipe {config['recipe']!r}; this kseg has {', '.join(RECIPES)}",
        )
    return load(config["recipe"]), run_config.arguments_namespace(config, run_dir)


__all__ = ["RECIPES", "load", "load_run", "run_config"]

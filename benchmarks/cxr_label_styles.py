"""Where a chest X-ray lung model's Dice is lost: per source, per split, per block of case ids.

Runs a trained xray run's model (``RUN/best.keras``, preprocessed as ``RUN/config.json``
says) on every radiograph of a ``generic``-layout folder (``images/`` and ``masks/`` with the
same file names, masks > 127 = lung), scores each on the mask's own grid, and prints:

1. mean / median Dice per source (file-name prefix, e.g. ``CHNCXR`` = Shenzhen, ``MCUCXR`` =
   Montgomery) and per split of the run (``test`` / ``validation`` from the run's
   ``evaluation/<split>/scores.csv``; the rest is ``training``, or ``training+validation``
   when the run did not score its validation split): when the model scores its own
   training images no better than its test images, more training does not buy Dice;
2. per block of ``--block`` case ids of one source: how many references hold more than
   ``--missed`` of their lung area where the model finds none (``missed``), and the block's
   mean Dice. Manual masks drawn in batches differ in style from batch to batch (e.g. whether
   the lung behind the heart is drawn); a model cannot learn a style from the pixels when it
   follows the case number, and the blocks show it.

    python benchmarks/cxr_label_styles.py RUN --data-dir ../shared/data/cxr-lungs
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import re
import statistics

import numpy as np

# Shenzhen / Montgomery style names: PREFIX_NNNN_K.png
CASE_NAME = re.compile(r"^(?P<source>[A-Za-z]+)_(?P<number>\d+)")


def _split_of_images(run: pathlib.Path) -> tuple[dict[str, str], str]:
    """Image name -> split for the images the run scored, and the name of the rest."""
    splits = {}
    for split in ("validation", "test"):
        scores = run / "evaluation" / split / "scores.csv"
        if scores.is_file():
            with open(scores, newline="") as handle:
                for row in csv.DictReader(handle):
                    splits[row["patient_id"]] = split
    rest = "training" if "validation" in splits.values() else "training+validation"
    return splits, rest


def _dice(reference: np.ndarray, predicted: np.ndarray) -> float:
    total = reference.sum() + predicted.sum()
    if total == 0:
        raise ValueError("both masks are empty: Dice is undefined")
    return float(2 * np.logical_and(reference, predicted).sum() / total)


def measure(run: pathlib.Path, data_dir: pathlib.Path) -> list[dict]:
    from PIL import Image

    import kseg
    from kseg.predict import predict_path, read_run

    model_path, config = read_run(run)
    model = kseg.load_model(model_path)
    predictions = predict_path(model, config["inference"], data_dir / "images")
    splits, rest = _split_of_images(run)
    rows = []
    for prediction in predictions:
        name = prediction.source.name
        mask_path = data_dir / "masks" / name
        with Image.open(mask_path) as mask:
            reference = np.asarray(mask.convert("L")) > 127
        predicted = prediction.labels.array[0] > 0
        if predicted.shape != reference.shape:
            raise ValueError(f"{mask_path}: shape {reference.shape}, prediction {predicted.shape}")
        match = CASE_NAME.match(name)
        rows.append({
            "name": name,
            "source": match["source"] if match else "?",
            "number": int(match["number"]) if match else -1,
            "split": splits.get(name, rest),
            "dice": _dice(reference, predicted),
            "missed": float(np.logical_and(reference, ~predicted).sum() / max(reference.sum(), 1)),
        })  # fmt: skip
    return rows


def print_tables(rows: list[dict], block: int, missed: float) -> None:
    print("| source | split | images | mean Dice | median Dice |")
    print("|---|---|---|---|---|")
    for source in sorted({row["source"] for row in rows}):
        for split in ("training", "training+validation", "validation", "test"):
            dice = [r["dice"] for r in rows if r["source"] == source and r["split"] == split]
            if dice:
                print(f"| {source} | {split} | {len(dice)} | {statistics.mean(dice):.4f} | "
                      f"{statistics.median(dice):.4f} |")  # fmt: skip
    print()
    print(f"| source | case ids | images | references with > {missed:.0%} of the lung missed "
          "| mean Dice |")  # fmt: skip
    print("|---|---|---|---|---|")
    for source in sorted({row["source"] for row in rows}):
        of_source = [r for r in rows if r["source"] == source]
        numbers = [r["number"] for r in of_source]
        for start in range(min(numbers) // block * block, max(numbers) + 1, block):
            members = [r for r in of_source if start <= r["number"] < start + block]
            if members:
                heavy = sum(r["missed"] > missed for r in members)
                print(f"| {source} | {start}–{start + block - 1} | {len(members)} | {heavy} | "
                      f"{statistics.mean(r['dice'] for r in members):.4f} |")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path, help="xray run folder (its --output-dir)")
    parser.add_argument("--data-dir", type=pathlib.Path, required=True,
                        help="generic layout: images/ and masks/ with the same file names")
    parser.add_argument("--block", type=int, default=50, help="case ids per block [50]")
    parser.add_argument("--missed", type=float, default=0.06,
                        help="lung fraction missed that counts a reference as drawn larger "
                        "[0.06]")  # fmt: skip
    args = parser.parse_args(argv)
    print_tables(measure(args.run, args.data_dir), args.block, args.missed)


if __name__ == "__main__":
    main()

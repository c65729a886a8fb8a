"""CHAOS liver CT: from DICOM files to a per-patient Dice table.

With no arguments this writes a small SYNTHETIC CHAOS tree (abdominal phantoms in the
challenge's exact on-disk layout; never real data), builds the ``chaos/ct`` TFDS dataset
from it, trains a small U-Net on the CPU for a few minutes, keeps the best model by
whole-volume validation Dice, and prints and saves the per-patient test table. With
``--data-dir`` it does the same on the real CHAOS download (the folder holding
``Train_Sets/``).

Splits are by patient (``--folds``, 5 by default: fold0 test, fold1 validation, the rest
training). Scores are per patient, over the whole volume, on the original 512x512 grid.
As nnU-Net does, keeping only the largest connected liver component is applied to the
test predictions only if it raises the mean validation Dice of the best model
(``--postprocess``). The last line gives the run's wall-clock and CPU time.

Outputs in ``--output-dir``: ``config.json`` (every option, versions, dataset fingerprint,
how to predict), ``best.keras`` (reload with ``kseg.load_model``), ``best.keras.json`` (its
validation score and epoch), ``evaluation/test/scores.csv`` and ``evaluation/test/cases/``
(per-patient arrays for the report), ``history.csv``, ``tensorboard/``.
A crash mid-training resumes from the last epoch when the same command is run again.

Usage:
    python examples/chaos_liver.py
    python examples/chaos_liver.py --data-dir ~/data/CHAOS --image-size 256 --epochs 50
"""

from kseg.recipes import chaos_liver

if __name__ == "__main__":
    chaos_liver.main()

"""LCTSC thoracic CT: lungs (or five organs) from DICOM + RTSTRUCT to per-patient Dice tables.

With no arguments this writes a small SYNTHETIC LCTSC tree (chest phantoms in the TCIA
download's exact layout, RT Structure Sets included; never real data), builds the
``lctsc/lungs`` TFDS dataset from it, trains a small U-Net on the CPU for a few minutes,
keeps the best model by whole-volume validation Dice, and prints and saves two per-patient
test tables: one on the internal test fold (``fold0``) and one on the challenge's own test
patients (``challenge_test``), so the two ways of splitting LCTSC can be compared. With
``--data-dir`` it does the same on the real TCIA download (the folder holding ``LCTSC/``).

``--config`` picks the ``lctsc`` builder config: ``lungs`` (binary, the default),
``lungs_stratified`` (folds stratified by sex and empty-slice fraction), ``organs`` (left
lung, right lung, heart, esophagus, spinal cord) or ``organs_merged_lungs`` (one lungs
class), or ``npz_lungs`` (the pre-converted DICOM + npz layout). A multi-class config
trains a softmax U-Net on sparse labels with Dice + cross-entropy and scores every organ
in its own columns (``dice_heart``, ...); the best checkpoint follows the mean over organs.
On the default phantom at 128 x 128 the esophagus and the spinal cord are 2 to 5 pixels
across and differ from the surrounding soft tissue by 5 to 10 HU, so the few CPU epochs of
the default run learn the lungs and the heart but not these two (their Dice stays 0); give
them ``--image-size 256`` or more and many more epochs.

Splits are by patient: the training patients in ``--folds`` folds (5 by default; fold0
test, fold1 validation, the rest training); ``LCTSC-Test-*`` patients only in
``challenge_test``. Inputs are the lung window (-600 / 1500 HU) resized to
``--image-size``; scores are per patient, over the whole volume, on the original grid. No
flips in the augmentation: a left-right flip would swap the lungs of the ``organs`` classes.

Outputs in ``--output-dir``: ``config.json``, ``best.keras`` (reload with
``kseg.load_model``), ``best.keras.json`` (its validation score and epoch),
``evaluation/test/`` (fold0) and ``evaluation/challenge_test/`` (when the data has test
patients), each a ``scores.csv`` and ``cases/``, ``history.csv``, ``tensorboard/``. A crash
mid-training resumes from the last epoch when the same command is run again.

Usage:
    python examples/lctsc_lungs.py
    python examples/lctsc_lungs.py --config organs
    python examples/lctsc_lungs.py --data-dir ~/data/tcia --image-size 256 --epochs 50

Reference:
    Yang et al., "Autosegmentation for thoracic radiation treatment planning: A grand
    challenge at AAPM 2017", Medical Physics 45(10), 4568-4581 (2018).
"""

from kseg.recipes import lctsc_lungs

if __name__ == "__main__":
    lctsc_lungs.main()

"""Chest X-ray segmentation with a small U-Net, scored per image on a held-out fold.

The seed this follows segmented lungs, heart and clavicles on chest radiographs with a
3-class U-Net and swept the training-set size from 5 to 105 images. This script runs that
recipe through kseg:

- data: the ``xray`` TFDS builder (``tfds_builders/xray``), patient-level folds: one for
  testing, one for validation, the rest for training; ``--max-train N`` keeps the first
  ``N`` training patients of a nested, seeded order (``nested_patient_subset``), so runs
  with growing ``N`` add patients and never swap them;
- input: each image scaled to [0, 1] by its own minimum and maximum (8-bit and 12-bit
  sources land on one scale), resized to ``--image-size`` (bilinear; masks nearest);
  small rotations / scalings and contrast changes as augmentation, no flips (a flip would
  swap left and right lungs and put the heart on the wrong side);
- training: ``unet_small`` (3 levels), Dice + cross-entropy, Adam, and
  ``kseg.training.training_callbacks``: after every epoch each validation radiograph is
  segmented and scored on its stored mask grid (``VolumeValidation``, every image a
  one-slice volume), and the mean of those per-image Dice scores (``val_volume_dice``;
  for several classes the mean over classes) keeps ``best.keras`` (written atomically)
  and halves the learning rate on a plateau; ``history.csv`` logs every epoch and
  ``BackupAndRestore`` resumes an interrupted run at the epoch it reached, best score
  included; ``--max-minutes`` is a training budget the run keeps (``TimeBudget``: it
  stops mid-epoch when one more batch and the validation after it would pass the budget,
  validates and checkpoints what it trained, and a resumed run keeps the budget left at its
  last backup). (Keras'
  own ``val_dice`` pools the pixels of the whole validation set, which weighs large images
  and large structures more than the per-image mean a paper reports.)
- evaluation: the best model segments every test image the same way; probabilities are
  resized back to the stored mask's grid and scored there
  (``kseg.evaluation.evaluate_volumes``), one row per image (Dice, IoU, precision, recall,
  HD95 in pixels), saved as ``evaluation/test/scores.csv`` beside ``best.keras``.

Usage::

    python examples/xray_multiclass.py                    # synthetic 3-class phantom, CPU
    python examples/xray_multiclass.py --data-dir /data/cxr --config generic \\
        --image-size 256 --max-minutes 10                  # your images/ + masks/ folders
    python examples/xray_multiclass.py --data-dir /data/xray --config jsrt_scr --max-train 25

With no ``--data-dir`` the script writes 60 synthetic 96 x 96 radiographs
(``kseg.phantoms.xray``, generic layout, masks 85 lungs / 170 heart / 255 clavicles;
``--phantom-images``, ``--phantom-size``) under ``--output-dir`` and trains for a few CPU
minutes. Outputs: ``best.keras`` (reload with ``kseg.load_model``), ``best.keras.json``
(its validation score and epoch), ``config.json``, ``history.csv``, ``tensorboard/``,
``evaluation/test/scores.csv`` and ``cases/``. ``--config``
names one of the builder's configs (``generic``, ``montgomery``, ``montgomery_lungs``,
``jsrt_scr``, ``jsrt_scr_left_right``); see ``tfds_builders/xray/README.md`` for the layouts.

Reference:
    Ronneberger O., Fischer P., Brox T., "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015; van Ginneken B. et al., "Segmentation of anatomical
    structures in chest radiographs using supervised methods", Medical Image Analysis 10(1),
    19-40 (2006).
"""

from kseg.recipes import xray_multiclass

if __name__ == "__main__":
    xray_multiclass.main()

"""kseg.tuning's refusals as kseg errors: one line from ``kseg``, naming the folder, saying
what differs and how to go on. No trial trains: the staged search records its stages when
it is made, and a second one is refused there."""

import json
import pathlib

import keras
import keras_tuner
import pytest

from kseg.cli import error_line
from kseg.errors import KsegError, LayoutError
from kseg.tuning import StagedSearchMismatchError, tuner


class TwoChoices(keras_tuner.HyperModel):
    """Declares ``loss_k`` and ``learning_rate``; its model is one 1x1 convolution."""

    def build(self, hp):
        hp.Choice("loss_k", [5, 10, 20])
        hp.Choice("learning_rate", [1e-3, 3e-4])
        inputs = keras.Input((4, 4, 1))
        return keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))


FIRST = [("loss_k", [5, 10]), ("learning_rate", [1e-3, 3e-4])]


def test_a_second_staged_search_with_other_stages_is_a_one_line_kseg_error(tmp_path):
    tuner("staged", TwoChoices(), directory=tmp_path, project_name="staged", stages=FIRST)
    record = tmp_path / "staged" / "kseg_stages.json"
    before = record.read_bytes()
    with pytest.raises(StagedSearchMismatchError) as caught:
        tuner("staged", TwoChoices(), directory=tmp_path, project_name="staged",
              stages=[("loss_k", [5, 20])])  # fmt: skip
    error = caught.value
    # a LayoutError for kseg's one-line report, still a ValueError for older callers
    assert isinstance(error, LayoutError) and isinstance(error, KsegError)
    assert isinstance(error, ValueError)
    assert pathlib.Path(error.path) == tmp_path / "staged"
    message = str(error)
    assert message.startswith(f"{tmp_path / 'staged'}: holds another staged search")
    assert "'loss_k=5,10 learning_rate=0.001,0.0003'" in message
    assert "asks for 'loss_k=5,20'" in message
    assert "objective" not in message.split("; recorded")[0]  # the objective is the same
    assert "--output-dir" in message and "kseg_stages.json" in message
    line = error_line(error)
    assert "\n" not in line and line.startswith("kseg: error: ")
    assert record.read_bytes() == before  # the first search's record is untouched


def test_another_objective_is_named(tmp_path):
    tuner("staged", TwoChoices(), directory=tmp_path, project_name="s", stages=FIRST)
    with pytest.raises(StagedSearchMismatchError, match=r"ranked trials by \{'name': "
                       r"'val_volume_dice', 'direction': 'max'\}, this search by "
                       r"\{'name': 'val_loss', 'direction': 'min'\}") as caught:  # fmt: skip
        tuner("staged", TwoChoices(), directory=tmp_path, project_name="s", stages=FIRST,
              objective="val_loss")  # fmt: skip
    assert "stages" not in str(caught.value).split("; recorded")[0].replace("staged search", "")


def test_the_same_stages_resume_and_overwrite_starts_afresh(tmp_path):
    tuner("staged", TwoChoices(), directory=tmp_path, project_name="s", stages=FIRST)
    resumed = tuner("staged", TwoChoices(), directory=tmp_path, project_name="s", stages=FIRST)
    assert resumed.stages == FIRST
    other = [("learning_rate", [1e-3])]
    tuner("staged", TwoChoices(), directory=tmp_path, project_name="s", stages=other,
          overwrite=True)  # fmt: skip
    recorded = json.loads((tmp_path / "s" / "kseg_stages.json").read_text())
    assert recorded["stages"] == [["learning_rate", [1e-3]]]

"""kseg.load_model reloads a saved model in a fresh interpreter that never imported kseg's
Keras modules, which plain keras.saving.load_model cannot do."""

import subprocess
import sys
import textwrap

import numpy as np


def test_load_model_in_fresh_process_without_custom_objects(tmp_path):
    import keras

    import kseg.losses
    import kseg.metrics
    import kseg.models

    model = kseg.models.build("attention_unet", input_shape=(16, 16, 1), depth=2, base_filters=4)
    model.compile(loss=kseg.losses.ComboLoss(), metrics=[kseg.metrics.DiceScore()])
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = keras.ops.convert_to_numpy(model(x))

    script = textwrap.dedent(
        f"""
        import sys, numpy as np, kseg
        assert "kseg.models" not in sys.modules
        model = kseg.load_model({str(path)!r})
        assert type(model.loss).__name__ == "ComboLoss", model.loss
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, np.asarray(model(x)))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)

"""kseg.report: the HTML page read back with the standard library's HTML parser.

Each run folder is written by hand (config.json, history.csv, scores.csv through the CSV
module, case files with known images and masks); the page's tables, headers and slice
images are compared with those files and with numpy recomputations, never with the
report's own helpers.
"""

import base64
import csv
import html.parser
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from kseg import report  # noqa: E402
from kseg.errors import LayoutError, UnreadableFileError  # noqa: E402


class Element:
    def __init__(self, tag, attributes, parent):
        self.tag = tag
        self.attributes = dict(attributes)
        self.parent = parent
        self.children = []
        self.text = ""

    @property
    def classes(self):
        return (self.attributes.get("class") or "").split()

    def all_text(self):
        return self.text + "".join(child.all_text() for child in self.children)

    def find_all(self, tag=None, css_class=None):
        for child in self.children:
            if (tag is None or child.tag == tag) and (
                css_class is None or css_class in child.classes
            ):
                yield child
            yield from child.find_all(tag, css_class)

    def find(self, tag=None, css_class=None):
        return next(self.find_all(tag, css_class), None)


class Tree(html.parser.HTMLParser):
    """The page as a tree of Elements (void elements closed at once)."""

    VOID = {"meta", "link", "img", "input", "br", "hr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {}, None)
        self.current = self.root
        self.feed(text)

    def handle_starttag(self, tag, attributes):
        element = Element(tag, attributes, self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_endtag(self, tag):
        element = self.current
        while element is not self.root and element.tag != tag:
            element = element.parent
        if element is not self.root:
            self.current = element.parent

    def handle_data(self, data):
        self.current.text += data


def parse(path):
    return Tree(path.read_text(encoding="utf-8")).root


def decode_png(uri):
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))))


# --------------------------------------------------------------------------- run folders


def write_config(run, labels=None):
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "kseg_config_version": 1,
        "recipe": "chaos_liver",
        "arguments": {"epochs": 3, "output": str(run)},
        "seed": 7,
        "created": "2026-12-02T03:00:00+00:00",
        "versions": {"kseg": "0.1", "numpy": np.__version__},
        "git_commit": None,
        "dataset": {"name": "chaos", "config": "ct", "version": "1.0.0", "fingerprint": "ab12"},
        "labels": labels or {"liver": 1},
        "inference": {"kind": "slices", "window": [40, 400], "image_size": [64, 64],
                      "num_classes": 1},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def write_history(run):
    rows = [
        ["epoch", "dice", "loss", "val_dice", "val_loss"],
        ["0", "0.5", "0.9", "0.4", "1.0"],
        ["1", "0.75", "0.5", "0.625", "0.75"],
    ]
    with open(run / "history.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return rows


def box_case(slices, rows, columns, reference_box, prediction_box, seed):
    """A case whose masks are boxes ``(z0, z1, y0, y1, x0, x1)`` over a random image."""
    image = np.random.default_rng(seed).random((slices, rows, columns), dtype=np.float32)
    reference = np.zeros(image.shape, np.uint8)
    prediction = np.zeros(image.shape, np.uint8)
    for mask, (z0, z1, y0, y1, x0, x1) in ((reference, reference_box),
                                           (prediction, prediction_box)):  # fmt: skip
        mask[z0:z1, y0:y1, x0:x1] = 1
    return image, reference, prediction


def write_evaluation(run, cases, name="test", extra_rows=()):
    """Case files and a scores.csv whose Dice numpy computes from the masks."""
    folder = run / "evaluation" / name
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    rows = [["patient_id", "dice", "hd95", "reference_empty"]]
    for number, (patient, (image, reference, prediction)) in enumerate(cases.items()):
        np.savez_compressed(
            folder / "cases" / f"{patient}.npz", image=image, reference=reference,
            prediction=prediction, spacing=np.array([2.5, 0.75, 0.75]),
        )  # fmt: skip
        truth, predicted = reference > 0, prediction > 0
        dice = 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())
        rows.append([patient, repr(float(dice)), repr(1.5 + number), str(not truth.any())])
    rows.extend(extra_rows)
    with open(folder / "scores.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shared run folder: tests only read it."""
    run = tmp_path_factory.mktemp("shared") / "run"
    write_config(run)
    write_history(run)
    write_evaluation(run, {
        "patient-a": box_case(12, 40, 36, (2, 9, 10, 30, 8, 28), (3, 10, 12, 30, 8, 26), 0),
        "patient-b": box_case(7, 40, 36, (1, 6, 5, 15, 5, 15), (1, 6, 5, 15, 10, 20), 1),
    })  # fmt: skip
    return run


@pytest.fixture(scope="module")
def written(run):
    """The report of the shared run folder, written once for the tests that read it."""
    return report.write_report(run)


def viewers(page):
    return {v.attributes["data-patient"]: v for v in page.find_all("section", "viewer")}


def slice_data(viewer):
    return json.loads(viewer.find("script", "slice-data").text)


# --------------------------------------------------------------------------- tests


def test_report_is_written_to_report_html_by_default_and_to_output_when_given(
    run, written, tmp_path
):
    assert written == run / "report.html"
    assert written.read_text().startswith("<!DOCTYPE html>")
    other = tmp_path / "elsewhere" / "page.html"
    assert report.write_report(run, other) == other
    assert other.is_file()
    # atomic_output leaves no temporary beside the report
    assert sorted(p.name for p in other.parent.iterdir()) == ["page.html"]


def test_per_patient_table_rows_equal_the_scores_csv(run, written):
    page = parse(written)
    with open(run / "evaluation" / "test" / "scores.csv", newline="") as handle:
        expected = list(csv.reader(handle))
    table = page.find("table", "scores")
    header = [cell.all_text() for cell in table.find_all("th")]
    rows = [
        [cell.attributes["data-value"] for cell in row.find_all("td")]
        for row in table.find("tbody").find_all("tr")
    ]
    assert [header, *rows] == expected
    shown = [cell.all_text() for cell in table.find("tbody").find("tr").find_all("td")]
    assert shown[1] == f"{float(expected[1][1]):.4f}"  # Dice rounded to 4 decimals


def test_summary_table_holds_numpy_mean_median_and_sample_std(run, written):
    page = parse(written)
    with open(run / "evaluation" / "test" / "scores.csv", newline="") as handle:
        dice = np.array([float(row["dice"]) for row in csv.DictReader(handle)])
    summary = page.find("table", "summary")
    cells = {
        row.find("td").attributes["data-value"]: {
            cell.attributes["data-column"]: cell.attributes["data-value"]
            for cell in row.find_all("td")
        }
        for row in summary.find("tbody").find_all("tr")
    }
    assert float(cells["dice"]["mean"]) == pytest.approx(dice.mean())
    assert float(cells["dice"]["median"]) == pytest.approx(np.median(dice))
    assert float(cells["dice"]["std"]) == pytest.approx(np.std(dice, ddof=1))
    assert cells["dice"]["count"] == "2"


def test_each_case_file_has_a_viewer_with_the_dice_of_scores_csv_in_its_header(run, written):
    page = parse(written)
    with open(run / "evaluation" / "test" / "scores.csv", newline="") as handle:
        dice = {row["patient_id"]: row["dice"] for row in csv.DictReader(handle)}
    found = viewers(page)
    assert sorted(found) == ["patient-a", "patient-b"]
    for patient, viewer in found.items():
        assert viewer.attributes["data-evaluation"] == "test"
        span = viewer.find("h4").find("span", "dice")
        assert span.attributes["data-value"] == dice[patient]
        assert f"Dice {float(dice[patient]):.4f}" in span.all_text()
        assert viewer.find("input", "slice-slider") is not None
        assert viewer.find("input", "opacity") is not None


def test_viewer_slices_are_the_case_images_and_masks_as_png(run, written):
    page = parse(written)
    viewer = viewers(page)["patient-a"]
    data = slice_data(viewer)
    with np.load(run / "evaluation" / "test" / "cases" / "patient-a.npz") as case:
        image, reference, prediction = case["image"], case["reference"], case["prediction"]
    assert data["slices"] == list(range(12))
    for position in (0, 5, 9):
        grey = decode_png(data["image"][position])
        np.testing.assert_array_equal(grey, np.round(image[position] * 255).astype(np.uint8))
    # Slice 0 holds neither mask: no layer image; slice 5 holds both.
    assert data["reference"][0] == "" and data["prediction"][0] == ""
    # The reference is outlined (its border pixels: a 4-neighbour outside the mask), the
    # prediction outlined and filled at 35 % (alpha round(0.35 * 255) = 89).
    cross = ndimage.generate_binary_structure(2, 1)
    for key, mask, color, inside_alpha in (
        ("reference", reference, (0, 204, 0), 0),
        ("prediction", prediction, (255, 0, 255), 89),
    ):
        layer = decode_png(data[key][5])
        assert layer.shape == (40, 36, 4)
        mask = mask[5] > 0
        border = mask & ~ndimage.binary_erosion(mask, cross, border_value=0)
        expected_alpha = np.where(border, 255, np.where(mask, inside_alpha, 0))
        np.testing.assert_array_equal(layer[..., 3], expected_alpha)
        assert np.all(layer[mask, :3] == color)
    # The viewer opens on the slice with the most reference pixels (first of the largest).
    assert viewer.attributes["data-position"] == "2"
    slider = viewer.find("input", "slice-slider")
    assert (slider.attributes["min"], slider.attributes["max"]) == ("0", "11")


def test_large_cases_are_capped_in_slices_and_pixels_and_the_page_says_so(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    write_evaluation(run, {"big": box_case(70, 300, 280, (0, 70, 0, 300, 0, 280),
                                           (10, 20, 50, 60, 50, 60), 2)})  # fmt: skip
    page = parse(report.write_report(run, max_slices=8, max_side=128))
    viewer = viewers(page)["big"]
    data = slice_data(viewer)
    expected = np.unique(np.round(np.linspace(0, 69, 8)).astype(int)).tolist()
    assert data["slices"] == expected
    with np.load(run / "evaluation" / "test" / "cases" / "big.npz") as case:
        image = case["image"]
    step = 3  # ceil(300 / 128)
    for position, index in enumerate(expected):
        grey = decode_png(data["image"][position])
        np.testing.assert_array_equal(
            grey, np.round(image[index, ::step, ::step] * 255).astype(np.uint8)
        )
    note = viewer.find("p", "note").all_text()
    assert "8 of 70 slices shown" in note
    assert "one row and column in 3 of 300 × 280 shown (100 × 94 pixels)" in note


def test_stage_keeps_the_physical_aspect_of_the_slice(run, written):
    page = parse(written)
    stage = viewers(page)["patient-a"].find("div", "stage")
    # 36 columns and 40 rows of 0.75 mm: 27 mm wide, 30 mm high
    assert "aspect-ratio: 27 / 30" in stage.attributes["style"]


def test_training_curves_and_history_table_come_from_history_csv(run, written):
    with open(run / "history.csv", newline="") as handle:
        expected = list(csv.reader(handle))
    page = parse(written)
    section = next(s for s in page.find_all("section") if s.attributes.get("id") == "training")
    figure = section.find("figure")
    assert figure.attributes["id"] == "training-curves"
    assert figure.find("img").attributes["src"].startswith("data:image/png;base64,")
    table = section.find("table", "history")
    rows = [[c.attributes["data-value"] for c in r.find_all("td")]
            for r in table.find("tbody").find_all("tr")]  # fmt: skip
    assert rows == expected[1:]


def test_evaluation_figures_are_embedded(run, written):
    page = parse(written)
    ids = {f.attributes["id"] for f in page.find_all("figure")}
    assert {
        "training-curves", "score_boxplots", "score_histograms", "slice-dice-test-foreground",
        "accuracy-dice-test-foreground", "worst-error-map", "worst-tri-planar",
    } <= ids  # fmt: skip
    for figure in page.find_all("figure"):
        png = decode_png(figure.find("img").attributes["src"])
        assert png.ndim == 3 and png.shape[0] > 50


def test_worst_error_map_shows_the_lowest_dice_patient_at_its_most_wrong_slice(run, written):
    page = parse(written)
    caption = (
        next(f for f in page.find_all("figure") if f.attributes["id"] == "worst-error-map")
        .find("figcaption")
        .all_text()
    )
    # patient-b: boxes shifted by 5 columns, Dice 0.5 on slices 1-5 (all equally wrong)
    assert "patient patient-b (Dice 0.5000), slice 1" in caption


def test_page_is_self_contained(written):
    text = written.read_text()
    page = Tree(text).root
    for element in page.find_all():
        for name in ("src", "href"):
            value = element.attributes.get(name)
            if value is not None:
                assert value.startswith("data:"), (element.tag, value[:60])
    assert "http://" not in text and "https://" not in text


def test_a_run_with_only_config_json_says_what_is_missing(tmp_path):
    run = tmp_path / "fresh"
    write_config(run)
    page = parse(report.write_report(run))
    notes = [n.all_text() for n in page.find_all("p", "note")]
    assert any("No training history: history.csv" in n for n in notes)
    assert any("No evaluation yet" in n for n in notes)
    facts = page.find("table", "facts")
    assert "chaos ct 1.0.0" in facts.all_text()
    files = {
        row.attributes["data-file"]: row.find("td").all_text()
        for row in page.find("table", "files").find_all("tr")
    }
    size = (run / "config.json").stat().st_size
    assert files["config.json"] == f"{size:,} bytes"
    assert files["best.keras"] == files["evaluation"] == "not there yet"
    assert not list(page.find_all("p", "problem"))  # a valid config.json draws no complaint


def test_missing_scores_or_cases_and_unreadable_files_are_noted_not_raised(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    (run / "history.csv").write_text("epoch,loss\n")
    folder = run / "evaluation" / "validation"
    (folder / "cases").mkdir(parents=True)
    (folder / "cases" / "broken.npz").write_bytes(b"not a zip")
    other = run / "evaluation" / "input-scans"
    other.mkdir(parents=True)
    (other / "scores.csv").write_text("name,dice\nx,0.5\n")
    page = parse(report.write_report(run))
    notes = [n.all_text() for n in page.find_all("p", "note")]
    assert any("history.csv cannot be shown: it holds no epochs yet" in n for n in notes)
    assert any("No scores: validation/scores.csv is not there" in n for n in notes)
    assert any("broken.npz: is not a readable .npz file" in n for n in notes)
    assert any("input-scans/scores.csv cannot be read" in n and "patient_id" in n for n in notes)
    assert any("No slices to view: input-scans/cases/" in n for n in notes)


def write_study(run, name, summary_lines, figure_bytes):
    """A studies/<name>/ folder laid out as kseg.studies writes it: table.txt is the summary,
    a blank line, "Per patient:" and the rows."""
    folder = run / "studies" / name
    folder.mkdir(parents=True)
    rows = ["", "Per patient:", "", "sigma  patient_id    dice", "0.0000  p1  0.9000"]
    (folder / "table.txt").write_text("\n".join([*summary_lines, *rows]) + "\n")
    (folder / "figure.png").write_bytes(figure_bytes)
    return folder


def png_bytes(seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_studies_section_embeds_each_figure_and_the_summary_of_table_txt(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    noise_summary = [
        "Study noise: dice per setting (per-patient rows in studies/noise/table.csv)",
        "",
        " sigma  dice_mean  patients",
        "0.0000     0.9000         3",
        "",
        "Gaussian noise on the test images' model input ([0, 1] intensities), seed 0.",
    ]
    figures = {"noise": png_bytes(0), "augment": png_bytes(1)}
    write_study(run, "noise", noise_summary, figures["noise"])
    write_study(run, "augment", ["Study augment: dice per setting", "", "on 0.5 <off>"],
                figures["augment"])  # fmt: skip
    page = parse(report.write_report(run))
    section = next(s for s in page.find_all("section") if s.attributes.get("id") == "studies")
    studies = list(section.find_all("section", "study"))
    assert [s.attributes["id"] for s in studies] == ["study-noise", "study-augment"]
    for study in studies:
        name = study.attributes["id"].removeprefix("study-")
        uri = study.find("img").attributes["src"]
        prefix = "data:image/png;base64,"
        assert uri.startswith(prefix)
        assert base64.b64decode(uri[len(prefix) :]) == figures[name]
    shown = {s.attributes["id"]: s.find("pre", "study-summary").text for s in studies}
    assert shown["study-noise"] == "\n".join(noise_summary)
    assert shown["study-augment"] == "Study augment: dice per setting\n\non 0.5 <off>"
    assert "Per patient" not in section.all_text() and "p1" not in section.all_text()
    files = {
        row.attributes["data-file"]: row.find("td").all_text()
        for row in page.find("table", "files").find_all("tr")
    }
    assert files["studies"] == "folder of 2 entries"


def test_missing_or_bad_study_files_are_noted_not_raised(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    page = parse(report.write_report(run))
    notes = [n.all_text() for n in page.find_all("p", "note")]
    assert any("No studies: the run folder has no studies/<name>/ folder" in n for n in notes)
    (run / "studies" / "losses").mkdir(parents=True)
    bad = run / "studies" / "ensemble"
    bad.mkdir()
    (bad / "figure.png").write_bytes(b"GIF89a not a png")
    (bad / "table.txt").write_text("a summary without the per-patient marker\n")
    undecodable = run / "studies" / "noise"
    undecodable.mkdir()
    (undecodable / "table.txt").write_bytes(b"\xff\xfe\x00bad")
    page = parse(report.write_report(run))
    notes = [n.all_text() for n in page.find_all("p", "note")]
    assert any("No summary: studies/losses/table.txt is not there" in n for n in notes)
    assert any("No figure: studies/losses/figure.png is not there" in n for n in notes)
    assert any("studies/ensemble/figure.png cannot be shown: it is not a PNG" in n for n in notes)
    assert any("studies/ensemble/table.txt cannot be shown" in n and "Per patient:" in n
               for n in notes)  # fmt: skip
    assert any("studies/noise/table.txt cannot be shown" in n for n in notes)
    assert not list(page.find_all("pre", "study-summary"))


@pytest.mark.parametrize("arrays, problem", [
    ({"image": np.full((2, 4, 4), np.nan, np.float32)}, "image must hold finite floats"),
    ({"image": np.zeros((2, 4, 4), np.uint8)}, "image must hold finite floats"),
    ({"image": np.zeros((4, 4), np.float32)}, "image must be (slices, rows, columns)"),
    ({"reference": np.zeros((2, 4, 5), np.uint8)}, "reference has shape (2, 4, 5)"),
    ({"prediction": np.full((2, 4, 4), 0.5)}, "prediction must hold integer labels"),
    ({"reference": np.full((2, 4, 4), -1, np.int16)}, "reference holds negative labels"),
])  # fmt: skip
def test_malformed_case_files_are_named_in_the_page(tmp_path, arrays, problem):
    run = tmp_path / "run"
    write_config(run)
    good = box_case(2, 4, 4, (0, 2, 0, 2, 0, 2), (0, 2, 0, 2, 0, 2), 0)
    write_evaluation(run, {"good": good, "bad": good})
    bad = dict(zip(("image", "reference", "prediction"), good, strict=True)) | arrays
    np.savez(run / "evaluation" / "test" / "cases" / "bad.npz", **bad)
    page = parse(report.write_report(run))
    notes = [n.all_text() for n in page.find_all("p", "note")]
    assert any("bad.npz: " in n and problem in n for n in notes), notes
    assert sorted(viewers(page)) == ["good"]


def test_a_radiograph_case_has_one_slice_and_no_tri_planar_figure(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    write_evaluation(run, {"xray": box_case(1, 20, 30, (0, 1, 2, 9, 3, 9), (0, 1, 2, 9, 4, 9), 0)})
    page = parse(report.write_report(run))
    viewer = viewers(page)["xray"]
    assert slice_data(viewer)["slices"] == [0]
    assert viewer.find("input", "slice-slider").attributes["max"] == "0"
    ids = {f.attributes["id"] for f in page.find_all("figure")}
    assert "worst-error-map" in ids and "worst-tri-planar" not in ids


def test_unlabelled_case_has_a_prediction_layer_only(tmp_path):
    run = tmp_path / "run"
    write_config(run)
    cases = run / "evaluation" / "input-scans" / "cases"
    cases.mkdir(parents=True)
    prediction = np.zeros((3, 8, 8), np.uint8)
    prediction[1, 2:5, 2:5] = 1
    np.savez(cases / "scan.npz", image=np.zeros((3, 8, 8), np.float32), prediction=prediction,
             spacing=np.ones(3))  # fmt: skip
    page = parse(report.write_report(run))
    viewer = viewers(page)["scan"]
    data = slice_data(viewer)
    assert "reference" not in data and data["prediction"][0] == ""
    assert viewer.find("img", "layer-reference") is None
    assert viewer.attributes["data-position"] == "1"  # the slice the prediction holds
    assert "not in scores.csv" in viewer.find("h4").all_text()
    assert "no reference (unlabelled input)" in viewer.find("p", "note").all_text()


def test_multi_class_runs_show_one_dice_per_class(tmp_path):
    run = tmp_path / "run"
    write_config(run, labels={"liver": 1, "spleen": 2})
    folder = run / "evaluation" / "test"
    (folder / "cases").mkdir(parents=True)
    reference = np.zeros((2, 6, 6), np.uint8)
    reference[:, :3] = 1
    reference[:, 3:] = 2
    prediction = reference.copy()
    prediction[:, :, :2] = 0
    np.savez(folder / "cases" / "p.npz", image=np.zeros((2, 6, 6), np.float32),
             reference=reference, prediction=prediction, spacing=np.ones(3))  # fmt: skip
    with open(folder / "scores.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([
            ["patient_id", "dice_liver", "dice_spleen", "reference_empty_liver",
             "reference_empty_spleen"],
            ["p", "0.8", "0.75", "False", "False"],
        ])  # fmt: skip
    page = parse(report.write_report(run))
    spans = list(viewers(page)["p"].find("h4").find_all("span", "dice"))
    assert [(s.attributes["data-column"], s.attributes["data-value"]) for s in spans] == [
        ("dice_liver", "0.8"), ("dice_spleen", "0.75"),
    ]  # fmt: skip
    assert "Dice liver 0.8000" in spans[0].all_text()
    ids = {f.attributes["id"] for f in page.find_all("figure")}
    assert {"slice-dice-test-liver", "slice-dice-test-spleen"} <= ids


def test_a_folder_without_config_json_is_a_layout_error_naming_it(tmp_path):
    with pytest.raises(LayoutError, match=r"config\.json: not found"):
        report.write_report(tmp_path)
    with pytest.raises(LayoutError, match="is not a folder"):
        report.write_report(tmp_path / "absent")
    assert not (tmp_path / "report.html").exists()


def test_unreadable_config_json_is_an_unreadable_file_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnreadableFileError, match=r"config\.json: is not readable JSON"):
        report.write_report(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UnreadableFileError, match="must hold a JSON object"):
        report.write_report(tmp_path)


@pytest.mark.parametrize("arguments, message", [
    ({"max_slices": 0}, "max_slices must be a positive integer"),
    ({"max_side": 2.5}, "max_side must be a positive integer"),
    ({"max_slices": True}, "max_slices must be a positive integer"),
])  # fmt: skip
def test_bad_caps_are_refused(run, arguments, message):
    with pytest.raises(ValueError, match=message):
        report.write_report(run, **arguments)


def test_importing_report_imports_neither_tensorflow_nor_keras():
    code = (
        "import sys, kseg.report; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("change, removed, problem", [
    ({"kseg_config_version": 2}, (), "has kseg_config_version 2; this kseg reads version 1"),
    ({}, ("kseg_config_version",), "has kseg_config_version None; this kseg reads version 1"),
    ({}, ("seed", "inference"), "lacks the keys ['seed', 'inference']"),
])  # fmt: skip
def test_a_config_json_read_config_refuses_is_named_in_the_page(tmp_path, change, removed, problem):
    """The report still shows what such a file holds, with the message of
    kseg.recipes.run_config.read_config, which the kseg commands on a run folder raise."""
    from kseg.recipes.run_config import read_config

    run = tmp_path / "old"
    config = {**write_config(run), **change}
    for key in removed:
        del config[key]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnreadableFileError) as refused:
        read_config(run)
    assert str(refused.value) == f"{run / 'config.json'}: {problem}"
    page = parse(report.write_report(run))
    [note] = page.find("section").find_all("p", "problem")
    assert note.all_text().startswith(f"{run / 'config.json'}: {problem}. The kseg commands")
    assert "chaos ct 1.0.0" in page.find("table", "facts").all_text()


def test_a_cross_validation_shows_its_members_and_ensemble(tmp_path):
    run = tmp_path / "cv"
    config = write_config(run)
    config["ensemble"] = {
        "kind": "mean probability over members and mirrored copies",
        "members": [
            {"validation_fold": 1, "run": "folds/fold_1", "model": "folds/fold_1/best.keras",
             "arguments_unlike_first": {}},
            {"validation_fold": 2, "run": "folds/fold_2", "model": "folds/fold_2/best.keras",
             "arguments_unlike_first": {"epochs": 7}},
        ],
        "mirror_axes": [1], "mirrored_copies": 2,
        "out_of_fold": {"table": "evaluation/validation/scores.csv",
                        "mean": {"dice": 0.93972698}},
        "postprocessing": {"labels": [1], "dice_without": {"dice": 0.93972698},
                           "dice_with": {"dice": 0.95000001}, "rule": "nnU-Net's rule"},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    first = run / "folds" / "fold_1"
    first.mkdir(parents=True)
    write_history(first)  # two epochs
    (first / "best.keras.json").write_text(json.dumps(
        {"monitor": "val_volume_dice", "mode": "max", "best": 0.625, "epoch": 1}))
    (run / "folds" / "fold_2").mkdir()  # crashed before its first epoch

    page = parse(report.write_report(run))
    section = next(s for s in page.find_all("section")
                   if s.attributes.get("id") == "cross-validation")
    rows = [[cell.attributes["data-value"] for cell in row.find_all("td")]
            for row in section.find("table", "members").find("tbody").find_all("tr")]
    assert rows == [
        ["1", "folds/fold_1", "2", "val_volume_dice 0.6250 (epoch 2)", "none"],
        ["2", "folds/fold_2", "not there yet", "not there yet", '{"epochs": 7}'],
    ]
    facts = {row.find("th").all_text(): row.find("td").all_text()
             for row in section.find("table", "ensemble").find_all("tr")}
    assert facts["model"].endswith("2 members x 2 mirrored copies (axes [1])")
    assert facts["out-of-fold validation"].startswith("mean dice 0.9397 (")
    assert facts["post-processing"].startswith(
        "largest component of labels [1]; mean without: dice 0.9397; with: dice 0.9500.")

    training = next(s for s in page.find_all("section") if s.attributes.get("id") == "training")
    assert [f.attributes["id"] for f in training.find_all("figure")] == ["training-curves-fold-1"]
    notes = [n.all_text() for n in training.find_all("p", "missing")]
    assert notes == [f"No training history: history.csv is not in {run / 'folds' / 'fold_2'} "
                     "yet (it is written at the end of each epoch)."]


def test_each_member_history_is_read_once(tmp_path, monkeypatch):
    """The member table, the curves and the epoch table of a cross-validation come from
    one read of each history.csv (a live run appends between two reads)."""
    import builtins

    run = tmp_path / "cv"
    config = write_config(run)
    config["ensemble"] = {"members": [
        {"validation_fold": fold, "run": f"folds/fold_{fold}"} for fold in (1, 2)
    ]}
    (run / "config.json").write_text(json.dumps(config))
    histories = []
    for fold in (1, 2):
        (run / "folds" / f"fold_{fold}").mkdir(parents=True)
        histories.append(run / "folds" / f"fold_{fold}" / "history.csv")
    write_history(histories[0].parent)
    # Keras' CSVLogger writes NA for a value an epoch lacked: a gap in the curve
    histories[1].write_text("epoch,loss,val_volume_dice\n0,0.9,NA\n1,0.7,0.5\n2,0.6,0.55\n")
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    written = report.write_report(run)
    monkeypatch.setattr(builtins, "open", real_open)
    assert [opened.count(str(path)) for path in histories] == [1, 1]

    page = parse(written)
    members = page.find("table", "members").find("tbody").find_all("tr")
    assert [list(row.find_all("td"))[2].attributes["data-value"] for row in members] == ["2", "3"]
    training = next(s for s in page.find_all("section") if s.attributes.get("id") == "training")
    assert [f.attributes["id"] for f in training.find_all("figure")] == [
        "training-curves-fold-1", "training-curves-fold-2"]
    epoch_rows = [list(table.find("tbody").find_all("tr"))
                  for table in training.find_all("table", "history")]  # fmt: skip
    assert [len(rows) for rows in epoch_rows] == [2, 3]


def test_an_unreadable_member_history_is_named_not_a_crash(tmp_path):
    run = tmp_path / "cv"
    config = write_config(run)
    config["ensemble"] = {"members": [{"validation_fold": 1, "run": "folds/fold_1"}]}
    (run / "config.json").write_text(json.dumps(config))
    history = run / "folds" / "fold_1" / "history.csv"
    history.parent.mkdir(parents=True)
    history.write_bytes(b"epoch,loss\n0,\xff\xfe\n")  # not UTF-8: a file cut or overwritten

    page = parse(report.write_report(run))
    [member] = page.find("table", "members").find("tbody").find_all("tr")
    assert list(member.find_all("td"))[2].attributes["data-value"].startswith(
        "history.csv unreadable: 'utf-8' codec can't decode byte 0xff")
    training = next(s for s in page.find_all("section") if s.attributes.get("id") == "training")
    [note] = training.find_all("p", "problem")
    assert note.all_text().startswith(f"{history} cannot be shown: 'utf-8' codec")

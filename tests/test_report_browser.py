"""kseg.report in a real browser: headless Chromium driven over the DevTools protocol.

The report of a hand-made run folder is opened from the disk in Chromium (Debian's
``chromium`` package; ``.ci/run`` installs it, elsewhere the test is skipped when it is not
on PATH). The test talks to the browser over the Chrome DevTools Protocol on a loopback
port with a small standard-library WebSocket client, types into the page as a user would
(arrow keys on the slice slider, the mouse wheel over the slice, Home on the opacity
slider) and reads back the DOM and screenshots. Every slice of the case has its own
constant grey level, so a screenshot pixel says which slice is on screen.

The full-page screenshot is kept as ``report.png`` in the test's tmp folder and copied to
``$KSEG_TEST_ARTEFACTS`` when that is set.
"""

import base64
import csv
import io
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from kseg import report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60.0  # seconds any single wait on the browser may take
SLICES = 6
REFERENCE_BOX = np.s_[2:5, 8:24, 8:24]  # slices 2-4, rows and columns 8-23
PREDICTION_BOX = np.s_[2:5, 12:28, 8:24]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")


# --------------------------------------------------------------------------- protocol


class WebSocket:
    """The client side of RFC 6455, text frames only: what one DevTools session needs."""

    def __init__(self, url: str, timeout: float):
        if not url.startswith("ws://127.0.0.1:"):
            raise ValueError(f"expected a loopback DevTools URL, got {url}")
        address, _, path = url[len("ws://") :].partition("/")
        host, port = address.split(":")
        self.socket = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._receive_more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")

    def _receive_more(self):
        chunk = self.socket.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._receive_more()
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def send(self, text: str):
        payload = text.encode()
        length = len(payload)
        # Client frames are masked (RFC 6455 5.3); FIN + text opcode.
        if length < 126:
            header = struct.pack(">BB", 0x81, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack(">BBH", 0x81, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x81, 0x80 | 127, length)
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.socket.sendall(header + mask + masked)

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._take(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._take(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._take(8))
            payload = self._take(length)  # server frames are not masked
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0x9, 0xA):  # ping / pong
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self):
        self.socket.close()


class Page:
    """One browser tab: commands with ids, and the events that arrive meanwhile."""

    def __init__(self, url: str):
        self.connection = WebSocket(url, TIMEOUT)
        self.next_id = 0
        self.events = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.connection.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.connection.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for_event(self, method: str):
        deadline = time.monotonic() + TIMEOUT
        while not any(event.get("method") == method for event in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {TIMEOUT} s")
            self.events.append(json.loads(self.connection.receive()))

    def evaluate(self, expression: str, *, await_promise: bool = False):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True,
            awaitPromise=await_promise,
        )  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error / console.assert calls and error log entries."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def press(self, key: str, code: str, key_code: int):
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent", type=kind, key=key, code=code,
                windowsVirtualKeyCode=key_code,
            )  # fmt: skip

    def screenshot(self, clip: dict | None = None) -> bytes:
        # Images swapped by the viewer decode asynchronously: wait before capturing.
        self.evaluate(
            "Promise.all([...document.images].filter(i => i.src).map(i => i.decode()))",
            await_promise=True,
        )
        params = {"format": "png", "captureBeyondViewport": clip is None}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium listening on a loopback port; yields the first tab."""
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--force-device-scale-factor=1",
            "--window-size=1200,1000", "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    page = None
    try:
        # Port 0: Chromium picks a free port and writes it to DevToolsActivePort.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None:
                pytest.fail(f"chromium exited: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"chromium wrote no DevToolsActivePort within {TIMEOUT} s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as r:
            targets = json.load(r)
        tab = next(target for target in targets if target["type"] == "page")
        page = Page(tab["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        yield page
    finally:
        if page is not None:
            page.connection.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stderr.close()


# --------------------------------------------------------------------------- the run


def slice_level(index: int) -> int:
    """The grey level (0-255) of every pixel of slice ``index`` of the test case."""
    return round(255 * index / (SLICES - 1))


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    (run / "evaluation" / "test" / "cases").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "kseg_config_version": 1, "recipe": "chaos_liver", "seed": 0, "labels": {"liver": 1},
        "arguments": {"epochs": 2}, "created": "2026-12-02T03:00:00+00:00",
    }))  # fmt: skip
    (run / "history.csv").write_text("epoch,dice,loss\n0,0.5,0.8\n1,0.7,0.6\n")
    # Slice s is the constant level s / 5 (exact in 8 bits: 0, 51, 102, ..., 255).
    image = np.broadcast_to(
        (np.arange(SLICES, dtype=np.float32) / (SLICES - 1))[:, None, None], (SLICES, 32, 32)
    ).copy()
    reference = np.zeros(image.shape, np.uint8)
    reference[REFERENCE_BOX] = 1
    prediction = np.zeros(image.shape, np.uint8)
    prediction[PREDICTION_BOX] = 1
    rows = [["patient_id", "dice", "reference_empty"]]
    for patient in ("case-1", "case-2"):
        np.savez_compressed(
            run / "evaluation" / "test" / "cases" / f"{patient}.npz", image=image,
            reference=reference, prediction=prediction, spacing=np.ones(3),
        )  # fmt: skip
        rows.append([patient, repr(0.75), "False"])  # 12 x 16 overlap of two 16 x 16 boxes
    with open(run / "evaluation" / "test" / "scores.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return run


# --------------------------------------------------------------------------- the test

VIEWER = "document.getElementById('viewer-test-case-1')"


def stage_pixel(page: Page, row: int, column: int) -> np.ndarray:
    """The RGB on screen at pixel ``(row, column)`` of the slice (32 x 32) in the viewer."""
    box = page.evaluate(
        f"(() => {{ const s = {VIEWER}.querySelector('.stage'); s.scrollIntoView();"
        " const r = s.getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height, window.scrollX, window.scrollY]; })()"
    )
    left, top, width, height, scroll_x, scroll_y = box
    # The centre of the slice pixel, in page coordinates.
    x = scroll_x + left + (column + 0.5) * width / 32
    y = scroll_y + top + (row + 0.5) * height / 32
    png = page.screenshot({"x": x - 0.5, "y": y - 0.5, "width": 1, "height": 1})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[0, 0].astype(int)


def state(page: Page) -> dict:
    return page.evaluate(
        f"(() => {{ const v = {VIEWER}; const data = JSON.parse("
        "v.querySelector('script.slice-data').textContent);"
        " const position = parseInt(v.dataset.position, 10);"
        " return {position: position, slice: v.dataset.slice,"
        " slider: v.querySelector('.slice-slider').value,"
        " label: v.querySelector('.slice-label').textContent,"
        " imageMatches: v.querySelector('.layer-image').src === data.image[position],"
        " referenceHidden: v.querySelector('.layer-reference').hidden,"
        " referenceOpacity: v.querySelector('.layer-reference').style.opacity,"
        " predictionOpacity: v.querySelector('.layer-prediction').style.opacity,"
        " dice: v.querySelector('h4 .dice').textContent}; })()"
    )


def test_report_renders_and_its_viewer_follows_slider_wheel_and_opacity(run, chromium, tmp_path):
    page = chromium
    path = report.write_report(run)
    page.call("Page.navigate", url=path.resolve().as_uri())
    page.wait_for_event("Page.loadEventFired")

    assert page.evaluate("document.title") == "kseg report: chaos_liver"
    assert page.evaluate("document.querySelectorAll('section.viewer').length") == 2
    # Opens on slice 2, the first with the most reference pixels.
    shown = state(page)
    assert shown["position"] == 2 and shown["slice"] == "2" and shown["imageMatches"]
    assert shown["dice"] == "Dice 0.7500"
    assert shown["label"] == f"slice 2 (3 of {SLICES} shown)"
    assert np.all(np.abs(stage_pixel(page, 0, 0) - slice_level(2)) <= 2)

    # The keyboard on the focused slider, as a user moves it: one slice per arrow.
    page.evaluate(f"{VIEWER}.querySelector('.slice-slider').focus()")
    page.press("ArrowRight", "ArrowRight", 39)
    page.press("ArrowRight", "ArrowRight", 39)
    shown = state(page)
    assert (shown["position"], shown["slider"], shown["imageMatches"]) == (4, "4", True)
    assert np.all(np.abs(stage_pixel(page, 0, 0) - slice_level(4)) <= 2)

    # The wheel over the slice: down moves on, up moves back; clamped at the last slice.
    def wheel(delta_y):
        x, y = page.evaluate(
            f"(() => {{ const r = {VIEWER}.querySelector('.stage').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        page.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0,
                  deltaY=delta_y)  # fmt: skip

    wheel(120)
    assert state(page)["position"] == 5
    wheel(120)
    assert state(page)["position"] == 5
    shown = state(page)
    assert shown["referenceHidden"]  # slice 5 holds no reference: no layer image
    assert np.all(np.abs(stage_pixel(page, 16, 16) - slice_level(5)) <= 2)
    wheel(-120)
    wheel(-120)
    shown = state(page)
    assert shown["position"] == 3 and not shown["referenceHidden"] and shown["imageMatches"]

    # Slice 3: row 14, column 14 is inside both masks, on neither border: the reference is
    # only outlined, so what shows is the prediction's fill, at the opacity the control sets.
    inside = stage_pixel(page, 14, 14)
    assert inside[0] > inside[1] + 20 and inside[2] > inside[1] + 20  # magenta over grey
    page.evaluate(f"{VIEWER}.querySelector('.opacity').focus()")
    page.press("Home", "Home", 36)
    shown = state(page)
    assert shown["referenceOpacity"] == shown["predictionOpacity"] == "0"
    assert np.all(np.abs(stage_pixel(page, 14, 14) - slice_level(3)) <= 2)
    # Row 8 is the reference's top border: opaque green where the layer is fully shown.
    page.press("End", "End", 35)
    assert state(page)["referenceOpacity"] == "1"
    assert np.all(np.abs(stage_pixel(page, 8, 10) - (0, 204, 0)) <= 2)
    # Unticking the reference hides it whatever the opacity.
    page.evaluate(f"{VIEWER}.querySelector('.show-reference').click()")
    assert state(page)["referenceOpacity"] == "0"
    assert np.all(np.abs(stage_pixel(page, 8, 10) - slice_level(3)) <= 2)

    screenshot = page.screenshot()
    (tmp_path / "report.png").write_bytes(screenshot)
    artefacts = os.environ.get("KSEG_TEST_ARTEFACTS")
    if artefacts:
        pathlib.Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", pathlib.Path(artefacts) / "report.png")
    assert Image.open(io.BytesIO(screenshot)).size[1] > 1000  # the whole page, not a blank

    assert page.errors() == []

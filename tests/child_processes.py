"""Child processes for the multi-process tests (multi-worker training, distributed search,
recipes under a strategy): free loopback ports, and a child whose stdout is read as JSON
lines while its stderr is kept in a file for the failure message.

Every wait has a deadline and ``kill`` always reaps the child, so a test that fails or hangs
stops by itself and leaves no process behind (call ``kill`` in ``finally``).
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (held together while chosen, so no two are
    the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for one in sockets:
            one.bind(("127.0.0.1", 0))
        return [one.getsockname()[1] for one in sockets]
    finally:
        for one in sockets:
            one.close()


class JsonLinesChild:
    """``python -c code *arguments`` on the CPU with this checkout on its path; lines of its
    stdout that start with ``{`` are kept in ``messages`` as JSON."""

    def __init__(self, tmp_path, name: str, code: str, arguments, environment: dict):
        self.name = name
        self.stderr_path = tmp_path / f"{name}.stderr"
        # CUDA hidden: processes sharing one GPU would each take all of its memory
        environment = dict(
            environment, PYTHONPATH=str(REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
        )  # fmt: skip
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, *map(str, arguments)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=environment,
                cwd=REPOSITORY,
            )
        self.messages = []
        self._ended = False
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()

    def _read_lines(self):
        # a thread, not select() on the pipe: readline() buffers lines select() cannot see
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read_until(self, key, deadline):
        """The first message holding ``key``, reading until ``deadline`` (monotonic)."""
        while True:
            for message in self.messages:
                if key in message:
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {key!r} in time; {self.describe()}")
            try:
                line = None if self._ended else self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._ended = True
                self.process.wait(timeout=30)
                raise AssertionError(
                    f"{self.name} ended (code {self.process.returncode}) before {key!r}; "
                    f"{self.describe()}"
                )
            if line.startswith("{"):  # not the logs and summaries printed beside them
                self.messages.append(json.loads(line))

    def describe(self):
        return f"messages {self.messages}; stderr tail:\n{self.stderr_path.read_text()[-3000:]}"

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        self.process.stdout.close()
        self.process.stdin.close()


def without_tf_config() -> dict:
    """This process's environment without a ``TF_CONFIG`` of its own."""
    environment = dict(os.environ)
    environment.pop("TF_CONFIG", None)
    return environment

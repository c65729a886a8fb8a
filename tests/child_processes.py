"""Child processes for the multi-process tests (multi-worker training, distributed search,
recipes under a strategy, kills): free loopback ports, a child whose stdout is read as JSON
lines while its stderr is kept in a file for the failure message, and a :class:`Zygote`
that imports TensorFlow once and forks the children of a test from there.

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
import textwrap
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

    def __init__(self, tmp_path, name: str, code: str, arguments, environment: dict, zygote=None):
        """``zygote``: a :class:`Zygote` to fork the child from, rather than a new Python."""
        self.name = name
        self.stderr_path = tmp_path / f"{name}.stderr"
        # CUDA hidden: processes sharing one GPU would each take all of its memory
        environment = dict(
            environment, PYTHONPATH=str(REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
        )  # fmt: skip
        with open(self.stderr_path, "w") as stderr:
            if zygote is not None:
                self.process = zygote.popen(code, arguments, environment, stderr)
            else:
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


# The zygote: imports what its children need (TensorFlow's import alone is about 6 CPU-s),
# then forks one child per request, before any TensorFlow runtime exists: each child starts
# its own runtime, as a process started from scratch would. A request is one packet on a
# SOCK_SEQPACKET socket carrying the child's stdin, stdout and stderr; the zygote answers
# with the child's pid, and again with its exit code when it ends.
_ZYGOTE = textwrap.dedent(
    """
    import atexit
    import ctypes
    import importlib
    import json
    import os
    import select
    import signal
    import socket
    import sys
    import threading
    import traceback
    import types

    channel = socket.socket(fileno=int(sys.argv[1]))
    for name in sys.argv[2:]:
        importlib.import_module(name)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfds = {}


    def run_child(request, fds):
        code = 1
        try:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote
            channel.close()
            for pidfd in pidfds:
                os.close(pidfd)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
            sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
            sys.stderr = sys.__stderr__ = open(
                2, "w", buffering=1, errors="backslashreplace", closefd=False)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["environment"])
            sys.argv = [request["argv0"], *request["arguments"]]
            if "numpy" in sys.modules:  # a new process's unseeded state, as random's after fork
                sys.modules["numpy"].random.seed()
            main = types.ModuleType("__main__")
            main.__file__ = request["argv0"]
            sys.modules["__main__"] = main
            if request["argv0"] != "-c":
                sys.path[0] = os.path.dirname(os.path.abspath(request["argv0"]))
            try:
                exec(compile(request["code"], request["argv0"], "exec"), main.__dict__)
                code = 0
            except SystemExit as stop:
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            threading._shutdown()  # as the interpreter does at exit
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)


    channel.send(b'{"ready": true}')
    while True:
        readable, _, _ = select.select([channel, *pidfds], [], [])
        for ready in readable:
            if ready is channel:
                data, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
                if not data:  # the test is over (or died): its children go with it
                    for pidfd, pid in pidfds.items():
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                    os._exit(0)  # nothing to tear down: it never ran TensorFlow
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    run_child(json.loads(data), fds)
                for fd in fds:
                    os.close(fd)
                pidfds[os.pidfd_open(pid)] = pid
                channel.send(json.dumps({"pid": pid}).encode())
            else:
                pid = pidfds.pop(ready)
                os.close(ready)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                channel.send(json.dumps({"ended": pid, "code": code}).encode())
    """
)

# what the children of the tests import, loaded once in the zygote
PRELOAD = ("numpy", "tensorflow", "keras")
#: ``python -m kseg`` as the code of a forked child (its arguments: the child's arguments)
PYTHON_M_KSEG = "import runpy\nrunpy.run_module('kseg', run_name='__main__', alter_sys=True)\n"


def can_fork_children() -> bool:
    """Whether this platform gives the zygote what it needs (Linux: pidfds, fd passing)."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


class Zygote:
    """A Python process that imports ``preload`` once, then forks each child asked of it.

    :meth:`popen` returns a :class:`ForkedProcess`, which answers like ``subprocess.Popen``
    (``stdin``, ``stdout``, ``pid``, ``poll``, ``wait``, ``kill``, ``communicate``). Call
    :meth:`close` in ``finally`` (or use it in ``with``): it kills the zygote and every child
    still running.
    Where :func:`can_fork_children` is false, ``popen`` starts a plain process instead.
    """

    def __init__(self, tmp_path, preload=PRELOAD, environment=None):
        self.forks = can_fork_children()
        self._ended = {}
        self._replies = queue.Queue()
        self._condition = threading.Condition()
        self._lock = threading.Lock()
        if not self.forks:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = dict(
            environment or os.environ, PYTHONPATH=str(REPOSITORY), TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
        )  # fmt: skip
        environment.pop("TF_CONFIG", None)
        self.stderr_path = tmp_path / "zygote.stderr"
        with open(self.stderr_path, "w") as stderr, theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE, str(theirs.fileno()), *preload],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=environment,
                cwd=REPOSITORY, pass_fds=[theirs.fileno()],
            )  # fmt: skip
        self._channel = ours
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self):
        while True:
            try:
                data = self._channel.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._condition:
                    self._ended.setdefault(None, True)  # the zygote is gone
                    self._condition.notify_all()
                self._replies.put(None)
                return
            reply = json.loads(data)
            if "ready" in reply:  # the imports are done: requests sent before waited
                continue
            if "ended" in reply:
                with self._condition:
                    self._ended[reply["ended"]] = reply["code"]
                    self._condition.notify_all()
            else:
                self._replies.put(reply)

    def popen(
        self, code, arguments, environment, stderr, *, argv0="-c", cwd=REPOSITORY, stdout=None
    ):
        """``python -c code *arguments`` (or the script ``argv0`` holding ``code``) with
        ``environment``, a stdin pipe, ``stderr`` (an open file) and ``stdout``: an open
        file, or a pipe where ``None``."""
        if not self.forks:
            command = [sys.executable, "-c", code] if argv0 == "-c" else [sys.executable, argv0]
            return subprocess.Popen(
                [*command, *map(str, arguments)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if stdout is None else stdout, stderr=stderr, text=True,
                env=environment, cwd=cwd,
            )  # fmt: skip
        request = {
            "code": code, "arguments": [str(one) for one in arguments], "argv0": str(argv0),
            "environment": dict(environment), "cwd": str(cwd),
        }  # fmt: skip
        stdin_read, stdin_write = os.pipe()
        if stdout is None:
            stdout_read, stdout_write = os.pipe()
        else:
            stdout_read, stdout_write = None, os.dup(stdout.fileno())
        try:
            with self._lock:
                socket.send_fds(
                    self._channel, [json.dumps(request).encode()],
                    [stdin_read, stdout_write, stderr.fileno()],
                )  # fmt: skip
                # the first waits for the zygote's imports, slow on a busy machine
                reply = self._replies.get(timeout=600)
        finally:
            os.close(stdin_read)
            os.close(stdout_write)
        if reply is None:
            os.close(stdin_write)
            if stdout_read is not None:
                os.close(stdout_read)
            raise AssertionError(f"the zygote ended: {self.stderr_path.read_text()[-3000:]}")
        return ForkedProcess(self, reply["pid"], stdin_write, stdout_read)

    def _wait(self, pid, timeout):
        with self._condition:
            if not self._condition.wait_for(
                lambda: pid in self._ended or None in self._ended, timeout
            ):
                return None
            return self._ended.get(pid, -signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        if not self.forks:
            return
        # the zygote kills its children and leaves; shutdown, not close alone, which leaves
        # the socket open while the reader thread waits in recv on it
        try:
            self._channel.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed already, or the zygote is gone
            pass
        self._channel.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=30)


class ForkedProcess:
    """A child of a :class:`Zygote`, answering like ``subprocess.Popen`` with text pipes."""

    def __init__(self, zygote, pid, stdin_fd, stdout_fd):
        self._zygote = zygote
        self.pid = pid
        self.returncode = None
        self.stdin = open(stdin_fd, "w")
        self.stdout = None if stdout_fd is None else open(stdout_fd)
        try:  # signals go through a pidfd, never to a pid the system has given another
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # ended and reaped already
            self._pidfd = None

    def poll(self):
        if self.returncode is None:
            self._ended(self._zygote._wait(self.pid, 0))
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            code = self._zygote._wait(self.pid, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            self._ended(code)
        return self.returncode

    def _ended(self, code):
        if code is not None:
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def send_signal(self, number):
        if self.returncode is None and self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, number)
            except ProcessLookupError:
                pass

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout=None):
        """Writes ``input``, closes stdin, reads stdout to its end; ``(stdout, None)``."""
        if input:
            try:
                self.stdin.write(input)
                self.stdin.flush()
            except BrokenPipeError:
                pass
        if not self.stdin.closed:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass
        if self.stdout is None:
            self.wait(timeout)
            return None, None
        output = []
        reader = threading.Thread(target=lambda: output.append(self.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
        self.stdout.close()
        self.wait(timeout)
        return output[0], None


def run_forked(
    zygote, code, arguments=(), *, stderr_path, environment=None, cwd=REPOSITORY, timeout=300
):
    """``python -c code *arguments`` forked from ``zygote`` and waited for, for the tests
    that need a process with no state of this one (no kseg imported, no function traced)
    but not TensorFlow's import of a new interpreter. Returns ``(returncode, stdout,
    stderr)``, with stdout and the text of stderr (kept in ``stderr_path``)."""
    environment = dict(
        os.environ if environment is None else environment, PYTHONPATH=str(REPOSITORY),
        TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
    )  # fmt: skip
    with open(stderr_path, "w") as stderr:
        process = zygote.popen(code, arguments, environment, stderr, cwd=cwd)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
        process.wait(timeout=30)
    return process.returncode, stdout, pathlib.Path(stderr_path).read_text()

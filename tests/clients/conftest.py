"""Fixtures for the real-client tests: a `lode dev` broker process and unique topic names.

The broker binary is $LODE_BIN, or target/debug/lode in the repository. Nothing here
builds it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "lode"
START_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 20_000


def lode_bin() -> Path:
    return Path(os.environ.get("LODE_BIN", str(DEFAULT_BIN)))


# `lode dev` brokers in one process (its default): Kafka ports PORT..PORT+2, controller
# ports PORT+100..PORT+102.
DEV_BROKERS = 3


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(block: int = DEV_BROKERS) -> int:
    """A port PORT such that PORT..PORT+block and PORT+100..PORT+100+block are all free
    (as far as one can tell before binding them)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        wanted = [port + i for i in range(block)] + [port + 100 + i for i in range(block)]
        if wanted[-1] < 65536 and all(_bindable(p) for p in wanted):
            return port
    raise RuntimeError("no free block of ports found")


class BrokerError(RuntimeError):
    pass


class Broker:
    """One `lode dev` process (three brokers, `DEV_BROKERS`) on 127.0.0.1:port.. with
    its own data dir.

    stdout and stderr go to `log_path` (appended across restarts); failures of a test
    that used the broker show the part of the log written during that test.
    """

    def __init__(self, data_dir: Path, port: int | None = None, binary: Path | None = None):
        self.binary = Path(binary or lode_bin())
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0
        # Seconds from spawning the process to seeing its bootstrap line, per start.
        self.startup_seconds: list[float] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        """The Kafka ports of every broker of the `lode dev` cluster."""
        return [self.port + i for i in range(DEV_BROKERS)]

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- logs ---------------------------------------------------------------------

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_log(self, since: int = 0, limit: int = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return "(no log file)"
        text = data.decode("utf-8", errors="replace")
        if len(text) > limit:
            text = f"... ({len(text) - limit} chars cut) ...\n" + text[-limit:]
        return text

    # ---- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> float:
        """Spawn the broker; wait for its bootstrap line and an accepting port.

        Returns the seconds it took until the bootstrap line appeared.
        """
        if self.is_running():
            raise BrokerError("broker already running")
        if not self.binary.exists():
            raise BrokerError(
                f"lode binary not found at {self.binary} (set LODE_BIN or build it: "
                "cargo build -p lode-cli)"
            )
        log_start = self.log_size()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(
            f"\n===== start #{self.starts + 1}: {self.binary} dev --port {self.port} "
            f"--data-dir {self.data_dir} =====\n".encode()
        )
        self._log_file.flush()
        log_start_after_banner = self.log_size()
        cmd = [
            str(self.binary), "dev",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
        ]
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain logs in failure reports
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env,
        )
        self.starts += 1
        want = f"bootstrap {self.bootstrap}"
        deadline = t0 + timeout
        seen_at = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"broker exited with code {self.proc.returncode} before printing "
                    f"{want!r}; log:\n{self.read_log(log_start)}"
                )
            if seen_at is None and want in self.read_log(log_start_after_banner, limit=10**9):
                seen_at = time.monotonic()
            if seen_at is not None and self._port_accepts():
                took = seen_at - t0
                self.startup_seconds.append(took)
                return took
            time.sleep(0.05)
        what = "the TCP port to accept" if seen_at is not None else f"the line {want!r}"
        self.kill_quietly()
        raise BrokerError(
            f"broker did not become ready within {timeout:.0f}s (waited for {what}); "
            f"log:\n{self.read_log(log_start)}"
        )

    def _port_accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the process to exit; returns its exit code
        (negative signal number when killed by a signal, as subprocess reports it)."""
        if self.proc is None:
            raise BrokerError("broker was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise BrokerError(
                    f"broker did not exit within {timeout:.0f}s of signal {sig}; killed it. "
                    f"log tail:\n{self.read_log(max(0, self.log_size() - 8000))}"
                )
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def restart(self, sig: int | None = None, timeout: float = START_TIMEOUT_S) -> float:
        """Start again on the same port and data dir (stopping first with `sig` if given
        and still running). Returns the seconds until the bootstrap line."""
        if sig is not None and self.is_running():
            self.stop(sig)
        if self.is_running():
            raise BrokerError("restart() while running: stop it first or pass sig")
        return self.start(timeout=timeout)

    def kill_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# ---- fixtures ------------------------------------------------------------------------

# Every broker started by a fixture, so that a failing test can show their logs.
_BROKERS: list[Broker] = []


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("session-broker") / "data")
    _BROKERS.append(b)
    try:
        b.start()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)
    yield b
    if b.is_running():
        code = b.stop(signal.SIGTERM)
        if code != 0:
            # Reported at the end of the session; tests have already run.
            print(f"\nsession broker exited with code {code} on SIGTERM; log tail:\n"
                  f"{b.read_log(max(0, b.log_size() - 8000))}")
    b.kill_quietly()


@pytest.fixture
def broker(_session_broker):
    """The shared broker. Restarted if an earlier test left it dead; a test during which
    it dies gets an error naming the exit code."""
    b = _session_broker
    if not b.is_running():
        try:
            b.restart()
        except BrokerError as e:
            pytest.fail(f"session broker was dead and could not be restarted: {e}",
                        pytrace=False)
    yield b
    if not b.is_running():
        code = b.proc.returncode if b.proc else None
        pytest.fail(f"broker exited (code {code}) during the test; log tail:\n"
                    f"{b.read_log(max(0, b.log_size() - 8000))}", pytrace=False)


@pytest.fixture
def fresh_broker(tmp_path):
    """A broker of the test's own (fresh data dir), for restart tests."""
    b = Broker(tmp_path / "data")
    _BROKERS.append(b)
    try:
        b.start()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)
    yield b
    b.kill_quietly()
    _BROKERS.remove(b)


@pytest.fixture
def topic(request):
    """A unique topic name per test (legal Kafka topic characters only)."""
    base = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name).strip("-")[:80]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kcat_path():
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not on PATH (tests/clients/run.sh installs it)", pytrace=False)
    return path


# ---- show broker logs for failing tests --------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item._lode_log_marks = {id(b): b.log_size() for b in _BROKERS}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    marks = getattr(item, "_lode_log_marks", {})
    for i, b in enumerate(list(_BROKERS)):
        since = marks.get(id(b), 0)
        text = b.read_log(since)
        if text.strip():
            report.sections.append(
                (f"lode broker log #{i} ({b.bootstrap}, {report.when})", text)
            )


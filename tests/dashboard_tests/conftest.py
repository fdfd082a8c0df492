"""Fixtures for the dashboard tests: a demo storage, an optuna-dashboard server, a browser.

``demo_storage`` runs ``optuna-ext demo`` once per test session (shared by pytest-xdist
workers through a lock file) into a SQLite file, so the dashboard is shown studies made by the
package itself, with its saved figures and checkpoints. ``OPTUNA_EXT_DASHBOARD_BUDGET`` picks
the demo's budget (``tiny``, the default, or ``default`` for the README's screenshots);
``OPTUNA_EXT_DASHBOARD_DEMO_DIR`` keeps the demo's storage in that directory and reuses it in
later runs (for working on the tests; by default each session makes its own).

``dashboard`` starts the ``optuna-dashboard`` command on that storage and its artifact
directory, on 127.0.0.1 and a free port, and stops it afterwards.

``browser`` is Debian's Chromium (``/usr/bin/chromium``, or ``OPTUNA_EXT_CHROMIUM``) driven by
Playwright's Python package; Playwright never downloads a browser here. Without Chromium or
Playwright the browser tests skip, except under ``CI=true``, where they fail.

Screenshots go to a temporary directory, or to ``docs/screenshots/`` when
``OPTUNA_EXT_WRITE_SCREENSHOTS=1``.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import fcntl
import json
import os
from pathlib import Path
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING
import urllib.error
import urllib.request

import optuna
import pytest


if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import BrowserContext
    from playwright.sync_api import Page


REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "docs" / "screenshots"
CHROMIUM_ENV = "OPTUNA_EXT_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
BUDGET_ENV = "OPTUNA_EXT_DASHBOARD_BUDGET"
DEMO_DIR_ENV = "OPTUNA_EXT_DASHBOARD_DEMO_DIR"
WRITE_SCREENSHOTS_ENV = "OPTUNA_EXT_WRITE_SCREENSHOTS"
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 1280, 800
# Chromium on a machine without network: no background connections, no first-run work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip for a missing browser outside CI; fail in CI, where the browser tests must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the browser tests must run, not skip)")
    pytest.skip(reason)


@dataclasses.dataclass(frozen=True)
class DemoStorage:
    """A storage written by ``optuna-ext demo``, and its artifact directory."""

    url: str
    artifact_dir: Path
    budget: str

    def load(self, method: str) -> optuna.Study:
        return optuna.load_study(study_name=f"demo-{method}", storage=self.url)

    def study_id(self, method: str) -> int:
        storage = optuna.storages.RDBStorage(self.url)
        try:
            return storage.get_study_id_from_name(f"demo-{method}")
        finally:
            storage.remove_session()
            storage.engine.dispose()


def _shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by every pytest-xdist worker of this session."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def demo_storage(tmp_path_factory: pytest.TempPathFactory) -> DemoStorage:
    """The studies of ``optuna-ext demo``, one per method, made once per session."""
    budget = os.environ.get(BUDGET_ENV, "tiny")
    if os.environ.get(DEMO_DIR_ENV):
        root = Path(os.environ[DEMO_DIR_ENV]) / budget  # kept: later sessions reuse it
    else:
        root = _shared_tmp(tmp_path_factory) / f"dashboard-demo-{budget}"
    root.mkdir(parents=True, exist_ok=True)
    db = root / "demo.db"
    artifacts = root / "artifacts"
    done = root / "done.json"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs the demo, the others wait
        if not done.exists():
            cmd = [sys.executable, "-m", "optuna_ext.cli", "demo", "--budget", budget]
            cmd += ["--no-progress", "--storage", f"sqlite:///{db}", "--artifact-dir"]
            cmd += [str(artifacts)]
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=300 if budget == "tiny" else 3600,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
            done.write_text(json.dumps({"command": cmd}))
    return DemoStorage(url=f"sqlite:///{db}", artifact_dir=artifacts, budget=budget)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_command() -> list[str]:
    """The ``optuna-dashboard`` script of this Python's environment."""
    script = Path(sys.executable).with_name("optuna-dashboard")
    if script.exists():
        return [str(script)]
    found = shutil.which("optuna-dashboard")
    assert found is not None, "optuna-dashboard (a dependency of optuna-ext) is not installed"
    return [found]


@dataclasses.dataclass
class Dashboard:
    """A running ``optuna-dashboard`` process."""

    process: subprocess.Popen[str]
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_dashboard(args: list[str], port: int, log: Path, timeout: float = 90.0) -> Dashboard:
    """Start ``optuna-dashboard ARGS --port PORT`` and wait until its API answers."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*dashboard_command(), *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    dashboard = Dashboard(process=process, host="127.0.0.1", port=port, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"optuna-dashboard exited ({process.returncode}):\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{dashboard.url}/api/studies", timeout=5) as response:
                if response.status == 200:
                    return dashboard
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            dashboard.stop()
            raise AssertionError(
                f"optuna-dashboard did not answer in {timeout} s:\n{log.read_text()}"
            )
        time.sleep(0.25)


@pytest.fixture(scope="module")
def dashboard(
    demo_storage: DemoStorage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """optuna-dashboard on the demo storage, its checkpoints, 127.0.0.1 and a free port."""
    args = [demo_storage.url, "--artifact-dir", str(demo_storage.artifact_dir)]
    args += ["--host", "127.0.0.1"]
    log = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    server = start_dashboard(args, free_port(), log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no browser download)."""
    executable = os.environ.get(CHROMIUM_ENV, DEFAULT_CHROMIUM)
    if not os.access(executable, os.X_OK):
        missing(
            f"no Chromium at {executable} (install Debian's: apt-get install -y chromium; "
            f"or set {CHROMIUM_ENV})"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        missing(f"Playwright's Python package is not installed ({e}): pip install playwright")
    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary user-data directory.
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    """One context per module, so the dashboard's 6 MB script is fetched once."""
    context = browser.new_context(
        viewport={"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT}, device_scale_factor=1
    )
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``docs/screenshots`` when ``OPTUNA_EXT_WRITE_SCREENSHOTS=1``, else a temporary one."""
    if os.environ.get(WRITE_SCREENSHOTS_ENV, "") in ("1", "true", "yes"):
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        return SCREENSHOT_DIR
    return tmp_path_factory.mktemp("screenshots")

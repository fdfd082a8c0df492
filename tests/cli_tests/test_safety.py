"""The CLI never shows a storage URL's password, and starts no server.

``tests/test_storage_outage.py`` covers a server that goes away mid-run; here the URL is bad
from the start: a server that does not answer, a driver that does not exist or is not
installed, a string that is no URL. Everything the process could show is captured: stdout,
stderr, and every log record down to DEBUG (SQLAlchemy's and Optuna's included).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import optuna_ext
from optuna_ext.cli import build_parser
from optuna_ext.cli import main


PASSWORD = "hunter2-Xq81"

BAD_URLS = {
    "unreachable-postgres": f"postgresql+psycopg://alice:{PASSWORD}@127.0.0.1:1/runs",
    "unreachable-mysql": f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:1/test",
    "unknown-driver": f"postgresql+nosuchdriver://alice:{PASSWORD}@127.0.0.1:1/runs",
    "driver-not-installed": f"postgresql+psycopg2://alice:{PASSWORD}@127.0.0.1:1/runs",
    "unknown-dialect": f"nosuchdb://alice:{PASSWORD}@127.0.0.1/runs",
    "unparsable": f"nonsense://alice:{PASSWORD}@@[",
    "no-scheme": f"alice:{PASSWORD}@127.0.0.1/runs",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_bad_storage_url_never_shows_the_password(
    url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    argv = ["demo", "--budget", "tiny", "--methods", "tpe", "--storage", url]
    status = main([*argv, "--artifact-dir", str(tmp_path / "artifacts")])
    out, err = capsys.readouterr()
    assert status == 2
    assert PASSWORD not in out + err + caplog.text
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("optuna-ext: error: "), err
    assert "***" in lines[0]  # the URL is named, masked


_SERVER_MODULES = ("socket", "socketserver", "http.server", "wsgiref", "bottle", "gunicorn")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_cli_starts_no_server() -> None:
    """Nothing in the package can listen on a port: the only command is ``demo``, which prints
    the ``optuna-dashboard`` command instead of starting it.

    A new command that starts a server must bind 127.0.0.1 unless told otherwise (issue 8):
    give it a test of that, a row in docs/bad_inputs.md, and list it here.
    """
    commands = next(
        action
        for action in build_parser()._actions
        if action.dest == "command"  # the subparsers
    )
    assert sorted(commands.choices) == ["demo"]  # type: ignore[arg-type]
    package = Path(optuna_ext.__file__).parent
    for path in sorted(package.rglob("*.py")):
        for module in _imported_modules(path):
            assert not any(module == m or module.startswith(m + ".") for m in _SERVER_MODULES), (
                f"{path.relative_to(package.parent)} imports {module}"
            )
            assert module not in ("optuna_dashboard.run_server", "optuna_dashboard._cli")
            assert module != "subprocess", f"{path} may start a server process"


def test_the_dashboard_command_binds_its_default_host(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed command has no ``--host``, so optuna-dashboard binds 127.0.0.1."""
    from optuna_dashboard._config import DashboardConfig

    from optuna_ext.cli import _demo

    monkeypatch.setitem(_demo.DEMOS, "tpe", lambda ctx: [])  # no training: the output only
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert main(["demo", "--methods", "tpe", "--storage", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if "optuna-dashboard '" in line)
    assert "--host" not in command
    assert DashboardConfig().host == "127.0.0.1"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--threads", "0"], "--threads is 0, but must be >= 1"),
        (["--methods", ","], "unknown method"),
        (["--methods", "tpe,nope"], r"unknown method\(s\) \['nope'\]"),
        (["--budget", "huge"], "invalid choice: 'huge'"),
        (["--seed", "x"], "invalid int value: 'x'"),
    ],
)
def test_bad_demo_arguments_exit_2(
    argv: list[str], match: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import re

    try:
        status = main(["demo", "--storage", f"sqlite:///{tmp_path / 'x.db'}", *argv])
    except SystemExit as e:  # argparse's own errors
        status = int(e.code or 0)
    assert status == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "x.db").exists()  # refused before the storage was opened

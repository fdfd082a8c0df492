"""The ``optuna-ext`` command line.

``optuna-ext demo`` runs short studies on the digits task into a storage and prints a summary.
Every command has ``--help``. Errors a user can act on (a bad storage URL, a study that
optimizes the other way) print one line and exit with status 2. A storage that fails during
the run (a database server that goes away) ends the command with one ``optuna-ext: error:``
line and status 1; what was told before stays in the storage, and the same command resumes.
No storage URL is ever printed with its password. The command line starts no server: it
prints the ``optuna-dashboard`` command (which binds 127.0.0.1 unless given ``--host``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

from optuna_ext._storage import describe_storage_failure
from optuna_ext._storage import find_storage_error
from optuna_ext._storage import StorageError
from optuna_ext.cli import _demo
from optuna_ext.version import __version__


__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-ext",
        description="Learning-rate-aware hyper-parameter optimization on Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"optuna-ext {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _demo.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except StorageError as e:
        print(f"optuna-ext: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if find_storage_error(e) is None:
            raise
        message = describe_storage_failure(e, str(getattr(args, "storage", "")))
        print(
            f"optuna-ext: error: {message} Run the same command again to resume.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("optuna-ext: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130

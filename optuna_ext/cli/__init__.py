"""The ``optuna-ext`` command line.

``optuna-ext demo`` runs short studies on the digits task into a storage and prints a summary.
Every command has ``--help``. Errors a user can act on (a bad storage URL, a study that
optimizes the other way) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

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
    except KeyboardInterrupt:
        print("optuna-ext: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130

from __future__ import annotations

import sys

from optuna_ext.cli import main


if __name__ == "__main__":
    sys.exit(main())

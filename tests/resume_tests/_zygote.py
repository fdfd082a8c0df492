"""Start worker processes quickly: fork them from a process that has imported everything.

Importing optuna-ext (torch, optuna, scipy) takes 2-4 s of CPU, more than a whole resume run of
the small studies here. ``python -m tests.resume_tests._zygote`` imports the workers' module
once, then reads one JSON command per line on stdin, ``{"argv": [...], "log": PATH}``, and for
each forks a child that runs ``_workers.run_logged(argv, PATH)``. It writes the child's pid to
``PATH.pid`` at once and its exit code (negative: killed by that signal) to ``PATH.status``
when it ends, then takes the next command. The zygote never opens a storage or starts a
thread, so every child is a new process with new sampler, pruner and storage objects; only the
imported modules are shared.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(argv: list[str], log: str) -> int:
    from tests.resume_tests import _workers

    try:
        _workers.run_logged(argv, log)
        return 0
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 1
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1


def main() -> None:
    import tests.resume_tests._workers  # noqa: F401  (the import the children share)

    for line in sys.stdin:
        command = json.loads(line)
        argv, log = list(command["argv"]), str(command["log"])
        pid = os.fork()
        if pid == 0:
            os._exit(_child(argv, log))
        with open(log + ".pid.tmp", "w") as f:
            f.write(str(pid))
        os.replace(log + ".pid.tmp", log + ".pid")
        _, status = os.waitpid(pid, 0)
        with open(log + ".status.tmp", "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.replace(log + ".status.tmp", log + ".status")


if __name__ == "__main__":
    main()

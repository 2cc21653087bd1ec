"""Start kmemdump in a program run by ``kmemdump run``, without changing the program.

``kmemdump run`` puts this directory first on ``PYTHONPATH``; Python imports ``sitecustomize``
at start-up, which calls ``kmemdump.init(table=True, ...)`` and then hands over to any other
``sitecustomize`` further down the path, so an existing one still runs. The environment variables
are removed afterwards, so the program's own child processes are left alone.
"""

import contextlib
import importlib
import os
import sys


def _kmemdump_autoinit() -> None:
    if os.environ.pop("KMEMDUMP_AUTOINIT", None) != "1":
        return
    source = os.environ.pop("KMEMDUMP_SRC", "")
    timeout = os.environ.pop("KMEMDUMP_WATCHDOG", "")
    feeder = os.environ.pop("KMEMDUMP_FEEDER", "progress")
    supervisor = os.environ.pop("KMEMDUMP_SUPERVISOR", "")
    try:
        import kmemdump
    except ImportError:  # another interpreter: the producer is pure standard library
        if source:
            sys.path.append(source)
        import kmemdump
    try:
        seconds = float(timeout) if timeout else None
        kmemdump.init(table=True, watchdog=seconds)
        expect = getattr(kmemdump.current_backend(), "expect_collector", None)
        if supervisor.isdigit() and callable(expect):
            expect(int(supervisor))  # the table is run's: another collector leaves it to run
        if seconds is not None:
            # on the program's behalf: it stops if the program arms a watchdog of its own; with the
            # progress check it beats only while some thread gets somewhere (a deadlock is dumped)
            kmemdump.start_feeder(check_progress=feeder == "progress", on_behalf=True)
    except Exception as err:  # never stop the program from starting
        print(f"kmemdump: autoinit failed: {err}", file=sys.stderr)


def _chain(here: str) -> None:
    """Import the next ``sitecustomize`` on the path, if any."""
    saved = sys.path[:]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
        with contextlib.suppress(ImportError):
            importlib.import_module("sitecustomize")
    finally:
        sys.path[:] = saved
        if ours is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = ours


_kmemdump_autoinit()
_chain(os.path.dirname(os.path.abspath(__file__)))

"""Start kmemdump in a program run by ``kmemdump run``, without changing the program.

``kmemdump run`` puts this directory first on ``PYTHONPATH``; Python imports ``sitecustomize``
at start-up, which calls ``kmemdump.init(table=True, ...)`` and then hands over to any other
``sitecustomize`` further down the path, so an existing one still runs. The program's own child
processes are left alone: the hook marks the environment with the process it started in
(``KMEMDUMP_AUTOINIT=pid:PID:START``), and removes its variables in any other process. The same
process after an ``exec`` (same pid, same start time) starts kmemdump again: ``kmemdump run``
supervises whatever program its child becomes.
"""

import contextlib
import importlib
import os
import sys

_VARIABLES = ("AUTOINIT", "SRC", "WATCHDOG", "FEEDER", "SUPERVISOR", "FAULTHANDLER", "EXCEPTHOOK", "CAPACITY")


def _this_process() -> str:
    """``pid:PID:START``: this process, which an ``exec`` keeps (pid and start time) and a child has not."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            stat = handle.read()
        start = stat[stat.rfind(b")") + 2 :].split()[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        start = "?"
    return f"pid:{os.getpid()}:{start}"


def _kmemdump_autoinit() -> None:
    mark = os.environ.get("KMEMDUMP_AUTOINIT")
    here = _this_process()
    if mark not in ("1", here):  # a child of the supervised program (or no run at all)
        if mark is not None:
            for name in _VARIABLES:
                os.environ.pop(f"KMEMDUMP_{name}", None)
        return
    os.environ["KMEMDUMP_AUTOINIT"] = here  # the program's children leave kmemdump out; its exec does not
    source = os.environ.get("KMEMDUMP_SRC", "")
    timeout = os.environ.get("KMEMDUMP_WATCHDOG", "")
    feeder = os.environ.get("KMEMDUMP_FEEDER", "progress")
    supervisor = os.environ.get("KMEMDUMP_SUPERVISOR", "")
    faults = os.environ.get("KMEMDUMP_FAULTHANDLER", "") == "1"  # run --faulthandler
    excepthook = os.environ.get("KMEMDUMP_EXCEPTHOOK", "") == "1"  # run --excepthook
    slots = os.environ.get("KMEMDUMP_CAPACITY", "")  # run --capacity
    try:
        import kmemdump
    except ImportError:  # another interpreter: the producer is pure standard library
        if source:
            sys.path.append(source)
        import kmemdump
    try:
        seconds = float(timeout) if timeout else None
        capacity = int(slots) if slots.isdigit() else None
        kmemdump.init(
            table=True, capacity=capacity, watchdog=seconds, faulthandler=faults, excepthook=excepthook
        )
        # the program's own init(capacity=N) must match: it raises, naming run --capacity, if not
        kmemdump.producer.api._started_by("kmemdump run")
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

"""The demo's producer: registers a banner and a few regions, feeds its watchdog, then deadlocks.

Run by ``kmemdump demo`` (``python -m kmemdump.cli.demo_target``). It mirrors the banner scenario of
the Linux kernel's kmemdump design: the banner is registered at start-up, a backend publishes the
table, the main loop feeds the watchdog, and then the process freezes — here, two threads each
holding the lock the other wants."""

from __future__ import annotations

import sys
import threading

import kmemdump

__all__ = ["main"]

ORDERS = kmemdump.static(
    bytearray(b"order#1001 paid; order#1002 pending\0"), id=kmemdump.ID.USER_START, name="orders"
)
"""A static annotation: recorded at import, registered when init() walks the annotations."""


def _say(text: str) -> None:
    print(f"[demo target] {text}", flush=True)


def main() -> int:
    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    report = kmemdump.init(table=True, watchdog=timeout)
    cart = ["apple", "pear"]
    session: dict[str, object] = {"user": "alice", "balance": 1234, "cart": cart, "vip": True}
    kmemdump.register_object(session, name="session", depth=2)
    session["balance"] = 1200  # changed after registration: the dump shows the values of the freeze
    cart.append("plum")
    greeting = "héllo from the frozen process ✓"
    kmemdump.register_object(greeting, name="greeting")
    counters = kmemdump.alloc(64, name="counters")
    _say(
        f"pid {__import__('os').getpid()}: registered {len(kmemdump.regions())} regions; table {report.table}"
    )
    for beat in range(3):
        counters[0:8] = beat.to_bytes(8, "little")
        kmemdump.feed()
    _say(f"fed the watchdog; now deadlocking (timeout {timeout:g}s)")
    first, second = threading.Lock(), threading.Lock()
    both_hold = threading.Barrier(2)

    def worker(mine: threading.Lock, theirs: threading.Lock) -> None:
        with mine:
            both_hold.wait()
            with theirs:  # never acquired: the other thread holds it and wants ours
                pass

    threads = [
        threading.Thread(target=worker, args=(first, second), name="transfer-a"),
        threading.Thread(target=worker, args=(second, first), name="transfer-b"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

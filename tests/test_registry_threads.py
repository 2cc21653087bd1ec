"""Thread stress: concurrent register/unregister and backend swaps keep registry and backend in step.

Worker threads register and unregister (dynamic and explicit IDs) while a swapper thread keeps
replacing the backend and removing it again. All threads start on one barrier; nothing sleeps.
At the end the registry must hold exactly what the workers believe they hold, every ID exactly
once, and the current recording backend must mirror the registry while every retired backend
holds nothing.
"""

from __future__ import annotations

import ctypes
import random
import sys
import threading
from collections.abc import Callable
from collections.abc import Iterator

import pytest

from kmemdump import ID
from kmemdump import NoopBackend
from kmemdump import RegionExistsError
from kmemdump import Registry
from kmemdump import RegistryFullError
from kmemdump.ids import DYNAMIC_START
from test_backends import RecordingBackend

WORKERS = 8
ROUNDS = 2000
SWAPS = 100
CAPACITY = 4 * WORKERS * 6


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads every few bytecodes, so that calls interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Ledger:
    """IDs the workers hold; claiming one twice means the registry handed out a duplicate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: set[int] = set()
        self.duplicates: list[int] = []

    def claim(self, rid: int) -> None:
        with self.lock:
            if rid in self.held:
                self.duplicates.append(rid)
            self.held.add(rid)

    def release(self, rid: int) -> None:
        with self.lock:
            self.held.remove(rid)  # before unregister: nobody can be given rid until it is freed


def _run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=30)
                fn()
            except BaseException as err:  # reported below, in the test's thread
                errors.append(err)
                barrier.abort()

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert errors == [], errors


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_register_unregister_and_swaps(seed: int) -> None:
    registry = Registry(capacity=CAPACITY)
    ledger = _Ledger()
    backends: list[RecordingBackend] = []
    first = RecordingBackend("b0")
    backends.append(first)
    registry.backend_register(first)
    buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
    buffers_lock = threading.Lock()

    finished = threading.Semaphore(0)

    def worker(index: int) -> Callable[[], None]:
        rng = random.Random(seed * 1000 + index)
        own_band = [ID.USER_START + index * 10 + k for k in range(4)]  # explicit IDs, this thread's

        def run() -> None:
            mine: list[int] = []
            for _ in range(ROUNDS):
                if mine and (len(mine) >= 6 or rng.random() < 0.45):
                    rid = mine.pop(rng.randrange(len(mine)))
                    ledger.release(rid)
                    registry.unregister(rid)
                    continue
                buf = ctypes.create_string_buffer(rng.randrange(1, 64))
                free_own = [i for i in own_band if i not in mine]
                wanted = rng.choice(free_own) if free_own and rng.random() < 0.3 else -1
                try:
                    rid = registry.register(buf, id=wanted)
                except RegistryFullError:  # cannot happen: CAPACITY covers every worker's maximum
                    raise
                except RegionExistsError:
                    raise AssertionError(f"explicit id {wanted} owned by this thread was taken") from None
                if wanted != -1:
                    assert rid == wanted
                else:
                    assert rid >= DYNAMIC_START
                ledger.claim(rid)
                mine.append(rid)
                with buffers_lock:
                    buffers[rid] = buf
            finished.release()

        return run

    def swapper() -> None:
        # swap for as long as the workers run (and at least SWAPS times)
        rng = random.Random(seed)
        done = 0
        n = 0
        while done < WORKERS or n < SWAPS:
            n += 1
            if done < WORKERS and finished.acquire(blocking=False):
                done += 1
            if rng.random() < 0.25:
                current = registry.current_backend()
                if isinstance(current, RecordingBackend):
                    assert registry.backend_unregister(current) is True
                continue
            backend = RecordingBackend(f"b{n}")
            backends.append(backend)
            report = registry.backend_register(backend)
            assert report.ok, report

    _run_threads([worker(i) for i in range(WORKERS)] + [swapper])

    assert ledger.duplicates == []
    regions = registry.regions()
    ids = [r.id for r in regions]
    assert len(ids) == len(set(ids))
    assert set(ids) == ledger.held
    for region in regions:
        buf = buffers[region.id]
        assert (region.address, region.size) == (ctypes.addressof(buf), ctypes.sizeof(buf))
    current = registry.current_backend()
    for backend in backends:
        assert backend.violations == [], backend.name
        if backend is current:
            assert backend.regions == {r.id: r for r in regions}
        else:
            assert backend.regions == {}, backend.name
    assert isinstance(current, (RecordingBackend, NoopBackend))


@pytest.mark.timeout(120)
def test_concurrent_no_id_registrations_get_distinct_lowest_ids() -> None:
    registry = Registry(capacity=WORKERS * 50)
    results: list[list[int]] = [[] for _ in range(WORKERS)]

    def worker(index: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(50):
                results[index].append(registry.register(bytearray(8)))

        return run

    _run_threads([worker(i) for i in range(WORKERS)])

    every = sorted(rid for part in results for rid in part)
    assert every == list(range(DYNAMIC_START, DYNAMIC_START + WORKERS * 50))
    with pytest.raises(RegistryFullError):
        registry.register(bytearray(8))

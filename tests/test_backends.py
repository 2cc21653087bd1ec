"""The backend contract: mandatory callbacks, swap with unregister-all then replay, removal.

Mirrors the seed's "Backend" section and the kernel's ``kmemdump_register_backend`` /
``kmemdump_unregister_backend``. Every test drives a private :class:`Registry`, except the ones
that run the module-level API in a fresh interpreter. ``RecordingBackend`` is shared with the
other registry tests (``from test_backends import RecordingBackend``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from kmemdump import ID
from kmemdump import NO_ID
from kmemdump import Backend
from kmemdump import BackendError
from kmemdump import NoopBackend
from kmemdump import Region
from kmemdump import Registry
from kmemdump import SwapReport

Journal = list[tuple[str, str, int]]


class RecordingBackend:
    """A backend that keeps its own list of regions and a journal of every call.

    ``journal`` may be shared between backends, to check the order of calls across a swap.
    ``refuse`` decides which regions ``register_region`` refuses (by raising). Any call that
    contradicts the backend's own list (a second register of an ID, an unregister of an unknown
    one) is recorded in ``violations`` instead of raising, so the registry cannot hide it.
    """

    def __init__(
        self,
        name: str = "recording",
        journal: Journal | None = None,
        refuse: Callable[[Region], bool] | None = None,
    ) -> None:
        self.name = name
        self.journal: Journal = [] if journal is None else journal
        self.refuse = refuse
        self.regions: dict[int, Region] = {}
        self.violations: list[str] = []

    def register_region(self, region: Region) -> None:
        self.journal.append((self.name, "register", region.id))
        if self.refuse is not None and self.refuse(region):
            raise RuntimeError(f"{self.name} refuses region {region.id}")
        if region.id in self.regions:
            self.violations.append(f"register of live id {region.id}")
        self.regions[region.id] = region

    def unregister_region(self, region: Region) -> None:
        self.journal.append((self.name, "unregister", region.id))
        if self.regions.pop(region.id, None) != region:
            self.violations.append(f"unregister of unknown id {region.id}")

    def calls(self) -> list[tuple[str, int]]:
        """This backend's own calls, in order."""
        return [(op, rid) for who, op, rid in self.journal if who == self.name]


def _three(registry: Registry) -> list[int]:
    return [registry.register(bytearray(16 * (i + 1))) for i in range(3)]


def _assert_mirrors(registry: Registry, backend: RecordingBackend) -> None:
    assert backend.violations == []
    assert backend.regions == {r.id: r for r in registry.regions()}


# --- both callbacks are mandatory -----------------------------------------------------------


class _OnlyRegister:
    name = "only-register"

    def register_region(self, region: Region) -> None:
        raise AssertionError("must not be called")


class _OnlyUnregister:
    name = "only-unregister"

    def unregister_region(self, region: Region) -> None:
        raise AssertionError("must not be called")


class _NotCallable:
    name = "not-callable"
    register_region = "yes"
    unregister_region = None


@pytest.mark.parametrize(
    ("backend", "missing"),
    [
        (_OnlyRegister(), "unregister_region"),
        (_OnlyUnregister(), "register_region"),
        (_NotCallable(), "register_region"),
        (None, "register_region"),
        (object(), "register_region"),
    ],
    ids=["no-unregister", "no-register", "not-callable", "None", "object"],
)
def test_backend_missing_callback_refused(backend: object, missing: str) -> None:
    registry = Registry()
    current = RecordingBackend("current")
    registry.backend_register(current)
    registry.register(bytearray(8))
    before = list(current.journal)

    with pytest.raises(BackendError, match=missing):
        registry.backend_register(backend)  # type: ignore[arg-type]

    assert registry.current_backend() is current
    assert current.journal == before  # nothing unregistered from the current backend
    _assert_mirrors(registry, current)


def test_recording_backend_satisfies_protocol() -> None:
    assert isinstance(RecordingBackend(), Backend)
    assert isinstance(NoopBackend(), Backend)
    assert not isinstance(_OnlyRegister(), Backend)


# --- registration goes through the current backend --------------------------------------------


def test_register_and_unregister_reach_backend() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)

    rid = registry.register(bytearray(32), name="events")
    region = registry.get(rid)
    assert backend.regions == {rid: region}
    assert backend.calls() == [("register", rid)]

    registry.unregister(rid)
    assert backend.regions == {}
    assert backend.calls() == [("register", rid), ("unregister", rid)]
    assert backend.violations == []


def test_backend_registered_later_receives_earlier_regions() -> None:
    # "Once a backend is being registered, all previously registered regions are being sent to
    # the backend for registration."
    registry = Registry()
    ids = _three(registry)
    registry.register(bytearray(4), id=ID.USER_START)
    backend = RecordingBackend()

    report = registry.backend_register(backend)

    assert report == SwapReport("recording", 4, ())
    assert report.ok
    assert backend.calls() == [("register", rid) for rid in sorted([*ids, ID.USER_START])]
    _assert_mirrors(registry, backend)


def test_backend_swap_unregisters_all_from_old_then_replays_into_new() -> None:
    journal: Journal = []
    registry = Registry()
    old = RecordingBackend("old", journal)
    new = RecordingBackend("new", journal)
    registry.backend_register(old)
    ids = _three(registry)
    registry.register(bytearray(4), id=ID.USER_START + 1)
    live = sorted([*ids, ID.USER_START + 1])
    journal.clear()

    report = registry.backend_register(new)

    assert journal == [("old", "unregister", rid) for rid in live] + [
        ("new", "register", rid) for rid in live
    ]
    assert report == SwapReport("new", len(live), ())
    assert old.regions == {}
    assert old.violations == []
    assert registry.current_backend() is new
    _assert_mirrors(registry, new)


def test_backend_swap_with_empty_registry_makes_no_calls() -> None:
    journal: Journal = []
    registry = Registry()
    registry.backend_register(RecordingBackend("old", journal))
    report = registry.backend_register(RecordingBackend("new", journal))
    assert journal == []
    assert report == SwapReport("new", 0, ())


def test_reregistering_current_backend_replays_into_it() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    rid = registry.register(bytearray(8))
    backend.journal.clear()

    registry.backend_register(backend)

    assert backend.calls() == [("unregister", rid), ("register", rid)]
    _assert_mirrors(registry, backend)


def test_replay_failure_reported_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    ids = _three(registry)
    refused = ids[1]
    backend = RecordingBackend("picky", refuse=lambda region: region.id == refused)

    with caplog.at_level(logging.WARNING, logger="kmemdump"):
        report = registry.backend_register(backend)

    assert not report.ok
    assert report.replayed == 2
    assert [f.region.id for f in report.failures] == [refused]
    failure = report.failures[0]
    assert failure.region == registry.get(refused)
    assert "RuntimeError" in failure.error
    assert f"refuses region {refused}" in failure.error
    # logged, not dropped
    messages = [r.getMessage() for r in caplog.records if r.name == "kmemdump"]
    assert any("picky" in m and str(refused) in m for m in messages), messages
    # the region stays registered (the kernel only logs it); the backend holds the others
    assert refused in registry
    assert sorted(backend.regions) == [ids[0], ids[2]]
    assert registry.current_backend() is backend


def test_old_backend_failing_to_unregister_is_logged_and_swap_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Sticky(RecordingBackend):
        def unregister_region(self, region: Region) -> None:
            super().unregister_region(region)
            raise OSError("cannot forget")

    registry = Registry()
    registry.backend_register(Sticky("sticky"))
    rid = registry.register(bytearray(8))
    new = RecordingBackend("new")

    with caplog.at_level(logging.ERROR, logger="kmemdump"):
        report = registry.backend_register(new)

    assert report.ok
    _assert_mirrors(registry, new)
    assert any("sticky" in r.getMessage() and str(rid) in r.getMessage() for r in caplog.records)


# --- backend_unregister -----------------------------------------------------------------------


def test_backend_unregister_non_current_ignored() -> None:
    journal: Journal = []
    registry = Registry()
    stale = RecordingBackend("stale", journal)
    current = RecordingBackend("current", journal)
    registry.backend_register(stale)
    registry.backend_register(current)
    _three(registry)
    journal.clear()

    assert registry.backend_unregister(stale) is False
    assert registry.backend_unregister(RecordingBackend("stranger", journal)) is False

    assert journal == []
    assert registry.current_backend() is current
    _assert_mirrors(registry, current)


def test_backend_unregister_current_deregisters_all_then_reverts_to_noop() -> None:
    # "When the backend is being removed, all regions are being first deregistered from the backend."
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    ids = _three(registry)
    backend.journal.clear()

    assert registry.backend_unregister(backend) is True

    assert backend.calls() == [("unregister", rid) for rid in ids]
    assert backend.regions == {}
    assert backend.violations == []
    assert isinstance(registry.current_backend(), NoopBackend)
    assert [r.id for r in registry.regions()] == ids  # the regions themselves stay registered
    # and the removed backend hears nothing more
    registry.register(bytearray(8))
    assert len(backend.journal) == len(ids)


def test_backend_unregister_twice_second_is_ignored() -> None:
    registry = Registry()
    backend = RecordingBackend()
    registry.backend_register(backend)
    assert registry.backend_unregister(backend) is True
    assert registry.backend_unregister(backend) is False


def test_backend_unregister_of_noop_returns_to_a_noop() -> None:
    registry = Registry()
    noop = registry.current_backend()
    assert registry.backend_unregister(noop) is True
    assert isinstance(registry.current_backend(), NoopBackend)


# --- a backend refusing a region at registration time --------------------------------------------


def test_backend_refusal_is_backend_error_and_id_not_consumed() -> None:
    registry = Registry(capacity=2)
    refusing = {"on": True}
    backend = RecordingBackend(refuse=lambda region: refusing["on"])
    registry.backend_register(backend)

    with pytest.raises(BackendError, match="refused") as info:
        registry.register(bytearray(8))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.context["id"] == 1024
    with pytest.raises(BackendError):
        registry.register(bytearray(8), id=ID.USER_START)

    assert registry.regions() == ()
    assert backend.regions == {}
    refusing["on"] = False
    # neither the dynamic ID nor the slots were consumed
    assert registry.register(bytearray(8)) == 1024
    assert registry.register(bytearray(8), id=ID.USER_START) == ID.USER_START
    _assert_mirrors(registry, backend)


def test_backend_without_name_refusal_is_still_backend_error() -> None:
    class Anonymous:
        def register_region(self, region: Region) -> None:
            raise ValueError("no")

        def unregister_region(self, region: Region) -> None:
            return None

    registry = Registry()
    registry.backend_register(Anonymous())  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="Anonymous"):
        registry.register(bytearray(8))


def test_backend_unregister_failure_is_logged_and_region_removed(caplog: pytest.LogCaptureFixture) -> None:
    class Grumpy(RecordingBackend):
        def unregister_region(self, region: Region) -> None:
            raise OSError("disk on fire")

    registry = Registry()
    registry.backend_register(Grumpy("grumpy"))
    rid = registry.register(bytearray(8))
    with caplog.at_level(logging.ERROR, logger="kmemdump"):
        registry.unregister(rid)
    assert rid not in registry
    assert any("grumpy" in r.getMessage() and str(rid) in r.getMessage() for r in caplog.records)
    assert registry.register(bytearray(8)) == rid  # the ID was given back


def test_no_id_constant_is_the_kernel_sentinel() -> None:
    assert NO_ID == -1


# --- the module-level API, in a fresh interpreter -------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.timeout(90)
def test_module_level_backend_register_and_unregister() -> None:
    result = _run(
        """
        import kmemdump

        class Rec:
            name = "rec"
            def __init__(self):
                self.calls = []
            def register_region(self, region):
                self.calls.append(("register", region.id))
            def unregister_region(self, region):
                self.calls.append(("unregister", region.id))

        rid = kmemdump.register(bytearray(8))
        rec = Rec()
        report = kmemdump.backend_register(rec)
        assert isinstance(report, kmemdump.SwapReport) and report.replayed == 1, report
        assert kmemdump.current_backend() is rec
        assert kmemdump.backend_unregister(Rec()) is False
        assert kmemdump.backend_unregister(rec) is True
        assert type(kmemdump.current_backend()) is kmemdump.NoopBackend
        print(rec.calls == [("register", rid), ("unregister", rid)])
        """
    )
    assert result.stdout.strip() == "True"

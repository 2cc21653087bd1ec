"""A hypothesis state machine: register / unregister / backend swap / backend_unregister.

The model is a dict of ID -> (address, size) for the registry, and for the current backend the
set of IDs it should hold. After every step the registry, the model and the recording backends
must agree exactly: same IDs, same regions, old backends empty, no contract violations.
"""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from budget import examples
from kmemdump import NO_ID
from kmemdump import BackendError
from kmemdump import InvalidRegionError
from kmemdump import NoopBackend
from kmemdump import Region
from kmemdump import RegionExistsError
from kmemdump import Registry
from kmemdump import RegistryFullError
from kmemdump import UnknownRegionError
from kmemdump.ids import DYNAMIC_START
from kmemdump.ids import MAX_ID
from test_backends import RecordingBackend

CAPACITY = 6
EXPLICIT = st.sampled_from([1, 2, 16, 17, 1023, DYNAMIC_START, DYNAMIC_START + 1, DYNAMIC_START + 3, MAX_ID])
INVALID = st.sampled_from([0, -2, MAX_ID + 1])
REQUESTED = st.one_of(st.just(NO_ID), st.just(NO_ID), EXPLICIT, INVALID)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry(capacity=CAPACITY)
        self.model: dict[int, tuple[int, int]] = {}
        self.buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.backend: RecordingBackend | None = None  # None: the registry's NoopBackend
        self.refusing: set[str] = set()
        self.published: set[int] = set()  # IDs the current recording backend should hold
        self.retired: list[RecordingBackend] = []
        self.serial = 0

    def _refuse(self, region: Region, name: str) -> bool:
        return name in self.refusing

    def _new_backend(self) -> RecordingBackend:
        self.serial += 1
        name = f"b{self.serial}"
        return RecordingBackend(name, refuse=lambda region: self._refuse(region, name))

    def _expected_id(self, requested: int) -> int:
        if requested != NO_ID:
            return requested
        candidate = DYNAMIC_START
        while candidate in self.model:
            candidate += 1
        return candidate

    @rule(requested=REQUESTED, size=st.integers(1, 64))
    def register(self, requested: int, size: int) -> None:
        buf = ctypes.create_string_buffer(size)
        refusing = self.backend is not None and self.backend.name in self.refusing
        if requested in (0, -2, MAX_ID + 1):
            with pytest.raises(InvalidRegionError):
                self.registry.register(buf, id=requested)
            return
        if requested != NO_ID and requested in self.model:
            with pytest.raises(RegionExistsError):
                self.registry.register(buf, id=requested)
            return
        if len(self.model) == CAPACITY:
            with pytest.raises(RegistryFullError):
                self.registry.register(buf, id=requested)
            return
        expected = self._expected_id(requested)
        if refusing:
            with pytest.raises(BackendError):
                self.registry.register(buf, id=requested)
            return
        assert self.registry.register(buf, id=requested) == expected
        self.model[expected] = (ctypes.addressof(buf), size)
        self.buffers[expected] = buf
        if self.backend is not None:
            self.published.add(expected)

    @rule(data=st.data())
    def unregister(self, data: st.DataObject) -> None:
        choices = [*sorted(self.model), DYNAMIC_START + 50, 3]
        rid = data.draw(st.sampled_from(choices))
        if rid not in self.model:
            with pytest.raises(UnknownRegionError):
                self.registry.unregister(rid)
            return
        self.registry.unregister(rid)
        del self.model[rid]
        del self.buffers[rid]
        self.published.discard(rid)

    @rule(refuse=st.booleans())
    def swap(self, refuse: bool) -> None:
        new = self._new_backend()
        if refuse:
            self.refusing.add(new.name)
        report = self.registry.backend_register(new)
        if self.backend is not None:
            self.retired.append(self.backend)
        self.backend = new
        if refuse:
            assert report.replayed == 0
            assert sorted(f.region.id for f in report.failures) == sorted(self.model)
            self.published = set()
        else:
            assert report.ok
            assert report.replayed == len(self.model)
            self.published = set(self.model)

    @precondition(lambda self: self.backend is not None)
    @rule(refuse=st.booleans())
    def set_refusing(self, refuse: bool) -> None:
        assert self.backend is not None
        if refuse:
            self.refusing.add(self.backend.name)
        else:
            self.refusing.discard(self.backend.name)

    @rule(current=st.booleans())
    def backend_unregister(self, current: bool) -> None:
        if current and self.backend is not None:
            assert self.registry.backend_unregister(self.backend) is True
            self.retired.append(self.backend)
            self.backend = None
            self.published = set()
            return
        stranger = self.retired[-1] if self.retired else self._new_backend()
        calls = len(stranger.journal)
        before = self.registry.current_backend()
        assert self.registry.backend_unregister(stranger) is False
        assert len(stranger.journal) == calls
        assert self.registry.current_backend() is before

    @invariant()
    def registry_matches_model(self) -> None:
        regions = self.registry.regions()
        assert {r.id: (r.address, r.size) for r in regions} == self.model
        assert len(self.registry) == len(self.model)

    @invariant()
    def backend_matches_model(self) -> None:
        current = self.registry.current_backend()
        if self.backend is None:
            assert isinstance(current, NoopBackend)
            return
        assert current is self.backend
        assert self.backend.violations == []
        assert set(self.backend.regions) == self.published
        for rid, region in self.backend.regions.items():
            assert region == self.registry.get(rid)

    @invariant()
    def retired_backends_hold_nothing(self) -> None:
        for old in self.retired:
            assert old.regions == {}
            assert old.violations == []


RegistryMachine.TestCase.settings = settings(
    max_examples=examples(150), stateful_step_count=40, deadline=None
)
test_registry_state_machine = pytest.mark.timeout(300)(RegistryMachine.TestCase)

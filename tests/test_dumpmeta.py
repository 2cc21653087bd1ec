"""The metadata note: the death record round-trips, says what it knows, and refuses what is malformed."""

from __future__ import annotations

import json
import signal

import pytest

from kmemdump.errors import DumpFormatError
from kmemdump.formats.dumpmeta import Death
from kmemdump.formats.dumpmeta import DumpMeta
from kmemdump.formats.dumpmeta import decode_meta
from kmemdump.formats.dumpmeta import encode_meta
from kmemdump.formats.dumpmeta import signal_name


def _meta(death: Death | None) -> DumpMeta:
    return DumpMeta("death", 1, 2, 3, "h", ("python3", "x.py"), None, 0, 0, (), True, False, death=death)


@pytest.mark.parametrize(
    ("death", "text"),
    [
        (Death.from_wait_status(3 << 8, "wait status"), "exit code 3"),
        (Death.from_wait_status(int(signal.SIGKILL), "exit stop"), "killed by SIGKILL"),
        (Death.from_wait_status(int(signal.SIGABRT) | 0x80, "proc stat"), "killed by SIGABRT (core dumped)"),
        (
            Death.from_wait_status(int(signal.SIGSEGV), "exit stop", si_code=1, address=0),
            "killed by SIGSEGV (SEGV_MAPERR: address not mapped, at 0x0)",
        ),
        (
            Death.from_wait_status(int(signal.SIGTERM), "exit stop", si_code=0, sender_pid=42, sender_uid=0),
            "killed by SIGTERM (sent by pid 42, uid 0, with kill())",
        ),
        (Death.unknown("the process was not our child"), "unknown (the process was not our child)"),
    ],
)
def test_death_round_trips_and_describes_itself(death: Death, text: str) -> None:
    assert death.describe() == text
    back = decode_meta(encode_meta(_meta(death)))
    assert back.death == death
    assert back.death is not None and back.death.known == (not text.startswith("unknown"))


def test_dumps_without_a_death_record_still_read() -> None:
    raw = encode_meta(_meta(None))
    assert "death" not in json.loads(raw)
    assert decode_meta(raw).death is None


@pytest.mark.parametrize(
    "bad",
    [
        {"exit_code": "3"},
        {"exit_code": 3, "signal": 9},
        {"signal": 0},
        {"exit_code": 256},
        {"source": "guess"},
        {"core_dumped": 1},
        {"address": True},
    ],
)
def test_malformed_death_records_are_refused(bad: dict[str, object]) -> None:
    body = json.loads(encode_meta(_meta(None)))
    body["death"] = bad
    with pytest.raises(DumpFormatError):
        decode_meta(json.dumps(body).encode())


def test_signal_names() -> None:
    assert signal_name(11) == "SIGSEGV"
    assert signal_name(int(signal.SIGRTMIN) + 3) == "SIGRTMIN+3"
    assert signal_name(100) == "signal 100"

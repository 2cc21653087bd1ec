"""Every ``python`` block of ``docs/integrations.md`` runs as a program of its own and leaves nothing behind.

Each block runs in a fresh interpreter with a private table directory; it must exit 0, and its clean
exit removes every file it published there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "integrations.md"


def _examples() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def test_the_page_has_an_example_for_each_integration() -> None:
    text = "\n".join(_examples())
    for needle in ("RingHandler", "dictConfig", "faulthandler=True", "excepthook=True"):
        assert needle in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(_examples())))
def test_example_runs(index: int, tmp_path: Path) -> None:
    code = _examples()[index]
    tables = tmp_path / "tables"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**os.environ, "KMEMDUMP_DIR": str(tables)},
        check=False,
    )
    assert result.returncode == 0, f"example {index} failed:\n{code}\n{result.stderr}"
    assert not tables.exists() or list(tables.iterdir()) == []

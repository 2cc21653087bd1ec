"""The public surface: ``kmemdump.__all__``, every module's ``__all__``, and the docs that cite tests.

* every name in ``kmemdump.__all__`` exists and ``from kmemdump import *`` works;
* every module of the package has a docstring and an ``__all__`` naming only real attributes
  (checked in one fresh interpreter, so importing e.g. the CLI cannot disturb this process);
* ``docs/design-conformance.md`` quotes every sentence of the seven sections of the kernel's kmemdump
  design text and cites only test node IDs that exist;
* the Python examples in ``docs/api.md`` run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import kmemdump

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kmemdump"
CONFORMANCE = ROOT / "docs" / "design-conformance.md"
API_DOC = ROOT / "docs" / "api.md"


def _design_text() -> Path:
    """Where the Linux kernel's kmemdump design text (its Documentation/dev-tools/kmemdump.rst) lies: named by
    $KMEMDUMP_DESIGN_TEXT, else in the project's workspace beside the checkout (``../shared/seed``), seen from
    a git worktree too. It is not copied into the repository: its sentences are the kernel's, not ours."""
    named = os.environ.get("KMEMDUMP_DESIGN_TEXT")
    if named:
        return Path(named)
    checkouts = [ROOT]
    dot_git = ROOT / ".git"
    if dot_git.is_file():  # a worktree: "gitdir: <main checkout>/.git/worktrees/<name>"
        gitdir = Path(dot_git.read_text().partition("gitdir:")[2].strip())
        checkouts.append(gitdir.parents[2])
    for checkout in checkouts:
        candidate = checkout.parent / "shared" / "seed" / "kmemdump.rst"
        if candidate.exists():
            return candidate
    return ROOT.parent / "shared" / "seed" / "kmemdump.rst"


DESIGN = _design_text()
DESIGN_SECTIONS = {
    "Overview": "Overview",
    "API": "API",
    "Backend": "Backend",
    "Data": "Data structures",
    "Init": "kmemdump Initialization",
    "Functionality": "backend functionality",
    "Example": "kmemdump example",
}


# --- kmemdump.__all__ -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", kmemdump.__all__)
def test_public_name_exists(name: str) -> None:
    assert getattr(kmemdump, name) is not None


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, Any] = {}
    exec("from kmemdump import *", namespace)
    assert set(kmemdump.__all__) <= set(namespace)


def test_all_has_no_duplicates() -> None:
    assert len(kmemdump.__all__) == len(set(kmemdump.__all__))


def test_api_and_errors_are_reexported() -> None:
    from kmemdump import errors
    from kmemdump.producer import api

    assert set(api.__all__) <= set(kmemdump.__all__)
    assert set(errors.__all__) <= set(kmemdump.__all__)
    for name in api.__all__:
        assert getattr(kmemdump, name) is getattr(api, name)


def test_watchdog_names_are_the_heartbeat_functions() -> None:
    from kmemdump.producer import heartbeat  # the module: nothing in the package shadows its name

    assert kmemdump.feed is heartbeat.feed
    assert kmemdump.watchdog is heartbeat.set_watchdog
    assert kmemdump.start_feeder is heartbeat.start_feeder
    assert kmemdump.stop_feeder is heartbeat.stop_feeder


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        kmemdump.no_such_thing  # noqa: B018


def test_lazy_shared_table_backend() -> None:
    from kmemdump.producer.backends.table import SharedTableBackend

    assert kmemdump.SharedTableBackend is SharedTableBackend


# --- every module's __all__ -------------------------------------------------------------------------


def _module_names(*, with_content: bool = False) -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if with_content and not path.read_text(encoding="utf-8").strip():
            continue  # an empty package marker has nothing to document or export
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__" or "autoinit" in parts:  # scripts, not importable modules
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


_SCAN = """
import importlib, json, sys
report = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        report[name] = {"error": f"{type(err).__name__}: {err}"}
        continue
    exported = getattr(module, "__all__", None)
    report[name] = {
        "doc": bool((module.__doc__ or "").strip()),
        "all": None if exported is None else list(exported),
        "missing": [n for n in (exported or ()) if not hasattr(module, n)],
    }
print(json.dumps(report))
"""


@cache
def _scan() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _SCAN, *_module_names()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.timeout(150)
@pytest.mark.parametrize("module", _module_names())
def test_module_all_lists_real_names(module: str) -> None:
    found = _scan()[module]
    assert "error" not in found, found.get("error")
    assert found["missing"] == []
    exported = found["all"] or []
    assert len(exported) == len(set(exported))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("module", _module_names(with_content=True))
def test_module_has_docstring_and_all(module: str) -> None:
    # the project's code standard: every module has a docstring and an __all__
    found = _scan()[module]
    assert "error" not in found, found.get("error")
    assert found["doc"], f"{module} has no docstring"
    assert found["all"] is not None, f"{module} has no __all__"


# --- docs/design-conformance.md ---------------------------------------------------------------------


def _design_sentences(text: str) -> dict[str, list[str]]:
    """Sentences of the seven sections of the design text, keyed by our short section names."""
    lines = text.splitlines()
    out: dict[str, list[str]] = {}
    for key, title in DESIGN_SECTIONS.items():
        start = next(
            i for i, line in enumerate(lines) if line.strip() == title and set(lines[i + 1]) in ({"-"}, {"="})
        )
        body: list[str] = []
        for line in lines[start + 2 :]:
            if body and line and set(line.strip()) <= {"-", "="} and line.strip():
                body.pop()  # that was the next section's title
                break
            body.append(line)
        prose = " ".join(" ".join(body).split()).replace("e.g.", "e_g_")
        sentences = [s.replace("e_g_", "e.g.") for s in re.split(r"(?<=\.)\s+", prose) if s]
        out[key] = sentences
    return out


_ROW = re.compile(
    r"^\|\s*(?P<key>(?:Overview|API|Backend|Data|Init|Functionality|Example)-\d+)\s*\|(?P<quote>[^|]*)\|"
    r"(?P<ours>[^|]*)\|(?P<tests>[^|]*)\|"
)
_NODE = re.compile(r"tests/[\w/]+\.py::[\w\[\]\-.=]+")


def _conformance_rows() -> dict[str, tuple[str, list[str]]]:
    rows: dict[str, tuple[str, list[str]]] = {}
    for line in CONFORMANCE.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            key = match["key"]
            assert key not in rows, f"{key} listed twice"
            rows[key] = (match["quote"].strip(), _NODE.findall(match["tests"]))
    return rows


def test_conformance_table_rows_cite_tests() -> None:
    rows = _conformance_rows()
    assert rows, "no rows found in docs/design-conformance.md"
    for key, (quote, nodes) in rows.items():
        assert quote, key
        assert nodes, f"{key} cites no test"


@pytest.mark.skipif(
    not DESIGN.exists(), reason=f"the kernel's kmemdump design text is not beside the checkout ({DESIGN})"
)
def test_conformance_table_covers_every_design_sentence() -> None:
    sentences = _design_sentences(DESIGN.read_text(encoding="utf-8"))
    rows = _conformance_rows()
    expected = {f"{key}-{n}" for key, found in sentences.items() for n in range(1, len(found) + 1)}
    assert sorted(expected - set(rows)) == [], "design sentences without a row"
    assert sorted(set(rows) - expected) == [], "rows for sentences the design text does not have"
    for key, (quote, _) in rows.items():
        section, number = key.rsplit("-", 1)
        sentence = sentences[section][int(number) - 1]
        for piece in quote.strip('"“”').split("…"):
            fragment = piece.strip(" \"'“”")
            if fragment:
                assert fragment in sentence, f"{key}: {fragment!r} is not in {sentence!r}"


@pytest.mark.timeout(150)
def test_conformance_table_node_ids_exist() -> None:
    cited = sorted({node for _, nodes in _conformance_rows().values() for node in nodes})
    files = sorted({node.split("::")[0] for node in cited})
    for file in files:
        assert (ROOT / file).exists(), f"{file} does not exist"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    collected = [line.strip() for line in result.stdout.splitlines() if "::" in line]

    def found(node: str) -> bool:  # a parametrized test or a TestCase class is cited by its base name
        return any(c == node or c.startswith((node + "[", node + "::")) for c in collected)

    assert [node for node in cited if not found(node)] == []


# --- docs/api.md examples ----------------------------------------------------------------------------


def _api_examples() -> list[str]:
    text = API_DOC.read_text(encoding="utf-8")
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def test_api_doc_has_examples() -> None:
    assert len(_api_examples()) >= 5


@pytest.mark.timeout(150)
@pytest.mark.parametrize("index", range(len(_api_examples()) if API_DOC.exists() else 0))
def test_api_doc_example_runs(index: int, tmp_path: Path) -> None:
    code = _api_examples()[index]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**_env(), "KMEMDUMP_DIR": str(tmp_path / "tables")},
        check=False,
    )
    assert result.returncode == 0, f"example {index} failed:\n{code}\n{result.stderr}"


def _env() -> dict[str, str]:
    return dict(os.environ)


_SEED = re.compile(r"\bseed\b(?!s? (?:of|for) (?:the )?(?:random|hypothesis))", re.IGNORECASE)
_NOT_OURS = ("Development Seed",)  # the maintainers of obstore, named in docs/fleet.md


def test_user_text_names_the_design_never_the_seed() -> None:
    """What a user reads (README, docs, CHANGELOG, contrib, help and error text in the sources) names the
    Linux kernel's kmemdump design, never "the seed"."""
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(p for p in (ROOT / "contrib").rglob("*") if p.is_file())
    files += sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE / "cli" / "data").glob("*"))
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            text = line
            for name in _NOT_OURS:
                text = text.replace(name, "")
            if _SEED.search(text):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


_PATH = re.compile(r"(?<![\w/.-])((?:src|tests|docs|contrib|benchmarks)/[\w./-]*\w)(?:::(\w+))?")


def test_every_path_and_test_the_docs_name_exists() -> None:
    """Each repository path the README and docs/ name is in the tree, and each ``tests/…::name`` is a test."""
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path, test in _PATH.findall(doc.read_text(encoding="utf-8")):
            target = ROOT / path
            if not target.exists():
                missing.append(f"{doc.name}: {path}")
            elif test and not re.search(rf"^(?:def |async def )?{test}\b", target.read_text(), re.MULTILINE):
                missing.append(f"{doc.name}: {path}::{test}")
    assert missing == []

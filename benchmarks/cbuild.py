"""Compiling the C workload of the death-dump benchmark at run time (gcc), each way it is needed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MCD_HEADER", "Built", "build_workloads"]

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "crash_workload.c"
CONTRIB_C = HERE.parent / "contrib" / "c"
MCD_HEADER = Path("/usr/include/minicoredumper.h")
_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE"]


@dataclass(frozen=True, slots=True)
class Built:
    """The workload's binaries in ``directory``; a variant that could not be built is None, with why."""

    plain: Path | None
    kmd: Path | None
    mcd: Path | None
    canary: Path | None
    why_not: dict[str, str]


def build_workloads(directory: Path) -> Built:
    """Build ``plain``, ``kmd`` (the kmemdump table) and, where libminicoredumper is installed, ``mcd``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        why = "gcc not found: the C workload cannot be built"
        return Built(None, None, None, None, {"plain": why, "kmd": why, "mcd": why})
    why_not: dict[str, str] = {}

    def build(name: str, *extra: str, source: Path = SOURCE) -> Path | None:
        out = directory / name
        done = subprocess.run(
            [gcc, *_CFLAGS, "-o", str(out), str(source), *extra], check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            why_not[name] = f"gcc failed: {done.stderr.strip().splitlines()[-1:]}"
            return None
        return out

    plain = build("workload_plain")
    kmd = build("workload_kmd", "-DUSE_KMD", f"-I{CONTRIB_C}")
    mcd = canary = None
    if not MCD_HEADER.exists():
        why_not["mcd"] = f"{MCD_HEADER} missing (Debian: apt-get install libminicoredumper-dev)"
    else:
        mcd = build("workload_mcd", "-DUSE_MCD", "-lminicoredumper")
        canary_source = directory / "canary.c"
        canary_source.write_text("int main(void) { *(volatile int *)0 = 1; return 0; }\n")
        canary = build("mcd_canary", source=canary_source)
    return Built(plain, kmd, mcd, canary, why_not)

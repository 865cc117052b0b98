"""py-spy on a running process tree: record for a while, then the functions with the most own
time (the leaf of each sampled stack), as a share of all samples, and the share per process.

    rec = PySpy.start(pid, seconds, out_file)   # None if py-spy is not installed
    ...
    report = rec.finish()                       # {"top": [...], "processes": {...}, ...}

py-spy samples without stopping the process (``--nonblocking``) at ``rate`` Hz and follows
child processes (``--subprocesses``); idle threads are left out (py-spy's default), so the
shares are of the time the tree's threads were running or waiting for the GIL.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")
_PROCESS = re.compile(r'process (\d+):"(.*)"')


def _process(frame: str) -> str:
    """'process 12:"/venv/bin/python /venv/bin/edgemon-collector run -c x"' -> 'edgemon-collector
    run [12]'."""
    m = _PROCESS.match(frame)
    if not m:
        return frame[:60]
    argv = m.group(2).split()
    words = [a.rsplit("/", 1)[-1] for a in argv[1:3]] if len(argv) > 1 else argv[:1]
    return f"{' '.join(words)} [{m.group(1)}]"


def executable() -> str | None:
    """py-spy next to this interpreter (a venv) or on PATH."""
    near = Path(sys.executable).parent / "py-spy"
    return str(near) if near.exists() else shutil.which("py-spy")


@dataclass
class PySpy:
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    @classmethod
    def start(cls, pid: int, seconds: float, out: Path, rate: int = 50) -> PySpy | None:
        exe = executable()
        if exe is None:
            return None
        log = out.with_suffix(".log")
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                 "--rate", str(rate), "--duration", str(max(1, int(seconds))),
                 "--format", "raw", "--output", str(out)],
                stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(proc, out, log)

    def finish(self, timeout: float = 120, top: int = 15) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # py-spy writes what it has on SIGINT/SIGTERM
            self.proc.wait(30)
        if not self.out.exists():
            return {"error": self.log.read_text(errors="replace")[-500:]}
        return summarise(self.out.read_text(errors="replace"), top)


def summarise(raw: str, top: int = 15) -> dict[str, Any]:
    """Own time per function and samples per process from py-spy's raw (collapsed) stacks."""
    own: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        code = [f for f in frames if not f.startswith("process ")]
        if processes:
            per_process[_process(processes[-1])] += n
        own[_LINE.sub(")", code[-1]) if code else "(no Python frame)"] += n
        total += n
    return {"samples": total,
            "top": [{"function": f, "own_share": round(n / total, 4)}
                    for f, n in own.most_common(top)] if total else [],
            "processes": {p: round(n / total, 4) for p, n in per_process.most_common()}
            if total else {}}

"""edgemon.common is plumbing for both programs: the standard library and paho, nothing else."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edgemon.common

# paho, and what paho itself imports when present: PySocks for its proxy support
ALLOWED_THIRD_PARTY = {"paho", "socks"}


def test_common_imports_only_the_standard_library_and_paho() -> None:
    modules = [f"edgemon.common.{m.name}" for m in pkgutil.iter_modules(edgemon.common.__path__)]
    assert modules, "edgemon.common has no modules"
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"for name in {modules!r}: __import__(name)\n"
        "loaded = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print('\\n'.join(sorted(m for m in loaded\n"
        "      if m not in sys.stdlib_module_names and m not in ('edgemon', '_distutils_hack'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    outside = set(out.stdout.split()) - ALLOWED_THIRD_PARTY
    assert not outside, f"edgemon.common imports {sorted(outside)} beyond the standard library"

"""Every edgemon module imports first, on its own: no import cycle that only works in one order.

(``import edgemon.collector.http.alerts_api`` before ``edgemon.collector.alerting`` once failed:
the package's ``__init__`` imported the HTTP side, which imported the package back.)
"""

from __future__ import annotations

import subprocess
import sys

# each module is imported into an interpreter from which every edgemon module was removed, so it
# is the first edgemon module loaded; third-party modules stay loaded (they cannot take part in
# a cycle of ours) and keep this to one process
_CODE = """
import importlib, pkgutil, sys, traceback
names = []
for top in ("agent", "collector", "protocol", "common"):
    package = importlib.import_module("edgemon." + top)
    names.append(package.__name__)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
              if ".dictionaries.train" not in m.name]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "edgemon" or m.startswith("edgemon.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_first_on_its_own() -> None:
    out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True,
                         check=True, timeout=300)
    count, *failed = out.stdout.strip().splitlines()
    assert int(count) > 100, out.stdout
    assert not [f for f in failed if f], "\n".join(failed)

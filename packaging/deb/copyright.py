"""Write a package's machine-readable debian/copyright (DEP-5) for edgemon and every Python
distribution bundled in its virtualenv.

    python3 packaging/deb/copyright.py STAGE_ROOT VENV_PATH > .../usr/share/doc/PKG/copyright

VENV_PATH is the venv's installed path (``/opt/edgemon/agent``) under STAGE_ROOT. edgemon itself
is Apache-2.0 (Debian's common-licenses text). For each bundled distribution the ``Files:``
stanza names its directories in site-packages, its licence is taken from its metadata
(``License-Expression``, ``License``, or a trove classifier), and the full text from the licence
files the distribution ships (``*.dist-info/licenses/`` or ``LICENSE*`` in the dist-info),
which stay installed beside it. Standard library only: it runs with the build's Python.
"""

from __future__ import annotations

import re
import sys
from email.parser import Parser
from pathlib import Path

COMMON = {"Apache-2.0": "/usr/share/common-licenses/Apache-2.0",
          "GPL-2": "/usr/share/common-licenses/GPL-2", "GPL-3": "/usr/share/common-licenses/GPL-3",
          "LGPL-2.1": "/usr/share/common-licenses/LGPL-2.1",
          "MPL-2.0": "/usr/share/common-licenses/MPL-2.0"}
CLASSIFIERS = {"Apache Software License": "Apache-2.0", "BSD License": "BSD-3-clause",
               "MIT License": "Expat", "Python Software Foundation License": "PSF-2.0",
               "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
               "Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
               "ISC License (ISCL)": "ISC"}
ALIASES = {"MIT": "Expat", "BSD": "BSD-3-clause", "BSD-3-Clause": "BSD-3-clause",
           "BSD-2-Clause": "BSD-2-clause", "Apache 2.0": "Apache-2.0",
           "Apache License 2.0": "Apache-2.0", "Apache Software License": "Apache-2.0",
           "Apache License, Version 2.0": "Apache-2.0", "3-Clause BSD License": "BSD-3-clause"}


def licence_of(meta: dict[str, str], classifiers: list[str]) -> str:
    """A DEP-5 short name for a distribution's licence, best effort from its metadata."""
    expression = meta.get("License-Expression", "").strip()
    if expression:
        parts = re.split(r"\s+(AND|OR)\s+", expression)  # SPDX -> DEP-5: "and", "or"
        return " ".join(p.lower() if p in ("AND", "OR") else ALIASES.get(p, p) for p in parts)
    found = [CLASSIFIERS[c.split(" :: ")[-1]] for c in classifiers
             if c.startswith("License ::") and c.split(" :: ")[-1] in CLASSIFIERS]
    if found:
        return " or ".join(dict.fromkeys(found))
    text = meta.get("License", "").strip()
    if text and "\n" not in text and len(text) < 60:
        return ALIASES.get(text, text.replace(" ", "-"))
    return "other"


def _has_common_text(text: str) -> bool:
    """Whether ``text`` holds a full licence that /usr/share/common-licenses has (lintian:
    copyright-file-contains-full-*-license)."""
    upper = text.upper()
    return ("APACHE LICENSE" in upper and "VERSION 2.0" in upper
            and "TERMS AND CONDITIONS" in upper) or "GNU GENERAL PUBLIC LICENSE" in upper or (
        "GNU LESSER GENERAL PUBLIC LICENSE" in upper)


def indented(text: str) -> str:
    """A licence text as a DEP-5 continuation block (blank lines as " .")."""
    lines = text.strip("\n").expandtabs().splitlines() or ["(empty)"]
    return "\n".join(" " + (line.rstrip() if line.strip() else ".") for line in lines)


def main(stage: Path, venv: str) -> str:
    site = next((stage / venv.lstrip("/")).glob("lib/python3*/site-packages"))
    relative = "/".join(site.relative_to(stage).parts)
    out = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
           "Upstream-Name: edgemon",
           "Comment: edgemon and the Python distributions bundled in its virtualenv under",
           f" /{venv}. Each bundled distribution's own licence files stay installed in its",
           " *.dist-info directory.",
           "",
           "Files: *",
           "Copyright: 2026 the edgemon authors",
           "License: Apache-2.0",
           ""]
    used = {"Apache-2.0"}
    for info in sorted(site.glob("*.dist-info")):
        meta_path = info / "METADATA"
        if not meta_path.is_file():
            continue
        message = Parser().parsestr(meta_path.read_text(encoding="utf-8", errors="replace"))
        name, version = message.get("Name", info.name), message.get("Version", "")
        if name.lower() == "edgemon":
            continue
        licence = licence_of(dict(message.items()), message.get_all("Classifier") or [])
        top = [line.split(",")[0].split("/")[0] for line in
               (info / "RECORD").read_text().splitlines()] if (info / "RECORD").is_file() else []
        dirs = sorted({t for t in top if t and not t.startswith(("..", "__pycache__"))})
        files = " ".join(f"{relative}/{d}" + ("/*" if (site / d).is_dir() else "")
                         for d in dirs) or f"{relative}/{info.name}/*"
        authors = message.get("Author") or message.get("Author-email") or message.get(
            "Maintainer") or message.get("Maintainer-email") or f"the {name} authors"
        texts = sorted([*info.glob("licenses/**/*"), *info.glob("LICEN[CS]E*"),
                        *info.glob("COPYING*")])
        text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace")
                           for p in texts if p.is_file())
        out += [f"Files: {files}", f"Copyright: {' '.join(authors.split())}"]
        if licence in COMMON:
            used.add(licence)
            out.append(f"License: {licence}")
        elif _has_common_text(text):  # e.g. a full Apache or GPL text: point, do not copy
            out += [f"License: {licence}",
                    f" The licence files are installed in /{relative}/{info.name}; texts that",
                    " Debian ships are in /usr/share/common-licenses."]
        else:  # the text inline: the same short name may cover different copyright lines
            out += [f"License: {licence}", indented(text or "See the distribution's metadata.")]
        out += [f"Comment: {name} {version}, bundled.", ""]
    for key in sorted(used):
        out += [f"License: {key}",
                f" On Debian systems, the full text of this licence is in {COMMON[key]}.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1]), sys.argv[2]))

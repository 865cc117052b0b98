"""Packaging: the .deb files, their maintainer scripts, install.sh and the systemd units.

Builds the agent package for real (its venv with psutil & co., compressed with gzip -1 to stay
fast) and the collector package with ``--quick`` (same layout and scripts, no numpy/aiohttp
inside), then inspects them with dpkg-deb, runs the maintainer scripts and install.sh against a
temporary root with stubbed system commands, and checks the packaged units with
``systemd-analyze verify`` and ``systemd-analyze security --offline=true``.
Needs the Debian packages dpkg (dpkg-deb) and systemd (systemd-analyze); lintian, groff and
binutils for the Debian-policy checks.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
BUILD = PACKAGING / "build-deb.sh"
INSTALL = PACKAGING / "install.sh"
NAMES = ("agent", "collector")
MAX_EXPOSURE = 2.0
# Who builds the test packages: build-deb.sh refuses to make up a Maintainer field.
MAINTAINER = "Edgemon Test Builder <builder@edgemon.test>"
# The collector's stack: never in the agent package.
COLLECTOR_ONLY = ("numpy", "aiohttp", "pydantic", "uvloop", "sqlite_utils", "msgspec")


def _need(tool: str, debian_package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (Debian package {debian_package})")
    return path


def _run(*args: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=180,
                          **kw)
    if check:
        assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _target_python() -> str:
    """Debian's python3 when it can carry the venv (as on a real build), else this one."""
    debian = "/usr/bin/python3"
    if os.access(debian, os.X_OK) and subprocess.run(
            [debian, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True).returncode == 0:
        return debian
    return sys.executable


def _version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    return re.sub(r"([0-9])(a|b|rc|\.dev)([0-9]*)", r"\1~\2\3", version)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _need("dpkg-deb", "dpkg")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHON": _target_python(), "DEB_COMPRESS": "gzip",
           "DEB_COMPRESS_LEVEL": "1", "DEB_MAINTAINER": MAINTAINER}
    _run(BUILD, "--out", out, "agent", env=env)
    _run(BUILD, "--quick", "--out", out, "collector", env=env)
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    found = {n: out / f"edgemon-{n}_{_version()}_{arch}.deb" for n in NAMES}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in found.values())
    return found


@pytest.fixture(scope="module")
def trees(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each package's data (dpkg-deb -x) and control files (DEBIAN/, dpkg-deb -e)."""
    out = {}
    for name, deb in debs.items():
        tree = tmp_path_factory.mktemp(f"tree-{name}")
        _run("dpkg-deb", "-x", deb, tree)
        _run("dpkg-deb", "-e", deb, tree / "DEBIAN")
        out[name] = tree
    return out


def _listing(deb: Path) -> dict[str, tuple[str, str, str]]:
    """path -> (mode string, owner/group, symlink target or "") from ``dpkg-deb -c``."""
    entries = {}
    for line in _run("dpkg-deb", "-c", deb).stdout.splitlines():
        mode, owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ")
        entries[path.removeprefix(".").rstrip("/") or "/"] = (mode, owner, target)
    return entries


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            assert current is not None, f"{path}: key outside a section: {line}"
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


# --- package contents ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_package_layout(debs: dict[str, Path], name: str) -> None:
    entries = _listing(debs[name])
    pkg = f"edgemon-{name}"
    assert all(owner == "root/root" for _, owner, _ in entries.values())
    unit = entries[f"/lib/systemd/system/{pkg}.service"]
    assert unit[0] == "-rw-r--r--"
    assert entries[f"/etc/edgemon/{name}.toml"][0] == "-rw-r--r--"  # postinst narrows it
    assert entries[f"/opt/edgemon/{name}/bin/{pkg}"][0] == "-rwxr-xr-x"
    assert entries[f"/usr/bin/{pkg}"][0].startswith("l")
    assert entries[f"/usr/bin/{pkg}"][2] == f"/opt/edgemon/{name}/bin/{pkg}"
    assert f"/usr/share/doc/{pkg}/copyright" in entries
    assert f"/usr/share/doc/{pkg}/changelog.gz" in entries
    assert f"/usr/share/man/man1/{pkg}.1.gz" in entries
    assert f"/usr/share/man/man5/{pkg}.toml.5.gz" in entries
    assert not [p for p in entries if "__pycache__" in p or p.endswith(".pyc")], "bytecode"
    others = {f"edgemon-{n}" for n in (*NAMES, "local")} - {pkg}
    assert not [p for p in entries if p.rsplit("/", 1)[-1] in others], "foreign commands"
    # Only the package's own trees: nothing in /var, /home, /tmp...
    tops = {p.split("/")[1] for p in entries if p != "/"}
    assert tops == {"etc", "lib", "opt", "usr"}


def test_agent_package_bundles_its_dependencies_and_not_the_collectors(
        debs: dict[str, Path], trees: dict[str, Path]) -> None:
    site_packages = re.compile(r"^/opt/edgemon/agent/lib/python3\.\d+/site-packages/([^/]+)")
    site = {m.group(1) for m in map(site_packages.match, _listing(debs["agent"])) if m}
    assert {"edgemon", "psutil", "msgpack", "zstandard", "paho"} <= site
    assert not [m for m in COLLECTOR_ONLY if m in site], f"collector stack in the agent: {site}"
    # The bundled venv runs (from where it was extracted: a venv locates itself).
    python = trees["agent"] / "opt/edgemon/agent/bin/python"
    probe = ("import psutil, zstandard, msgpack, paho.mqtt.client, edgemon.agent.cli, sys\n"
             "print(sys.prefix)\n"
             "import importlib.util as u\n"
             f"print([m for m in {COLLECTOR_ONLY!r} if u.find_spec(m)])")
    lines = _run(python, "-I", "-B", "-c", probe).stdout.splitlines()  # -B: tree stays as shipped
    assert lines == [str(trees["agent"] / "opt/edgemon/agent"), "[]"]


def test_every_source_module_is_packaged(trees: dict[str, Path]) -> None:
    """A module missing from pyproject's package list is missing on every installed host."""
    site = next((trees["collector"] / "opt/edgemon/collector/lib").glob("python3.*/site-packages"))
    missing = []
    for part in ("agent", "collector", "protocol"):
        for module in sorted((ROOT / part).rglob("*.py")):
            if "__pycache__" in module.parts or not (module.parent / "__init__.py").exists():
                continue
            relative = module.relative_to(ROOT)
            if not (site / "edgemon" / relative).is_file():
                missing.append(str(relative))
    assert not missing, ("not in the built wheel (add the packages to [tool.setuptools] packages"
                         f" in pyproject.toml): {missing}")


@pytest.mark.parametrize("name", NAMES)
def test_no_build_paths_left(trees: dict[str, Path], name: str) -> None:
    venv = trees[name] / "opt/edgemon" / name
    shebang = (venv / "bin" / f"edgemon-{name}").read_text().splitlines()[0]
    assert shebang == f"#!/opt/edgemon/{name}/bin/python"
    assert "/opt/edgemon/" in (venv / "pyvenv.cfg").read_text()
    leftovers = [p for p in venv.rglob("*") if p.is_file() and b"edgemon-deb." in p.read_bytes()]
    assert not leftovers, leftovers[:5]


@pytest.mark.parametrize("name", NAMES)
def test_control_and_conffiles(debs: dict[str, Path], trees: dict[str, Path], name: str) -> None:
    info = _run("dpkg-deb", "-I", debs[name]).stdout
    fields = dict(re.findall(r"^ ([A-Z][\w-]*): (.*)$", info, re.M))
    assert fields["Package"] == f"edgemon-{name}"
    assert fields["Version"] == _version()
    assert fields["Architecture"] == _run("dpkg", "--print-architecture").stdout.strip()
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "adduser" in depends and any(re.fullmatch(r"python3\.\d+", d) for d in depends)
    assert "procps" in depends  # /bin/kill, for ExecReload=
    assert fields["Maintainer"] == MAINTAINER
    if name == "agent":  # bundles C extensions (the quick collector bundles none)
        assert any(re.fullmatch(r"libc6 \(>= 2\.\d+\)", d) for d in depends), depends
    control = trees[name] / "DEBIAN"
    assert (control / "conffiles").read_text().split() == [f"/etc/edgemon/{name}.toml"]
    shipped = (trees[name] / "etc/edgemon" / f"{name}.toml").read_bytes()
    assert shipped == (ROOT / name / f"{name}.example.toml").read_bytes()
    # md5sums covers every shipped file (dpkg --verify relies on it).
    listed = {line.split(None, 1)[1] for line in (control / "md5sums").read_text().splitlines()}
    files = {str(p.relative_to(trees[name])) for p in trees[name].rglob("*")
             if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts}
    assert listed == files


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_executable_and_parse(trees: dict[str, Path], name: str,
                                                     script: str) -> None:
    path = trees[name] / "DEBIAN" / script
    assert path.stat().st_mode & 0o111 == 0o111
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text
    assert "@NAME@" not in text and f"edgemon-{name}" in text
    _run("sh", "-n", path)


def test_missing_example_config_is_a_clear_error(tmp_path: Path) -> None:
    _need("dpkg-deb", "dpkg")
    copy = tmp_path / "src"
    for part in ("packaging", "systemd", "agent", "collector", "protocol"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, copy / f)
    (copy / "agent" / "agent.example.toml").unlink()
    proc = _run(copy / "packaging" / "build-deb.sh", "--quick", "--out", tmp_path / "dist",
                check=False, env={**os.environ, "PYTHON": _target_python(),
                                  "DEB_MAINTAINER": MAINTAINER})
    assert proc.returncode != 0
    assert "agent/agent.example.toml" in proc.stderr and "edgemon-agent" in proc.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


# --- maintainer scripts, run against a temporary root ---------------------------------------------

STUBS = {
    # Stateful user database: adduser/useradd create, getent finds.
    "getent": 'test -e "$STUB_STATE/$1-$2"',
    "addgroup": 'touch "$STUB_STATE/group-edgemon"',
    "groupadd": 'touch "$STUB_STATE/group-edgemon"',
    "adduser": 'touch "$STUB_STATE/passwd-edgemon"',
    "useradd": 'touch "$STUB_STATE/passwd-edgemon"',
    "chown": "true",
    "dpkg-statoverride": "exit 1",
    "systemctl": 'case "$1" in is-active) exit "${STUB_ACTIVE:-3}";; esac',
    "deb-systemd-helper": 'case "$1 $2" in "--quiet was-enabled") exit 0;; esac',
    "deb-systemd-invoke": "true",
}


class Sandbox:
    """A fake root plus stubbed system commands that log their arguments."""

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.root.mkdir()
        self.state = base / "stub-state"
        self.state.mkdir()
        self.log = base / "calls.log"
        self.log.touch()
        bindir = base / "stubs"
        bindir.mkdir()
        for name, body in STUBS.items():
            path = bindir / name
            path.write_text(f'#!/bin/sh\necho "{name} $*" >>"$STUB_LOG"\n{body}\n')
            path.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
                    "STUB_LOG": str(self.log), "STUB_STATE": str(self.state),
                    "DPKG_ROOT": str(self.root), "EDGEMON_ROOT": str(self.root)}

    def systemd_running(self) -> None:
        (self.root / "run/systemd/system").mkdir(parents=True)

    def calls(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return lines

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        assert self.env["DPKG_ROOT"] and self.env["EDGEMON_ROOT"]  # never the real system
        return _run(*args, env={**self.env, **env})


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", NAMES)
def test_postinst_fresh_install_then_upgrade(trees: dict[str, Path], box: Sandbox,
                                             name: str) -> None:
    control = trees[name] / "DEBIAN"
    unit = f"edgemon-{name}.service"
    conf = box.root / "etc/edgemon" / f"{name}.toml"
    conf.parent.mkdir(parents=True)
    shutil.copy(trees[name] / "etc/edgemon" / f"{name}.toml", conf)
    conf.chmod(0o644)  # as dpkg unpacks it
    box.systemd_running()

    box.run(control / "postinst", "configure")
    calls = box.calls()
    assert any(c.startswith("addgroup --system") for c in calls)
    assert any(c.startswith("adduser --system") and c.endswith(" edgemon") for c in calls)
    state = box.root / "var/lib" / f"edgemon-{name}"
    assert state.is_dir() and _mode(state) == 0o700
    assert f"chown edgemon:edgemon {state}" in calls
    assert f"chown root:edgemon {conf}" in calls and _mode(conf) == 0o640
    assert f"deb-systemd-helper enable {unit}" in calls
    assert "systemctl --system daemon-reload" in calls
    assert f"deb-systemd-invoke start {unit}" in calls

    # Upgrade: the user exists, the data stays, the service is restarted.
    (state / "buffer.db").write_bytes(b"precious")
    box.run(trees[name] / "DEBIAN" / "prerm", "upgrade", "9.9.9")
    assert box.calls() == [f"deb-systemd-invoke stop {unit}"]
    box.run(control / "postinst", "configure", "0.0.1")
    calls = box.calls()
    assert not any(c.startswith(("adduser", "addgroup")) for c in calls)
    assert f"deb-systemd-invoke restart {unit}" in calls
    assert (state / "buffer.db").read_bytes() == b"precious"


def test_postinst_without_systemd_enables_but_does_not_start(trees: dict[str, Path],
                                                             box: Sandbox) -> None:
    box.run(trees["agent"] / "DEBIAN" / "postinst", "configure")
    calls = box.calls()
    assert "deb-systemd-helper enable edgemon-agent.service" in calls
    assert not [c for c in calls if c.startswith(("systemctl", "deb-systemd-invoke"))]
    box.run(trees["agent"] / "DEBIAN" / "prerm", "remove")
    assert box.calls() == []


@pytest.mark.parametrize("name", NAMES)
def test_postrm_remove_keeps_data_and_purge_deletes_it(trees: dict[str, Path], box: Sandbox,
                                                       name: str) -> None:
    control = trees[name] / "DEBIAN"
    other = "collector" if name == "agent" else "agent"
    state = box.root / "var/lib" / f"edgemon-{name}"
    etc = box.root / "etc/edgemon"
    for path in (state / "data.db", etc / f"{name}.toml", etc / f"{other}.toml",
                 box.root / "var/lib" / f"edgemon-{other}" / "data.db",
                 box.root / "opt/edgemon" / name / "lib/stray.pyc"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    box.run(control / "postrm", "remove")
    assert (state / "data.db").exists() and (etc / f"{name}.toml").exists()
    assert not (box.root / "opt/edgemon" / name).exists()
    assert f"deb-systemd-helper mask edgemon-{name}.service" in box.calls()

    box.run(control / "postrm", "purge")
    assert not state.exists() and not (etc / f"{name}.toml").exists()
    # The other program's configuration and data are not ours to delete.
    assert (etc / f"{other}.toml").exists()
    assert (box.root / "var/lib" / f"edgemon-{other}" / "data.db").exists()
    assert f"deb-systemd-helper purge edgemon-{name}.service" in box.calls()
    (etc / f"{other}.toml").unlink()
    box.run(control / "postrm", "purge")
    assert not etc.exists()


# --- install.sh ----------------------------------------------------------------------------------

def test_install_sh_installs_upgrades_uninstalls_and_purges(box: Sandbox) -> None:
    _run("bash", "-n", INSTALL)
    box.systemd_running()
    root = box.root
    venv = root / "opt/edgemon/agent"
    conf = root / "etc/edgemon/agent.toml"
    state = root / "var/lib/edgemon-agent"
    unit = root / "etc/systemd/system/edgemon-agent.service"
    link = root / "usr/local/bin/edgemon-agent"
    env = {"PYTHON": sys.executable, "PIP_NO_DEPS": "1"}  # edgemon itself is enough here

    box.run(INSTALL, **env)
    calls = box.calls()
    assert any(c.startswith("useradd --system") for c in calls)
    assert (venv / "bin/edgemon-agent").is_file()
    _run(venv / "bin/python", "-c", "import edgemon.common.sdnotify")
    assert conf.read_bytes() == (ROOT / "agent/agent.example.toml").read_bytes()
    assert _mode(conf) == 0o640 and f"chown root:edgemon {conf}" in calls
    assert state.is_dir() and _mode(state) == 0o700
    assert unit.read_bytes() == (ROOT / "systemd/edgemon-agent.service").read_bytes()
    assert os.readlink(link) == "/opt/edgemon/agent/bin/edgemon-agent"
    assert calls[-3:] == ["systemctl enable edgemon-agent.service", "systemctl daemon-reload",
                          "systemctl restart edgemon-agent.service"]

    # Again, over a running service and an edited configuration: idempotent, config kept.
    conf.write_text("# mine\n")
    (state / "buffer.db").write_text("x")
    out = box.run(INSTALL, **env, STUB_ACTIVE="0").stdout
    calls = box.calls()
    assert "reusing the venv" in out and "keeping /etc/edgemon/agent.toml" in out
    assert not any(c.startswith("useradd") for c in calls)
    assert "systemctl stop edgemon-agent.service" in calls
    assert conf.read_text() == "# mine\n" and (state / "buffer.db").exists()

    box.run(INSTALL, "--uninstall")
    assert "systemctl disable --now edgemon-agent.service" in box.calls()
    assert not venv.exists() and not unit.exists() and not link.is_symlink()
    assert conf.exists() and (state / "buffer.db").exists()

    box.run(INSTALL, "--purge")
    assert not conf.exists() and not state.exists() and not (root / "etc/edgemon").exists()


# --- units ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unit_root(trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both packages unpacked into one root, with the host's stock units (targets) beside."""
    _need("systemd-analyze", "systemd")
    root = tmp_path_factory.mktemp("unit-root")
    stock = Path("/lib/systemd/system")
    if not (stock / "sysinit.target").exists():
        pytest.skip("no stock systemd units in /lib/systemd/system (Debian package systemd)")
    shutil.copytree(stock, root / "lib/systemd/system", symlinks=True)
    for tree in trees.values():
        shutil.copytree(tree, root, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("DEBIAN"))
    # What the units run besides the packages' own commands (both depend on procps).
    kill = root / "bin/kill"
    kill.parent.mkdir(parents=True, exist_ok=True)
    kill.write_text("#!/bin/sh\n")
    kill.chmod(0o755)
    return root


@pytest.mark.parametrize("name", NAMES)
def test_unit_verifies_cleanly(unit_root: Path, name: str) -> None:
    """No warning at all (unknown keys, bad values), and ExecStart is the packaged command."""
    proc = _run("systemd-analyze", "verify", f"--root={unit_root}", f"edgemon-{name}.service",
                check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_verify_would_catch_a_missing_command(unit_root: Path, tmp_path: Path) -> None:
    command = unit_root / "opt/edgemon/agent/bin/edgemon-agent"
    moved = tmp_path / "moved"
    command.rename(moved)
    try:
        proc = _run("systemd-analyze", "verify", f"--root={unit_root}", "edgemon-agent.service",
                    check=False)
    finally:
        moved.rename(command)
    assert proc.returncode != 0 and "edgemon-agent" in proc.stdout + proc.stderr


def _exposure(unit: Path) -> tuple[float, str]:
    proc = _run("systemd-analyze", "security", "--offline=true", unit, check=False)
    output = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure in:\n{output}"
    return float(match.group(1)), output


@pytest.mark.parametrize("name", NAMES)
def test_unit_exposure(unit_root: Path, name: str) -> None:
    exposure, output = _exposure(unit_root / f"lib/systemd/system/edgemon-{name}.service")
    assert exposure <= MAX_EXPOSURE, output


def test_exposure_parser_sees_an_unhardened_unit(tmp_path: Path) -> None:
    _need("systemd-analyze", "systemd")
    unit = tmp_path / "plain.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    assert _exposure(unit)[0] > 9.0


@pytest.mark.parametrize("name", NAMES)
def test_unit_settings(name: str) -> None:
    unit = _unit(ROOT / "systemd" / f"edgemon-{name}.service")
    service, section = unit["Service"], unit["Unit"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}: {service.get(key)}"
        return service[key][0]

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("WatchdogSec") and one("Restart") == "on-failure"
    assert "StartLimitIntervalSec" in section and "StartLimitBurst" in section  # [Unit] keys
    assert one("RestartPreventExitStatus") == "2"  # configuration error: restarting won't help
    assert one("ExecStart").split()[:4] == [f"/opt/edgemon/{name}/bin/edgemon-{name}", "run",
                                             "-c", f"/etc/edgemon/{name}.toml"]
    assert (one("User"), one("Group")) == ("edgemon", "edgemon") and "DynamicUser" not in service
    assert (one("StateDirectory"), one("StateDirectoryMode")) == (f"edgemon-{name}", "0700")
    assert one("ConfigurationDirectory") == "edgemon"
    assert one("ProtectSystem") == "strict" and one("MemoryDenyWriteExecute") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    # A syscall outside the filter fails with EPERM instead of killing the process (the
    # collector's OpenBLAS calls mbind(), which @resources removes).
    assert service["SystemCallFilter"][0] == "@system-service"
    assert one("SystemCallErrorNumber") == "EPERM"
    # SIGHUP re-reads the agent's configuration (agent/runner.py) and the collector's alert
    # rules (collector/app.py); an unhandled SIGHUP would end the process "cleanly", beyond the
    # reach of Restart=on-failure.
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    if name == "agent":
        # psutil reads /proc/{stat,meminfo,diskstats,net/dev,...} and statvfs()s /home.
        assert service.get("ProcSubset", ["all"]) == ["all"]
        assert one("ProtectHome") == "read-only"


# --- Debian policy: lintian, manual pages, copyright, bytecode ------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_lintian_reports_no_error_and_no_warning_not_overridden(debs: dict[str, Path],
                                                                name: str) -> None:
    """Overrides, each with its reason, are in packaging/deb/lintian-overrides."""
    lintian = _need("lintian", "lintian")
    proc = _run(lintian, "--tag-display-limit", "0", debs[name], check=False)
    found = [line for line in proc.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert found == [], "\n".join(found)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lintian_would_catch_a_shipped_pycache(debs: dict[str, Path], tmp_path: Path) -> None:
    """The check above can fail: the same package with a __pycache__ added is an error."""
    lintian = _need("lintian", "lintian")
    tree = tmp_path / "tree"
    _run("dpkg-deb", "-R", debs["collector"], tree)
    cache = next((tree / "opt/edgemon/collector/lib").glob("python3.*/site-packages/edgemon"))
    (cache / "__pycache__").mkdir()
    (cache / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0" * 16)
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, tmp_path / "bad.deb")
    output = _run(lintian, "--tag-display-limit", "0", tmp_path / "bad.deb", check=False).stdout
    assert "E: edgemon-collector: package-installs-python-pycache-dir" in output


@pytest.mark.parametrize("name", NAMES)
def test_manual_pages_render_without_warnings(trees: dict[str, Path], name: str) -> None:
    groff = _need("groff", "groff")
    pages = sorted((trees[name] / "usr/share/man").rglob("*.gz"))
    assert [p.name for p in pages] == [f"edgemon-{name}.1.gz", f"edgemon-{name}.toml.5.gz"]
    for page in pages:
        source = subprocess.run(["gzip", "-dc", str(page)], capture_output=True, check=True).stdout
        proc = subprocess.run([groff, "-man", "-ww", "-z"], input=source, capture_output=True)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
        text = source.decode()
        assert f".TH EDGEMON-{name.upper()}" in text and ".SH SEE ALSO" in text
    agent_page = (PACKAGING / "man" / "edgemon-agent.toml.5").read_text()
    for key in ("interval_seconds", "batch_cycles", "families", "[intervals]", "client_id",
                "use_username_as_clientid", "max_bytes", "ack_timeout_seconds"):
        assert key in agent_page, key


@pytest.mark.parametrize("name", NAMES)
def test_copyright_is_machine_readable_and_names_the_bundled_distributions(
        trees: dict[str, Path], name: str) -> None:
    text = (trees[name] / f"usr/share/doc/edgemon-{name}/copyright").read_text()
    stanzas = [dict(re.findall(r"^([A-Z][\w-]*): ?(.*)$", block, re.M))
               for block in text.strip().split("\n\n")]
    assert stanzas[0]["Format"] == (
        "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    files = [st for st in stanzas if "Files" in st]
    assert files[0] == {"Files": "*", "Copyright": "2026 the edgemon authors",
                        "License": "Apache-2.0"}
    assert all(st.get("Copyright") and st.get("License") for st in files)
    licences = {st["License"] for st in files}
    standalone = {st["License"] for st in stanzas if "Files" not in st and "License" in st}
    assert "Apache-2.0" in standalone and "/usr/share/common-licenses/Apache-2.0" in text
    if name == "agent":
        bundled = " ".join(st["Files"] for st in files[1:])
        for dist in ("psutil", "msgpack", "zstandard", "paho"):
            assert f"site-packages/{dist}/*" in bundled, dist
        assert len(licences) > 1  # the bundled distributions' own licences


def test_postinst_compiles_the_bytecode_and_prerm_removes_it(trees: dict[str, Path],
                                                             box: Sandbox) -> None:
    venv = box.root / "opt/edgemon/agent"
    shutil.copytree(trees["agent"] / "opt/edgemon/agent", venv, symlinks=True)
    assert not list(venv.rglob("__pycache__"))
    box.run(trees["agent"] / "DEBIAN" / "postinst", "configure")
    compiled = list(venv.rglob("__pycache__/*.pyc"))
    assert any("edgemon/agent/" in str(p) for p in compiled)
    # compiled for the installed path, not the temporary root it was run against
    pyc = next(p for p in compiled if p.name.startswith("cli."))
    assert str(box.root).encode() not in pyc.read_bytes()
    box.run(trees["agent"] / "DEBIAN" / "prerm", "remove")
    assert not list(venv.rglob("__pycache__"))

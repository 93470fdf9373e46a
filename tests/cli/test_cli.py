"""The `sandbox-kernel` command line, run as a subprocess (and in-process where cheaper).

No kernel is started here: `run` is exercised only where it must refuse before exec.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from testenv import REPO
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from sandbox_kernel import cli, policy, resources

SHIPPED = ["base", "default", "free", "gpu", "offline", "research"]
SHIPPED_DIR = Path(resources.shipped_profiles_dir())


@pytest.fixture
def env(profile_dir):
    """Environment of the CLI: an empty profile dir first on the search path, no ceiling."""
    e = dict(os.environ)
    e["PYTHONWARNINGS"] = "ignore"
    return e


def sk(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 60):
    """Run the CLI in a fresh interpreter; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def main(capsys, *args: str) -> tuple[int, str, str]:
    """Run cli.main in this process; argparse exits become return codes."""
    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("args,expect", [
    ([], ["install", "profiles", "check", "run", "doctor"]),
    (["install"], ["--profile", "--all", "--name", "--display-name", "--prefix", "--user", "--sys-prefix"]),
    (["profiles"], ["list", "show", "validate"]),
    (["profiles", "list"], ["List every profile"]),
    (["profiles", "show"], ["hard", "--ceiling", "--json"]),
    (["profiles", "validate"], ["FILE"]),
    (["check"], ["NOTEBOOK.ipynb", "--profile", "--json"]),
    (["run"], ["--profile", "--connection-file", "CMD"]),
    (["doctor"], ["--profile", "Landlock"]),
])
@pytest.mark.kernel
def test_help(args, expect, env):
    proc = sk(*args, "--help", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: sandbox-kernel")
    for word in expect:
        assert word in proc.stdout, word
    assert proc.stderr == ""


@pytest.mark.parametrize("args,one", [
    ([], "something found, invalid or refused"),
    (["install"], "nothing is installed"),
    (["profiles", "list"], "listed as INVALID"),
    (["profiles", "show"], "no such profile"),
    (["profiles", "validate"], "a file is invalid"),
    (["check"], "forbids was found"),
    (["run"], "refused to start"),
    (["doctor"], "a profile tried would not start"),
])
@pytest.mark.kernel
def test_help_documents_exit_statuses(args, one, env):
    out = sk(*args, "--help", env=env).stdout
    table = out[out.index("\nexit status:\n"):]
    assert re.search(r"^  0 +success", table, re.M), table
    assert re.search(rf"^  1 +.*{re.escape(one)}", table.replace("\n       ", " "), re.M), table
    assert re.search(r"^  2 +usage error", table, re.M), table
    assert bool(re.search(r"^  141 +.*\| head", table, re.M)) == (args != ["run"]), table


def test_version(env):
    proc = sk("--version", env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("sandbox-kernel ")


# --------------------------------------------------------------------------- install


def specs_dir(prefix: Path) -> Path:
    return prefix / "share" / "jupyter" / "kernels"


def test_install_free_is_found_by_jupyter(tmp_path, env, monkeypatch):
    prefix = tmp_path / "prefix"
    # install writes the package's bytecode: kernels cannot (the package is read-only inside the sandbox)
    kernel_pyc = Path(importlib.util.cache_from_source(os.path.join(resources.PACKAGE_DIR, "kernel.py")))
    kernel_pyc.unlink(missing_ok=True)
    proc = sk("install", "--profile", "free", "--prefix", str(prefix), env=env)
    assert proc.returncode == 0, proc.stderr
    kernel_json = specs_dir(prefix) / "sandbox-free" / "kernel.json"
    assert kernel_json.is_file()
    assert f"installed kernelspec sandbox-free (free) in {specs_dir(prefix) / 'sandbox-free'}" in proc.stdout
    assert "guard hook: " in proc.stdout and os.path.isfile(resources.guard_hook_path())
    assert kernel_pyc.is_file()

    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    ksm = KernelSpecManager()
    assert "sandbox-free" in ksm.find_kernel_specs()
    spec = ksm.get_kernel_spec("sandbox-free")
    assert spec.display_name == "Python 3 (sandbox: free)"
    assert spec.interrupt_mode == "signal"
    assert spec.language == "python"
    launcher = [sys.executable, "-I", "-S", os.path.join(resources.PACKAGE_DIR, "boot.py"), "run", "--profile", "free",
                "--connection-file", "{connection_file}", "--policy-cache", "{resource_dir}/policy-cache.json", "--"]
    assert spec.argv[:len(launcher)] == launcher
    kernel = spec.argv[len(launcher):]
    assert kernel[0] == sys.executable
    assert kernel[-6:] == ["-m", "sandbox_kernel", "-f", "{connection_file}", "--profile", "free"]
    assert spec.metadata["sandbox_kernel"]["profile"] == "free"
    assert spec.metadata["sandbox_kernel"]["description"] == policy.resolve("free").data["description"]
    # The logos come along.
    assert (specs_dir(prefix) / "sandbox-free" / "logo-64x64.png").is_file()


def test_install_builds_the_namespaces_init_or_says_why_not(tmp_path, env):
    """install compiles init.c into the kernelspec, beside the policy cache (init_helper); where it
    cannot, the kernelspec still works (the launcher's Python is the init) and install says so."""
    import shutil
    from sandbox_kernel import init_helper

    if init_helper.compiler() is None:
        pytest.skip("no C compiler here")
    proc = sk("install", "--profile", "free", "--prefix", str(tmp_path / "with"), env=env)
    assert proc.returncode == 0, proc.stderr
    helper = specs_dir(tmp_path / "with") / "sandbox-free" / init_helper.FILE_NAME
    assert helper.is_file() and os.access(helper, os.X_OK) and (helper.stat().st_mode & 0o777) == 0o755
    assert init_helper.FILE_NAME not in proc.stderr
    lone = tmp_path / "bin"  # a PATH with this Python and no compiler
    lone.mkdir()
    os.symlink(sys.executable, lone / "python3")
    proc = sk("install", "--profile", "free", "--prefix", str(tmp_path / "without"),
              env=env | {"PATH": str(lone), "CC": ""})
    assert proc.returncode == 0, proc.stderr
    assert not (specs_dir(tmp_path / "without") / "sandbox-free" / init_helper.FILE_NAME).exists()
    assert f"sandbox-free: no {init_helper.FILE_NAME}, since there is no C compiler" in proc.stderr
    proc = sk("install", "--profile", "free", "--prefix", str(tmp_path / "broken"),
              env=env | {"CC": shutil.which("false")})
    assert proc.returncode == 0, proc.stderr
    assert f"`{shutil.which('false')} -O2 -o {init_helper.FILE_NAME}" in proc.stderr and "failed" in proc.stderr


def test_install_custom_name_and_display_name(tmp_path, env, monkeypatch):
    prefix = tmp_path / "prefix"
    proc = sk("install", "--profile", "offline", "--name", "exam-kernel", "--display-name", "Exam (no network)",
              "--prefix", str(prefix), env=env)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec("exam-kernel")
    assert spec.display_name == "Exam (no network)"
    assert spec.argv[spec.argv.index("--profile") + 1] == "offline"
    assert spec.argv[-2:] == ["--profile", "offline"]
    assert not (specs_dir(prefix) / "sandbox-offline").exists()


def test_install_all(tmp_path, env, monkeypatch):
    prefix = tmp_path / "prefix"
    # A profile dir on the search path that shadows a shipped name does not hide it from --all.
    (Path(env[policy.PROFILE_PATH_ENV]) / "free.yaml").write_text("extends: base\ndescription: shadow\n")
    proc = sk("install", "--all", "--prefix", str(prefix), env=env)
    assert proc.returncode == 0, proc.stderr
    installed = sorted(p.name for p in specs_dir(prefix).iterdir())
    assert installed == [f"sandbox-{n}" for n in SHIPPED]
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    ksm = KernelSpecManager()
    for name in SHIPPED:
        spec = ksm.get_kernel_spec(f"sandbox-{name}")
        assert spec.display_name == f"Python 3 (sandbox: {name})"
        assert spec.argv[-1] == name
    # research has full network: the debugger may be advertised; free cannot reach it.
    assert ksm.get_kernel_spec("sandbox-research").metadata["debugger"] is True
    assert ksm.get_kernel_spec("sandbox-free").metadata["debugger"] is False


def test_install_profile_file_uses_absolute_path(tmp_path, env, monkeypatch):
    prefix = tmp_path / "prefix"
    (tmp_path / "lab.yaml").write_text("extends: free\ndescription: the lab\n")
    proc = sk("install", "--profile", "lab.yaml", "--prefix", str(prefix), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((specs_dir(prefix) / "sandbox-lab" / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (sandbox: lab)"
    assert spec["argv"][-1] == str((tmp_path / "lab.yaml").resolve())
    assert spec["argv"][spec["argv"].index("--profile") + 1] == str((tmp_path / "lab.yaml").resolve())


@pytest.mark.parametrize("args,fragments", [
    (["--profile", "nosuch"], ["nosuch: no such profile"]),
    (["--profile", "broken"], ["broken.yaml: limits.processes: 0 is out of range"]),
    (["--profile", "missing/file.yaml"], ["missing/file.yaml: profile file not found"]),
    (["--profile", "free", "--name", "bad name!"], ["invalid kernelspec name 'bad name!'"]),
])
def test_install_refuses_and_installs_nothing(args, fragments, tmp_path, env):
    (Path(env[policy.PROFILE_PATH_ENV]) / "broken.yaml").write_text("limits: {processes: 0}\n")
    prefix = tmp_path / "prefix"
    hook = Path(resources.guard_hook_path())
    before = hook.stat().st_mtime_ns if hook.exists() else None
    proc = sk("install", *args, "--prefix", str(prefix), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.startswith("sandbox-kernel: error: ")
    for f in fragments:
        assert f in proc.stderr
    assert not prefix.exists()
    assert "installed" not in proc.stdout and "guard hook" not in proc.stdout
    assert (hook.stat().st_mtime_ns if hook.exists() else None) == before


def test_install_into_unwritable_place_is_a_clear_error(tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = sk("install", "--profile", "free", "--prefix", str(blocker), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "cannot install kernelspec 'sandbox-free'" in proc.stderr


# --------------------------------------------------------------------------- profiles


@pytest.mark.covers("description")
@pytest.mark.covers("description")
def test_profiles_list(env):
    proc = sk("profiles", "list", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in SHIPPED:
        desc = policy.resolve(name).data["description"]
        row = [line for line in lines if re.match(rf"\s*{name}\s", line)]
        assert row, name
        assert desc[:40] in row[0], (name, row[0])
        assert str(SHIPPED_DIR / f"{name}.yaml") in proc.stdout


def test_profiles_list_marks_an_invalid_profile(env):
    (Path(env[policy.PROFILE_PATH_ENV]) / "zzbroken.yaml").write_text("network: {mode: sideways}\n")
    proc = sk("profiles", "list", env=env)
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if re.match(r"\s*zzbroken\s", line))
    assert "INVALID" in row and "sideways" in row


def test_profiles_list_json(env):
    d = Path(env[policy.PROFILE_PATH_ENV])
    (d / "zzbroken.yaml").write_text("network: {mode: sideways}\n")
    proc = sk("profiles", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    found = {p["name"]: p for p in json.loads(proc.stdout)}
    for name in SHIPPED:
        assert found[name] == {"name": name, "file": str(SHIPPED_DIR / f"{name}.yaml"), "valid": True,
                               "description": policy.resolve(name).data["description"], "problems": []}
    bad = found["zzbroken"]
    assert bad["valid"] is False and bad["file"] == str(d / "zzbroken.yaml") and bad["description"] == ""
    assert bad["problems"][0]["key"] == "network.mode" and "sideways" in bad["problems"][0]["message"]
    assert bad["problems"][0]["file"].endswith("zzbroken.yaml")


def _row(out: str, rule: str) -> str:
    rows = [line for line in out.splitlines() if re.match(rf"\s*{re.escape(rule)}\s", line)]
    assert rows, f"no row {rule!r} in:\n{out}"
    return rows[0]


def test_profiles_show_marks_hard_and_soft(env):
    proc = sk("profiles", "show", "free", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("profile: free\nfrom: ")
    assert str(SHIPPED_DIR / "free.yaml") in out.splitlines()[1]
    assert re.search(r"\bhard\b", _row(out, "network.mode")) and "restricted" in _row(out, "network.mode")
    assert re.search(r"\bhard\b", _row(out, "network.tcp_connect_ports"))
    assert "53, 80, 443" in _row(out, "network.tcp_connect_ports")
    assert re.search(r"\bsoft\b", _row(out, "imports.deny (deepfake)"))
    assert "roop" in _row(out, "imports.deny (deepfake)")
    assert re.search(r"\bsoft\b", _row(out, "shell.deny"))
    assert re.search(r"\bhard\b", _row(out, "limits.memory")) and "8 GiB" in _row(out, "limits.memory")
    assert re.search(r"\bhard\b", _row(out, "exec.allow"))
    assert "placeholders here:" in out
    # Every rule row says hard or soft.
    header = out.index("hard/soft")
    table = out[header:out.index("placeholders here:")]
    rule_rows = [line for line in table.splitlines()[2:] if re.match(r"\s{1,3}\S", line)]
    assert len(rule_rows) > 10
    for line in rule_rows:
        assert re.search(r"\s(hard|soft)\s", line), line


def test_profiles_show_says_what_python_and_system_grant(env):
    """{python} is the interpreter file (and the loader, and a venv's own bin), never the
    directory the interpreter shares with other programs; {system} is said to be the looser one."""
    proc = sk("profiles", "show", "offline", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout[proc.stdout.index("exec.allow {python}"):].splitlines()
    end = next((i for i, line in enumerate(lines[1:], 1) if re.match(r"\s{1,3}\S", line)), len(lines))
    row = " ".join(" ".join(lines[:end]).split())
    real = os.path.realpath(sys.executable)
    assert "the interpreter, not its directory" in row and real in row, row
    assert not re.search(re.escape(os.path.dirname(real)) + r"(,|;| |$)", row), row
    proc = sk("profiles", "show", "free", env=env)
    assert "every program in them" in _row(proc.stdout, "exec.allow {system}")


def test_profiles_show_gpu_memory_fraction_is_soft(env):
    proc = sk("profiles", "show", "gpu", env=env)
    assert proc.returncode == 0, proc.stderr
    row = _row(proc.stdout, "accelerators.gpu.memory_fraction")
    assert "0.9" in row and re.search(r"\bsoft\b", row)
    assert re.search(r"\bhard\b", _row(proc.stdout, "accelerators.gpu"))


@pytest.mark.parametrize("gpu,tpu,gpu_text,tpu_text", [
    ("{enabled: true, devices: [0]}", "{enabled: true, chips: [1]}",
     "enabled: GPU 0 (devices: [0])", "enabled: TPU chip 1 (chips: [1])"),
    ("{enabled: true, devices: [0, 2]}", "{enabled: true, chips: [0, 3]}",
     "enabled: GPU 0, GPU 2 (devices: [0, 2])", "enabled: TPU chip 0, TPU chip 3 (chips: [0, 3])"),
    ("{enabled: true, devices: []}", "{enabled: true, chips: []}",
     "enabled, but no GPU is allowed (devices: [])", "enabled, but no TPU chip is allowed (chips: [])"),
    ("{enabled: true}", "{enabled: true}",
     "enabled: every GPU present (devices not set)", "enabled: every TPU chip present (chips not set)"),
    ("{enabled: true, devices: [{mig: MIG-4f1c, gpu: 0, gpu_instance: 1, compute_instance: 0}, MIG-77aa]}",
     "{enabled: false}",
     "enabled: MIG-4f1c (GPU 0, GPU instance 1, compute instance 0), MIG-77aa",
     "disabled: no /dev/accel* or /dev/vfio node opens"),
])
def test_profiles_show_device_lists_read_unambiguously(gpu, tpu, gpu_text, tpu_text, env):
    """`enabled: 0` must not read like "disabled": device lists name what they list."""
    (Path(env[policy.PROFILE_PATH_ENV]) / "acc.yaml").write_text(
        f"extends: base\naccelerators:\n  gpu: {gpu}\n  tpu: {tpu}\n")
    from sandbox_kernel.report import policy_rows

    rows = {rule: (value, hard) for rule, value, hard, _ in policy_rows(policy.resolve("acc"))}
    assert rows["accelerators.gpu"] == (gpu_text, "hard")
    assert rows["accelerators.tpu"] == (tpu_text, "hard")
    if "(devices: [0])" in gpu_text:  # and so the table reads
        proc = sk("profiles", "show", "acc", env=env)
        assert re.search(r"\senabled: GPU 0 \(devices: \[0\]\)\s+hard\s", _row(proc.stdout, "accelerators.gpu"))
        assert re.search(r"\senabled: TPU chip 1 \(chips: \[1\]\)\s+hard\s", _row(proc.stdout, "accelerators.tpu"))


def test_profiles_show_json(env):
    proc = sk("profiles", "show", "free", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data == policy.resolve("free").data
    assert data["network"] == {"mode": "restricted", "tcp_connect_ports": [53, 80, 443], "udp": False,
                               "listen_ports": []}
    assert "profile: free" in proc.stderr


def test_profiles_show_with_ceiling(env):
    d = Path(env[policy.PROFILE_PATH_ENV])
    (d / "platform.yaml").write_text("extends: base\nnetwork: {mode: none}\nlimits: {processes: 32}\n")
    proc = sk("profiles", "show", "research", "--ceiling", "--json", env=env | {policy.CEILING_ENV: "platform"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["network"]["mode"] == "none" and data["limits"]["processes"] == 32
    assert "research (ceiling platform)" in proc.stderr
    bad = sk("profiles", "show", "free", "--ceiling", env=env | {policy.CEILING_ENV: "nosuch"})
    assert bad.returncode == 1
    no_traceback(bad)
    assert "SANDBOX_KERNEL_CEILING=nosuch" in bad.stderr


def test_profiles_show_ceiling_says_when_there_is_none(env):
    proc = sk("profiles", "show", "free", "--ceiling", env=env)
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.splitlines()[:3]
    assert head[0] == "profile: free"
    assert "ceiling: none (SANDBOX_KERNEL_CEILING is not set): kernels get profile 'free' as it is" in head, head
    proc = sk("profiles", "show", "free", "--ceiling", "--json", env=env)
    assert json.loads(proc.stdout) == policy.resolve("free").data
    assert "ceiling: none (SANDBOX_KERNEL_CEILING is not set)" in proc.stderr


def test_profiles_show_names_the_ceiling_in_force(env):
    d = Path(env[policy.PROFILE_PATH_ENV])
    (d / "platform.yaml").write_text("extends: base\nnetwork: {mode: none}\n")
    with_ceiling = env | {policy.CEILING_ENV: "platform"}
    proc = sk("profiles", "show", "free", "--ceiling", env=with_ceiling)
    assert proc.returncode == 0, proc.stderr
    assert any(ln.startswith("ceiling: platform (SANDBOX_KERNEL_CEILING), from: ") for ln in proc.stdout.splitlines()[:3])
    assert "none: no sockets but UNIX" in _row(proc.stdout, "network.mode")
    # Without --ceiling the profile is shown as written, and says that kernels here get less.
    proc = sk("profiles", "show", "free", env=with_ceiling)
    assert "restricted" in _row(proc.stdout, "network.mode")
    assert ("note: SANDBOX_KERNEL_CEILING=platform is set: kernels started here get this profile narrowed by it "
            "(add --ceiling to see it)") in proc.stdout


def test_profiles_show_missing(env):
    proc = sk("profiles", "show", "nosuch", env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stdout == ""
    assert proc.stderr.startswith("sandbox-kernel: error: nosuch: no such profile")
    assert "profiles list" in proc.stderr


def test_profiles_validate_shipped(env):
    files = [str(SHIPPED_DIR / f"{n}.yaml") for n in SHIPPED]
    proc = sk("profiles", "validate", *files, env=env)
    assert proc.returncode == 0, proc.stderr
    for f in files:
        assert f"{f}: ok" in proc.stdout


def test_profiles_validate_reports_every_bad_file(tmp_path, env):
    good = tmp_path / "good.yaml"
    good.write_text("extends: free\nlimits: {processes: 10}\n")
    bad1 = tmp_path / "bad1.yaml"
    bad1.write_text("network:\n  mode: restricted\n  tcp_connect_ports: [80, 70000]\n")
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text("limits:\n  memory: lots\n  processes: 0\n")
    bad3 = tmp_path / "bad3.yaml"
    bad3.write_text("extends: nosuchparent\n")
    proc = sk("profiles", "validate", str(bad1), str(good), str(bad2), str(bad3), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{good}: ok" in proc.stdout
    assert f"{bad1}: network.tcp_connect_ports[1]: 70000 is out of range" in proc.stderr
    assert f"{bad2}: limits.memory: 'lots' is not valid here" in proc.stderr
    assert f"{bad2}: limits.processes: 0 is out of range" in proc.stderr
    assert f"{bad3.resolve()}: extends: parent profile 'nosuchparent' not found" in proc.stderr
    assert "3 of 4 profile files invalid" in proc.stderr


def test_profiles_validate_bare_file_name_is_a_file(tmp_path, env):
    """`validate free` in a directory holding a file named `free` checks that file, not the shipped profile."""
    (tmp_path / "free").write_text("network: {mode: sideways}\n")
    proc = sk("profiles", "validate", "free", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "free: network.mode: 'sideways' is not allowed" in proc.stderr
    (tmp_path / "ok").write_text("extends: base\n")
    assert sk("profiles", "validate", "ok", env=env, cwd=tmp_path).returncode == 0


def test_profiles_validate_non_files(tmp_path, env):
    proc = sk("profiles", "validate", str(tmp_path / "missing.yaml"), str(tmp_path), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{tmp_path / 'missing.yaml'}: cannot read the file" in proc.stderr
    assert f"{tmp_path}: not a regular file" in proc.stderr


def test_profiles_validate_in_process(tmp_path, env, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    rc, out, err = main(capsys, "profiles", "validate", str(bad))
    assert rc == 1 and f"{bad}: not UTF-8 text" in err


# --------------------------------------------------------------------------- check


def _bad_notebook(d: Path) -> Path:
    nb = new_notebook(cells=[
        new_code_cell("import numpy as np\nprint(np.pi)"),                                   # 1
        new_code_cell("x = 1\nimport roop"),                                                # 2
        new_markdown_cell("## Now the model\nimport roop is mentioned here, harmlessly."),  # 3
        new_code_cell('mod = __import__("ro" + "op")'),                                     # 4
        new_code_cell("!pip install libtorrent"),                                           # 5
        new_code_cell("!git clone https://github.com/s0md3v/roop"),                         # 6
        new_markdown_cell("requirements"),                                                  # 7
        new_code_cell("%pip install -r requirements.txt"),                                  # 8
        new_code_cell("%%bash\necho fetching\nwget https://example.org/models/inswapper_128.onnx\n"),  # 9
        new_code_cell("print('done')"),                                                     # 10
    ])
    path = d / "bad.ipynb"
    nbformat.write(nb, str(path))
    (d / "requirements.txt").write_text("numpy>=1.24\npyngrok==7.0\n")
    return path


EXPECTED_FINDINGS = [  # (cell, kind, what)
    (2, "import", "roop"),
    (4, "import", "roop"),
    (5, "install", "libtorrent"),
    (6, "shell", "https://github.com/s0md3v/roop"),
    (8, "install", "pyngrok"),
    (9, "shell", "https://example.org/models/inswapper_128.onnx"),
]


def test_check_finds_everything_with_cell_numbers(tmp_path, env):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    path = _bad_notebook(nbdir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Run from another directory: requirements.txt is found next to the notebook.
    proc = sk("check", str(path), env=env, cwd=elsewhere)
    assert proc.returncode == 1, proc.stderr
    no_traceback(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(EXPECTED_FINDINGS), proc.stdout
    words = {"import": "import of", "install": "installing", "shell": "shell word"}
    for cell, kind, what in EXPECTED_FINDINGS:
        prefix = f"{path}: cell {cell}: "
        assert any(line.startswith(prefix) and what in line and words[kind] in line for line in lines), \
            (cell, what, proc.stdout)
    assert any(line.startswith(f"{path}: cell 2: line 2: import of 'roop'") for line in lines)
    assert any(line.startswith(f"{path}: cell 9: line 3: ") and "inswapper" in line for line in lines)
    assert any("cell 8: line 1: installing 'pyngrok'" in line for line in lines)
    for clean in (1, 3, 7, 10):
        assert not any(line.startswith(f"{path}: cell {clean}: ") for line in lines)
    assert "6 findings under profile 'default' in 1 notebook" in proc.stderr


def test_check_json(tmp_path, env):
    path = _bad_notebook(tmp_path)
    proc = sk("check", "--json", "--profile", "free", str(path), env=env)
    assert proc.returncode == 1
    findings = json.loads(proc.stdout)
    assert [(f["cell"], f["kind"], f["what"]) for f in findings] == EXPECTED_FINDINGS
    for f in findings:
        assert f["notebook"] == str(path)
        assert f["category"] in ("deepfake", "torrent", "tunnel")
        assert f["message"] and isinstance(f["line"], int)


def test_check_clean_notebook(tmp_path, env, capsys):
    nb = new_notebook(cells=[new_markdown_cell("# Analysis"), new_code_cell("import json\nprint(json.dumps({}))"),
                             new_code_cell("!pip install requests"), new_code_cell("import insightface.app")])
    path = tmp_path / "clean.ipynb"
    nbformat.write(nb, str(path))
    proc = sk("check", str(path), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "0 findings" in proc.stderr
    rc, out, _ = main(capsys, "check", "--json", str(path))
    assert rc == 0 and json.loads(out) == []


def test_check_under_a_profile_file_and_several_notebooks(tmp_path, env, capsys):
    strict = tmp_path / "strict.yaml"
    strict.write_text("extends: free\nimports: {deny: [requests]}\n")
    a = tmp_path / "a.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("import requests")]), str(a))
    b = tmp_path / "b.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("x"), new_code_cell("from requests import get")]), str(b))
    rc, out, err = main(capsys, "check", "--profile", str(strict), str(a), str(b))
    assert rc == 1
    assert f"{a}: cell 1: line 1: import of 'requests'" in out
    assert f"{b}: cell 2: line 1: import of 'requests'" in out
    assert "2 findings under profile 'strict' in 2 notebooks" in err
    assert main(capsys, "check", str(a))[0] == 0  # not denied by the default profile


@pytest.mark.parametrize("content,fragment", [
    ("just some text\n", "not a notebook (invalid JSON"),
    ('{"cells": [', "not a notebook (invalid JSON"),
    ('{"metadata": {}, "nbformat": 4}', "not a notebook (no 'cells' list)"),
    ("[1, 2, 3]", "not a notebook (no 'cells' list)"),
    (b"\xff\xfe\x00\x01", "not a notebook (not UTF-8"),
    ('{"cells": [{"cell_type": "code", "source": [1, 2]}]}', "cell 1: 'source' is not text"),
    ("[" * 100000 + "]" * 100000, "not a notebook"),
])
def test_check_non_notebook(content, fragment, tmp_path, env):
    path = tmp_path / "thing.ipynb"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    proc = sk("check", str(path), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"sandbox-kernel: error: {path}: " in proc.stderr
    assert fragment in proc.stderr


def test_check_missing_file_and_other_notebooks_still_scanned(tmp_path, env, capsys):
    good = _bad_notebook(tmp_path)
    missing = tmp_path / "missing.ipynb"
    rc, out, err = main(capsys, "check", str(missing), str(good))
    assert rc == 1
    assert f"{missing}: cannot read the notebook (No such file or directory)" in err
    assert f"{good}: cell 2: " in out
    assert "could not be read" in err


def test_check_bad_profile(tmp_path, env):
    path = _bad_notebook(tmp_path)
    proc = sk("check", "--profile", "nosuch", str(path), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "nosuch: no such profile" in proc.stderr


# --------------------------------------------------------------------------- run, doctor


@pytest.mark.kernel
@pytest.mark.parametrize("args", [["run"], ["run", "--profile", "free"], ["run", "--profile", "free", "--"]])
def test_run_without_command(args, env):
    proc = sk(*args, env=env)
    assert proc.returncode != 0
    no_traceback(proc)
    assert "nothing to run" in proc.stderr and "sandbox-kernel run --profile free -- bash" in proc.stderr


@pytest.mark.kernel
def test_run_with_missing_profile(env, tmp_path):
    marker = tmp_path / "ran"
    proc = sk("run", "--profile", "nosuch", "--", "touch", str(marker), env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.startswith("sandbox-kernel: error: nosuch: no such profile")
    assert not marker.exists()


@pytest.mark.kernel
def test_run_with_bad_ceiling(env, tmp_path):
    marker = tmp_path / "ran"
    proc = sk("run", "--profile", "free", "--", "touch", str(marker), env=env | {policy.CEILING_ENV: "nosuch"})
    assert proc.returncode == 1
    no_traceback(proc)
    assert "SANDBOX_KERNEL_CEILING=nosuch" in proc.stderr
    assert not marker.exists()


@pytest.mark.kernel
def test_doctor_with_missing_profile(env):
    proc = sk("doctor", "--profile", "nosuch", env=env)
    assert proc.returncode == 1
    no_traceback(proc)
    assert "nosuch: no such profile" in proc.stderr


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("args,fragment", [
    ([], "the following arguments are required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["--bogus"], "the following arguments are required"),
    (["install", "--bogus"], "unrecognized arguments: --bogus"),
    (["install", "--user", "--prefix", "/tmp/x"], "not allowed with argument"),
    (["install", "--all", "--profile", "free"], "not allowed with argument"),
    (["install", "--all", "--name", "x"], "--name cannot be combined with --all"),
    (["install", "--prefix"], "expected one argument"),
    (["profiles"], "the following arguments are required: SUBCOMMAND"),
    (["profiles", "nosuch"], "invalid choice: 'nosuch'"),
    (["profiles", "show"], "the following arguments are required: name"),
    (["profiles", "validate"], "the following arguments are required: FILE"),
    (["profiles", "list", "extra"], "unrecognized arguments: extra"),
    (["check"], "the following arguments are required: NOTEBOOK.ipynb"),
    (["check", "--profile"], "expected one argument"),
    (["run", "--profile"], "expected one argument"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["doctor", "--nosuch"], "unrecognized arguments: --nosuch"),
])
@pytest.mark.kernel
def test_bad_arguments_are_usage_errors(args, fragment, env):
    proc = sk(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    assert "usage: sandbox-kernel" in proc.stderr
    assert fragment in proc.stderr
    assert proc.stdout == ""


def test_bad_arguments_in_process(capsys, env):
    rc, out, err = main(capsys, "install", "--all", "--name", "x")
    assert rc == 2 and "--name cannot be combined with --all" in err


# --------------------------------------------------------------------------- output piped into `head`


def sk_into_closed_pipe(*args: str, env: dict | None = None):
    """Run the CLI with stdout a pipe whose reader is already gone, as `| head` leaves it once it
    has read its lines: the command's first write to stdout fails with EPIPE, every time."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", *args], stdout=w, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=60)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ["doctor"],
    ["profiles", "list"],
    ["profiles", "list", "--json"],
    ["profiles", "show", "free"],
    ["profiles", "show", "free", "--json"],
    ["check", "--json", "NB"],
    ["check", "NB"],
])
@pytest.mark.kernel
def test_output_into_a_closed_pipe_ends_quietly(args, tmp_path, env):
    nb = str(_bad_notebook(tmp_path))
    proc = sk_into_closed_pipe(*[nb if a == "NB" else a for a in args], env=env)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == cli.EXIT_PIPE == 141, proc.stderr


def test_help_into_a_closed_pipe_ends_quietly(env):
    proc = sk_into_closed_pipe("--help", env=env)
    assert proc.stderr == "" and proc.returncode in (0, cli.EXIT_PIPE)


def test_check_json_into_head(tmp_path, env):
    """`sandbox-kernel` output piped into `head` itself: far more output than a pipe holds, so
    `head` exits while the command is still writing (1,000 findings: about 270 KB of JSON, four
    times what a pipe holds by default)."""
    cells = [new_code_cell(f"import roop  # {i}") for i in range(1000)]
    path = tmp_path / "big.ipynb"
    nbformat.write(new_notebook(cells=cells), str(path))
    line = (f"{sys.executable} -m sandbox_kernel.cli check --json {path} | head -n 2; "
            "echo \"status: ${PIPESTATUS[0]} ${PIPESTATUS[1]}\" >&2")
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout == "[\n {\n", proc.stdout[:200]
    assert proc.stderr.strip() == f"status: {cli.EXIT_PIPE} 0", proc.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["run", "--profile", "free", "--", "python", "-c", "pass"],
    ["run", "--profile=free", "--connection-file", "/tmp/k.json", "--policy-cache", "/x/c.json", "--", "sh"],
    ["run", "--allow-kernel-ip", "10.0.0.1", "--allow-kernel-ip=10.0.0.2", "--", "sh", "--", "x"],
    ["run", "--", "sh"],
    ["run", "--profile", "/p/with=sign.yaml", "--", "sh"],
])
def test_run_fast_path_parses_as_argparse_does(argv):
    """Kernel starts parse `run` without argparse; where they do, the result is argparse's."""
    from sandbox_kernel import cli

    fast = cli._fast_run_args(argv)
    assert fast is not None, argv
    slow = cli.build_parser("run").parse_args(argv)
    for key in ("profile", "connection_file", "policy_cache", "allow_kernel_ip", "func"):
        assert getattr(fast, key) == getattr(slow, key), (key, argv)
    strip = lambda c: c[1:] if c[:1] == ["--"] else c  # noqa: E731 - cmd_run drops argparse's leading "--"
    assert strip(fast.command) == strip(slow.command)


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["run", "--prof", "free", "--", "sh"], ["run", "--profile", "--", "sh"],
    ["run", "--profile", "-x", "--", "sh"], ["run", "--profile", "free", "sh"], ["run", "--profile=", "--", "sh"],
    ["run", "--nosuch", "1", "--", "sh"], ["install", "--", "x"],
])
def test_run_fast_path_leaves_everything_else_to_argparse(argv):
    from sandbox_kernel import cli

    assert cli._fast_run_args(argv) is None


# --------------------------------------------------------------------------- an allow a parent's deny overrides


def test_an_allow_that_a_parents_deny_wins_over_is_warned_by_validate_and_show(capsys, profile_dir):
    """`imports.allow: [pyngrok]` under base's deny of pyngrok does nothing (deny wins at equal
    specificity): validate and show say so, naming the file that denies it and what to do."""
    f = profile_dir / "tunnel.yaml"
    f.write_text("extends: free\nimports:\n  allow: [pyngrok, colab_ssh.x]\n")
    rc, out, err = main(capsys, "profiles", "validate", str(f))
    assert rc == 0 and "ok" in out, out + err
    assert "warning" in err and "imports.allow" in err and "pyngrok" in err and "base.yaml" in err, err
    assert "has no effect" in err and "docs/profile-reference.md" in err, err
    assert "colab_ssh.x" not in err, err  # a submodule allowed under a denied package does take effect
    rc, out, err = main(capsys, "profiles", "show", "tunnel")
    assert rc == 0 and "pyngrok" in err and "has no effect" in err, err
    rc, out, err = main(capsys, "profiles", "show", "tunnel", "--json")
    assert rc == 0 and "has no effect" in err and json.loads(out), err


def test_no_warning_where_every_allow_takes_effect(capsys, profile_dir):
    rc, out, err = main(capsys, "profiles", "validate", str(SHIPPED_DIR / "research.yaml"))
    assert rc == 0 and "warning" not in err, err


def test_validate_warns_when_the_audit_logs_directory_is_missing_here(capsys, profile_dir, tmp_path):
    """The profile is valid, but its kernels cannot start on this machine until the directory exists."""
    f = profile_dir / "logged.yaml"
    f.write_text(f"extends: free\naudit:\n  log: {tmp_path}/log/acme.jsonl\n")
    rc, out, err = main(capsys, "profiles", "validate", str(f))
    assert rc == 0 and "(1 warning on stderr)" in out, out + err
    assert f"the directory {tmp_path}/log does not exist" in err and "install -d" in err, err
    (tmp_path / "log").mkdir()
    rc, out, err = main(capsys, "profiles", "validate", str(f))
    assert rc == 0 and "warning" not in err + out, err


def test_the_readmes_command_line_section_names_every_command():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [c for c in commands if f"sandbox-kernel {c}" not in block]
    assert not missing, f"README's Command line block lacks {missing}"


def test_profiles_list_names_the_key_of_an_invalid_profile(capsys, profile_dir):
    (profile_dir / "zzbroken.yaml").write_text("network: {mode: sideways}\n")
    (profile_dir / "zzchild.yaml").write_text("extends: zzbroken\n")
    rc, out, err = main(capsys, "profiles", "list")
    text = " ".join(out.split())
    assert rc == 0 and "INVALID: network.mode: 'sideways' is not allowed" in text, out
    # a problem in a parent names the parent's file
    assert "INVALID: zzbroken.yaml: network.mode:" in text, out


def test_show_with_a_ceiling_lists_each_file_once_per_side(capsys, profile_dir, monkeypatch):
    monkeypatch.setenv(policy.CEILING_ENV, "offline")
    rc, out, err = main(capsys, "profiles", "show", "free", "--ceiling")
    assert rc == 0, err
    head = out.split("\n", 4)
    src = next(ln for ln in head if ln.startswith("from: "))
    assert src.count("base.yaml") == 1 and "offline.yaml" not in src, src
    ceil = next(ln for ln in head if ln.startswith("ceiling: "))
    assert "offline.yaml" in ceil and "base.yaml" in ceil, ceil


def test_install_names_the_invalid_profiles_on_the_search_path(capsys, profile_dir, tmp_path):
    """install --all writes the shipped profiles' kernelspecs and a validated-policy cache of
    every valid profile on the search path: an invalid one is named (file, key), not skipped
    in silence, and a platform profile that --all does not install is named with the command."""
    (profile_dir / "zzbroken.yaml").write_text("network: {mode: sideways}\n")
    (profile_dir / "acme.yaml").write_text("extends: free\n")
    rc, out, err = main(capsys, "install", "--all", "--prefix", str(tmp_path / "prefix"))
    assert rc == 0, err
    text = " ".join(err.split())
    assert "zzbroken" in text and "network.mode" in text and "not in the validated-policy cache" in text, err
    assert "acme" in text and "install --profile acme" in text, err

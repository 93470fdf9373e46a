"""The import guard and the pre-execution check, through real sandboxed kernels."""

import os
import textwrap

import kernelutil
import pytest

# A name the pre-execution check cannot fold (built at run time), so these samples
# reach the meta_path finder itself.
def hidden(name: str) -> str:
    return "bytes(" + repr(list(name.encode())) + ").decode()"


SAMPLES = [  # (module, category, words of its reason)
    ("roop", "deepfake", "deepfake generation"),
    ("facefusion", "deepfake", "deepfake generation"),
    ("insightface.model_zoo.inswapper", "deepfake", "inswapper"),
    ("libtorrent", "torrent", "BitTorrent"),
    ("xmrig", "mining", "mining"),
    ("pyhashcat", "cracking", "password cracking"),
    ("pyngrok", "tunnel", "tunnels"),
]


@pytest.fixture(scope="module")
def free_kernel_factory():
    """One `free` kernel shared by the read-only checks of this module."""
    import kernelutil

    k = kernelutil.Kernel("free", cwd="/tmp")
    yield k
    k.shutdown()


def test_allowed_imports_work(free_kernel_factory):
    r = free_kernel_factory.ok("import json, numpy, importlib; print(numpy.arange(3).sum(), json.dumps([1]))")
    assert r.stdout.split() == ["3", "[1]"]


@pytest.mark.covers("imports.deny")
@pytest.mark.parametrize("module,category,reason", [s for s in SAMPLES if "." not in s[0]])
@pytest.mark.covers("imports.deny")
def test_each_category_refused_by_the_finder(free_kernel_factory, module, category, reason):
    k = free_kernel_factory
    r = k.run(f"__import__({hidden(module)})")
    assert r.status == "error", str(r)
    assert r.ename == "ProhibitedImportError"
    for part in (f"'{module}'", f"category {category}", reason, "profile 'free'"):
        assert part in r.evalue, (part, r.evalue)
    # the kernel keeps serving the next cell
    assert k.ok("print('still here')").stdout.strip() == "still here"


@pytest.mark.covers("imports.deny")
@pytest.mark.parametrize("module,category,reason", SAMPLES)
@pytest.mark.covers("imports.deny")
def test_each_category_refused_before_the_cell_runs(free_kernel_factory, module, category, reason):
    k = free_kernel_factory
    r = k.run(f"print('side effect'); import {module}")
    assert r.status == "error" and r.ename == "ProhibitedImportError", str(r)
    assert "side effect" not in r.stdout, "a refused cell must not run at all"
    assert category in r.evalue and "[cell line 1]" in r.evalue


def test_refusal_is_an_import_error_subclass(free_kernel_factory):
    r = free_kernel_factory.ok(f"""
        import sandbox_kernel
        try:
            __import__({hidden('roop')})
        except ImportError as e:
            print(type(e).__name__, isinstance(e, sandbox_kernel.ProhibitedImportError), e.name)
        """)
    assert r.stdout.split() == ["ProhibitedImportError", "True", "roop"]


@pytest.mark.parametrize("code", [
    "import importlib; importlib.import_module('roop')",
    "import importlib; importlib.import_module(" + hidden("roop") + ")",
    "__import__('roop')",
    "exec('import roop')",
    "exec(" + hidden("import roop") + ")",
    "from roop import core",
    "import roop.core",
    "x = 'ro'\nx += 'op'\n__import__(x)",
    "__import__('ro' + 'op')",
    "__import__(''.join(['r', 'o', 'o', 'p']))",
    "import insightface.model_zoo.inswapper",
    "import runpy; runpy.run_module('roop')",
])
def test_import_forms_are_refused(free_kernel_factory, code):
    r = free_kernel_factory.run(code)
    assert r.status == "error" and "ProhibitedImportError" in r.ename, str(r)


def test_split_string_across_lines_is_folded(free_kernel_factory):
    code = 'name = ("ro"\n        "op")\nmod = __import__(name)'
    r = free_kernel_factory.run(code)
    assert r.ename == "ProhibitedImportError" and "[cell line" in r.evalue


@pytest.mark.covers("imports.deny")
@pytest.mark.covers("imports.deny")
def test_dual_use_package_only_subtree_blocked(make_kernel, tmp_path):
    pkg = tmp_path / "insightface"
    (pkg / "model_zoo").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text("OK = 'app'\n")
    (pkg / "model_zoo" / "__init__.py").write_text("")
    (pkg / "model_zoo" / "inswapper.py").write_text("SWAP = 1\n")
    k = make_kernel("free", cwd=tmp_path)
    assert k.ok("from insightface.app import OK; print(OK)").stdout.strip() == "app"
    r = k.run("import importlib; importlib.import_module(" + hidden("insightface.model_zoo.inswapper") + ")")
    assert r.ename == "ProhibitedImportError" and "inswapper" in r.evalue


def test_removing_the_finder_does_not_help(make_kernel):
    k = make_kernel("free")
    r = k.ok("""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != 'ImportGuard']
        print(any(type(f).__name__ == 'ImportGuard' for f in sys.meta_path))
        """)
    assert r.stdout.strip() == "False"
    r = k.run(f"__import__({hidden('libtorrent')})")
    assert r.ename == "ProhibitedImportError", str(r)
    assert k.ok("import sys; print(type(sys.meta_path[0]).__name__)").stdout.strip() == "ImportGuard"


def test_moving_the_finder_to_the_end_does_not_help(make_kernel, tmp_path):
    (tmp_path / "pyngrok.py").write_text("HERE = 1\n")
    k = make_kernel("free", cwd=tmp_path)
    k.ok("import sys; g = sys.meta_path.pop(0); sys.meta_path.append(g)")
    r = k.run(f"__import__({hidden('pyngrok')})")
    assert r.ename == "ProhibitedImportError", str(r)


def test_module_planted_in_sys_modules_is_purged(make_kernel):
    k = make_kernel("free")
    k.ok("import sys, types; sys.modules['roop'] = types.ModuleType('roop')")
    r = k.run(f"m = __import__({hidden('roop')}); print(m)")
    assert r.ename == "ProhibitedImportError", str(r)


def test_library_try_except_fallback_works(make_kernel, tmp_path):
    (tmp_path / "mylib.py").write_text(textwrap.dedent("""
        try:
            import pyngrok
            TUNNEL = 'ngrok'
        except ImportError as e:
            TUNNEL = 'none: ' + type(e).__name__
        """))
    k = make_kernel("free", cwd=tmp_path)
    assert k.ok("import mylib; print(mylib.TUNNEL)").stdout.strip() == "none: ProhibitedImportError"


@pytest.mark.covers("imports.deny")
@pytest.mark.covers("imports.deny")
def test_pip_install_of_denied_distribution_is_refused(make_kernel, tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy>=1\n# comment\nlibtorrent==2.0 ; python_version>'3'\n")
    k = make_kernel("free", cwd=tmp_path)
    for code in ["!pip install libtorrent", "%pip install -q qbittorrent-api", "!pip install -r requirements.txt",
                 "!python -m pip install --upgrade pyngrok==7.0", "import subprocess\nsubprocess.run(['pip', 'install', 'aria2p'])"]:
        r = k.run(code)
        assert r.status == "error" and r.ename == "ProhibitedCommandError", (code, str(r))
        assert "installing" in r.evalue and "provides the denied module" in r.evalue and "profile 'free'" in r.evalue


@pytest.mark.parametrize("code,fragment", [
    ("!git clone https://github.com/s0md3v/roop", "github.com/s0md3v/roop"),
    ("!git clone https://github.com/s0md3v/ro''op.git", "github.com/s0md3v/roop"),
    ("url = 'https://github.com/facefusion/' + 'facefusion'\n!git clone $url", "facefusion"),
    ("%%bash\ncd /tmp\nwget https://example.org/models/inswapper_128_fp16.onnx", "inswapper_128"),
    ("import os\nos.system('aria2c magnet:?xt=urn:btih:abc')", "magnet"),
    ("!curl -L -o m.onnx https://huggingface.co/x/resolve/main/inswapper_128.onnx", "inswapper"),
])
@pytest.mark.covers("shell.deny")
@pytest.mark.covers("shell.deny")
def test_shell_fetches_of_denied_projects_are_refused(free_kernel_factory, code, fragment):
    r = free_kernel_factory.run(code)
    assert r.status == "error" and r.ename == "ProhibitedCommandError", str(r)
    assert fragment in r.evalue and "shell.deny" in r.evalue


def test_shell_line_expands_a_variable_from_an_earlier_cell(free_kernel_factory):
    k = free_kernel_factory
    k.ok("repo_url = 'https://github.com/deepfakes/' + 'faceswap'")
    for line in ("!git clone $repo_url", "!git clone {repo_url}"):
        r = k.run(line)
        assert r.ename == "ProhibitedCommandError" and "deepfakes/faceswap" in r.evalue, str(r)


def test_innocent_code_is_not_flagged(free_kernel_factory):
    code = """
        # roop is mentioned in a comment: import roop
        s = "import roop"   # a string is not an import
        import modules_that_do_not_exist_but_are_not_denied as _x
        """
    r = free_kernel_factory.run(code)
    assert r.ename == "ModuleNotFoundError", str(r)


def test_cloned_repository_workflow_is_refused_in_the_child(make_kernel, tmp_path, who):
    work = tmp_path if who is None else __import__("pathlib").Path(kernelutil.user_workdir(who))
    repo = work / "roop_repo"
    (repo / "roop").mkdir(parents=True)
    (repo / "roop" / "__init__.py").write_text("")
    (repo / "roop" / "core.py").write_text("def run():\n    print('SWAPPING FACES')\n")
    (repo / "run.py").write_text("from roop import core\ncore.run()\n")
    if who is not None:
        for p in [repo, *repo.rglob("*")]:
            os.chown(p, who.pw_uid, who.pw_gid)
    k = make_kernel("free", cwd=work, user=who)
    k.ok("%cd roop_repo")
    r = k.ok("!python run.py")
    assert "SWAPPING FACES" not in r.stdout
    assert "ProhibitedImportError" in r.stdout and "import of 'roop' is refused by sandbox profile 'free'" in r.stdout
    r = k.ok("""
        import subprocess, sys
        p = subprocess.run([sys.executable, 'run.py'], capture_output=True, text=True)
        print(p.returncode); print(p.stderr)
        """)
    assert r.stdout.splitlines()[0] == "1"
    assert "import of 'roop' is refused by sandbox profile 'free'" in r.stdout
    r = k.ok("import os; print(os.system('python run.py > out.txt 2>&1')); print(open('out.txt').read())")
    assert "SWAPPING FACES" not in r.stdout and "ProhibitedImportError" in r.stdout
    r = k.run("%run run.py")  # %run shows the script's error itself
    assert "ProhibitedImportError: import of 'roop' is refused" in r.traceback, str(r)
    assert "SWAPPING FACES" not in r.stdout


def test_multiprocessing_children_are_guarded(make_kernel, tmp_path):
    (tmp_path / "work.py").write_text(textwrap.dedent("""
        import importlib
        def load(name):
            try:
                importlib.import_module(name)
                return 'imported'
            except ImportError as e:
                return type(e).__name__ + ': ' + str(e)
        """))
    k = make_kernel("free", cwd=tmp_path)
    for method in ("spawn", "fork", "forkserver"):
        r = k.ok(f"""
            import multiprocessing as mp, work
            with mp.get_context('{method}').Pool(1) as pool:
                print(pool.apply(work.load, ('xm' + 'rig',)))
            """)
        assert "ProhibitedImportError" in r.stdout and "mining" in r.stdout, (method, str(r))


def test_dataloader_workers_are_guarded(make_kernel, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "ds.py").write_text(textwrap.dedent("""
        import importlib
        import torch
        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                importlib.import_module('py' + 'ngrok')
                return torch.tensor(i)
        """))
    k = make_kernel("free", cwd=tmp_path)
    r = k.run("""
        import torch, ds
        for batch in torch.utils.data.DataLoader(ds.DS(), batch_size=2, num_workers=2):
            print(batch)
        """, timeout=120)
    assert r.status == "error", str(r)
    assert "ProhibitedImportError" in r.evalue + r.traceback and "pyngrok" in r.evalue + r.traceback


def test_guard_is_armed_before_site_in_children(make_kernel):
    k = make_kernel("free")
    r = k.ok("""
        import subprocess, sys
        code = "import sys; print(type(sys.meta_path[0]).__name__)"
        print(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout)
        """)
    assert r.stdout.strip() == "ImportGuard"

"""Pre-execution check of a cell's source: what it would import, install or fetch.

Enforcement: soft (it reads source; the import guard and the OS layers act when the
code runs). It works on the AST of the cell after IPython's own transformations
(``!cmd``, ``%pip``, ``%%bash`` become calls), so a name split across string
literals, lines or variables (``"ro" + "op"``, ``x = "ro"; __import__(x + "op")``)
is folded back together instead of slipping past text matching.

It finds:
- imports: ``import x``, ``from x import y``, ``__import__("x")``,
  ``importlib.import_module("x")``, ``runpy.run_module("x")``, and source passed to
  ``exec``/``eval``/``compile`` as a literal;
- installs: ``pip``/``pip3``/``python -m pip``/``uv pip``/``conda``/``mamba install``
  of a distribution whose import name is denied, including through ``-r FILE``;
- fetches: words of shell lines (``!``, ``%%bash``, ``%%sh``, ``%%script``, ``%sx``,
  ``os.system``, ``subprocess`` with literal arguments) matching ``shell.deny``.
The same scan serves the kernel (before each cell) and ``sandbox-kernel check``.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import ProhibitedCommandError, ProhibitedImportError
from .policy import Policy, normalise_distribution

SHELL_MAGICS = {"bash", "sh", "script", "system", "sx", "zsh"}
INSTALL_MAGICS = {"pip", "conda", "mamba", "uv"}
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "run"), ("subprocess", "call"),
               ("subprocess", "check_call"), ("subprocess", "check_output"), ("subprocess", "Popen"),
               ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-t",
    "--target", "--prefix", "--root", "--upgrade-strategy", "--python-version", "--platform",
    "--implementation", "--abi", "--src", "--global-option", "--config-settings", "-C", "--progress-bar",
    "--python", "-p", "--channel", "--report", "--log", "--cache-dir", "--trusted-host", "--proxy",
}
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
MAX_DEPTH = 4


@dataclass
class Finding:
    line: int
    kind: str  # import | install | shell
    what: str
    rule: dict
    detail: str = ""

    def message(self, profile: str) -> str:
        r = self.rule
        if self.kind == "import":
            return f"line {self.line}: import of '{self.what}' (rule '{r['module']}', {r['category']}: {r['reason']})"
        if self.kind == "install":
            return (f"line {self.line}: installing '{self.what}' provides the denied module '{r['module']}' "
                    f"({r['category']}: {r['reason']})")
        return (f"line {self.line}: shell word {self.what!r} matches shell.deny pattern {r['pattern']!r} "
                f"({r['category']}: {r['reason']})")


@dataclass
class _Ctx:
    policy: Policy
    namespace: dict  # the kernel's user namespace: its string variables expand in shell lines
    cwd: str
    findings: list[Finding] = field(default_factory=list)
    names: dict[str, str | None] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _transformer():
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def transform(code: str, manager=None) -> str:
    """IPython's own translation of magics and `!` lines into Python (the kernel passes its
    shell's transformer manager; `sandbox-kernel check` uses one of its own)."""
    try:
        return (manager or _transformer()).transform_cell(code)
    except Exception:
        return code


def scan_cell(code: str, policy: Policy, *, namespace: dict | None = None,
              cwd: str | None = None, ipython: bool = True, transformer=None) -> list[Finding]:
    ctx = _Ctx(policy, namespace or {}, cwd or os.getcwd())
    _scan_python(transform(code, transformer) if ipython else code, ctx, 0, depth=0)
    return ctx.findings


def _scan_python(source: str, ctx: _Ctx, line_offset: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return  # IPython reports the syntax error when it runs the cell
    _collect_names(tree, ctx)
    for node in ast.walk(tree):
        line = line_offset + getattr(node, "lineno", 1)
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_module(alias.name, line, ctx)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            _check_module(node.module, line, ctx)
            for alias in node.names:
                if alias.name != "*":
                    _check_module(f"{node.module}.{alias.name}", line, ctx, quiet_parent=True)
        elif isinstance(node, ast.Call):
            _check_call(node, line, ctx, depth)


def _collect_names(tree: ast.AST, ctx: _Ctx) -> None:
    """Names bound to constant strings (folded); a name bound to anything else is unknown."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            value = _const_str(node.value, ctx)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    known = ctx.names.get(target.id, value) if target.id in ctx.names else value
                    ctx.names[target.id] = value if known == value else None
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            prev, add = ctx.names.get(node.target.id), _const_str(node.value, ctx)
            ctx.names[node.target.id] = prev + add if (prev is not None and add is not None
                                                       and isinstance(node.op, ast.Add)) else None


def _const_str(node: ast.AST | None, ctx: _Ctx) -> str | None:
    """Fold a string-valued expression made only of literals and known names."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return ctx.names.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _const_str(node.left, ctx), _const_str(node.right, ctx)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            s = _const_str(v.value if isinstance(v, ast.FormattedValue) and not v.format_spec else v, ctx)
            if s is None:
                return None
            parts.append(s)
        return "".join(parts)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple))):
        sep = _const_str(node.func.value, ctx)
        items = [_const_str(e, ctx) for e in node.args[0].elts]
        if sep is not None and all(i is not None for i in items):
            return sep.join(items)  # type: ignore[arg-type]
    return None


def _const_str_list(node: ast.AST, ctx: _Ctx) -> list[str] | None:
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_const_str(e, ctx) for e in node.elts]
        return None if any(i is None for i in items) else items  # type: ignore[return-value]
    return None


def _func_name(node: ast.Call) -> tuple[str | None, str]:
    f = node.func
    if isinstance(f, ast.Name):
        return None, f.id
    if isinstance(f, ast.Attribute):
        base = f.value
        if isinstance(base, ast.Name):
            return base.id, f.attr
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "get_ipython":
            return "get_ipython()", f.attr
        if (isinstance(base, ast.Call) and _func_name(base)[1] in ("__import__", "import_module") and base.args
                and isinstance(base.args[0], ast.Constant) and isinstance(base.args[0].value, str)):
            return base.args[0].value, f.attr  # __import__("os").system(...)
        return "?", f.attr
    return None, ""


def _check_call(node: ast.Call, line: int, ctx: _Ctx, depth: int) -> None:
    owner, name = _func_name(node)
    args = node.args
    first = _const_str(args[0], ctx) if args else None
    if name in ("__import__", "import_module", "run_module") and first and not first.startswith("."):
        _check_module(first, line, ctx)
    elif name in ("exec", "eval", "compile") and owner is None and first:
        _scan_python(first, ctx, line - 1, depth + 1)
    elif owner == "get_ipython()":
        if name in ("system", "getoutput") and first is not None:
            _check_shell(first, line, ctx)
        elif name == "run_line_magic" and len(args) >= 2:
            magic, text = first, _const_str(args[1], ctx)
            if text is not None and magic in INSTALL_MAGICS:
                _check_shell(f"{magic} {text}", line, ctx)
            elif text is not None and magic in SHELL_MAGICS:
                _check_shell(text, line, ctx)
        elif name == "run_cell_magic" and len(args) >= 3:
            magic, body = first, _const_str(args[2], ctx)
            if body is not None and magic in SHELL_MAGICS:
                for i, text in enumerate(body.splitlines()):
                    _check_shell(text, line + 1 + i, ctx)
    elif (owner, name) in SHELL_CALLS and args:
        if first is not None:
            _check_shell(first, line, ctx)
        else:
            words = _const_str_list(args[0], ctx)
            if words:
                _check_shell(shlex.join(words), line, ctx)


def _check_module(module: str, line: int, ctx: _Ctx, quiet_parent: bool = False) -> None:
    rule = ctx.policy.import_rule(module)
    if rule is None:
        return
    if quiet_parent and any(f.kind == "import" and f.line == line and module.startswith(f.what + ".")
                            for f in ctx.findings):
        return  # `from roop import core`: report `roop` once
    if not any(f.kind == "import" and f.what == module and f.line == line for f in ctx.findings):
        ctx.findings.append(Finding(line, "import", module, rule))


# --------------------------------------------------------------------------- shell lines


def _words(text: str) -> list[str]:
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)
    except ValueError:
        return text.split()


SHELL_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)|\{(\w+)\}")


def _expand_known(text: str, ctx: _Ctx) -> str:
    """IPython expands $name and {name} in shell lines: the cell's own folded strings first,
    then string variables of the user namespace (nothing is evaluated)."""
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        value = ctx.names.get(name)
        if value is None:
            value = ctx.namespace.get(name)
        return value if isinstance(value, str) else m.group(0)

    return SHELL_VAR.sub(sub, text)


def _check_shell(text: str, line: int, ctx: _Ctx) -> None:
    text = _expand_known(text, ctx)
    words = _words(text)
    _check_words(words + [text], line, ctx)
    for command in _split_commands(words):
        reqs = _install_targets(command, ctx, depth=0)
        denied = ctx.policy.denied_distributions()
        for req in reqs:
            m = _REQ_NAME.match(req)
            if m and normalise_distribution(m.group(1)) in denied and "://" not in req.split("@")[0]:
                ctx.findings.append(Finding(line, "install", m.group(1), denied[normalise_distribution(m.group(1))]))
            if "://" in req:
                _check_words([req], line, ctx)


def _check_words(words: list[str], line: int, ctx: _Ctx) -> None:
    """shell.deny: each pattern reported once per line, with the first word it matched."""
    for rule in ctx.policy.shell_rules():
        if any(f.kind == "shell" and f.line == line and f.rule["pattern"] == rule["pattern"] for f in ctx.findings):
            continue
        pattern = rule["pattern"].lower()
        for word in words:
            if fnmatch.fnmatch(word.lower(), pattern):
                ctx.findings.append(Finding(line, "shell", word, rule))
                break


def _split_commands(words: list[str]) -> list[list[str]]:
    out, cur = [], []
    for w in words:
        if w and set(w) <= set(";&|()<>"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(w)
    if cur:
        out.append(cur)
    return out


def _install_targets(command: list[str], ctx: _Ctx, depth: int) -> list[str]:
    """Requirement strings of an install command (pip, python -m pip, uv pip, conda, mamba)."""
    words = [w for w in command if "=" not in w or not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]  # drop VAR=x
    start = None
    for i, w in enumerate(words):
        base = os.path.basename(w)
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if re.fullmatch(r"pip[0-9.]*|conda|mamba|micromamba", base) and nxt == "install":
            start = i + 2
        elif base == "uv" and nxt == "pip" and i + 2 < len(words) and words[i + 2] == "install":
            start = i + 3
        elif w == "-m" and nxt == "pip" and i + 2 < len(words) and words[i + 2] == "install":
            start = i + 3
        if start is not None:
            break
    if start is None:
        return []
    reqs: list[str] = []
    it = iter(words[start:])
    for w in it:
        if w in ("-r", "--requirement") or w.startswith("--requirement="):
            path = w.split("=", 1)[1] if "=" in w else next(it, "")
            reqs += _requirements_file(path, ctx, depth)
        elif w in ("-e", "--editable"):
            reqs.append(next(it, ""))
        elif w in PIP_OPTIONS_WITH_VALUE:
            next(it, None)
        elif w.startswith("-"):
            continue
        else:
            reqs.append(w)
    return reqs


def _requirements_file(path: str, ctx: _Ctx, depth: int) -> list[str]:
    if depth > MAX_DEPTH or not path or "://" in path:
        return []
    full = os.path.join(ctx.cwd, os.path.expanduser(path))
    try:
        with open(full, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(1_000_000).splitlines()
    except OSError:
        return []
    reqs: list[str] = []
    for raw in lines:
        text = raw.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith(("-r ", "--requirement")):
            nested = text.split(None, 1)[1] if " " in text else text.split("=", 1)[-1]
            reqs += _requirements_file(os.path.join(os.path.dirname(path), nested.strip()), ctx, depth + 1)
        elif text.startswith(("-e ", "--editable ")):
            reqs.append(text.split(None, 1)[1])
        elif not text.startswith("-"):
            reqs.append(text.split(";", 1)[0].strip())
    return reqs


# --------------------------------------------------------------------------- refusals


def refusal(findings: list[Finding], policy: Policy) -> Exception:
    """The exception a refused cell raises: about the first finding, listing all."""
    first = findings[0]
    rest = "".join("\n  also " + f.message(policy.label) for f in findings[1:])
    if first.kind == "import":
        r = first.rule
        err = ProhibitedImportError(first.what, rule=r["module"], category=r["category"], reason=r["reason"],
                                    profile=policy.label)
        err.args = (f"{err.args[0]} [cell line {first.line}]{rest}",)
        err.msg = err.args[0]
        return err
    return ProhibitedCommandError(first.message(policy.label) + rest, profile=policy.label,
                                  category=first.rule["category"], rule=first.rule)

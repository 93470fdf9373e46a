"""The profile reference (docs/profile-reference.md), generated from profiles/schema.json.

    python -m sandbox_kernel.schema_doc > docs/profile-reference.md
    python -m sandbox_kernel.schema_doc --facts > sandbox_kernel/policy_facts.py

One table per top-level section of a profile: every key with its type, default and
meaning, taken from the schema (its descriptions are the documentation; edit them
there), the layers that enforce it, how it inherits and narrows (the schema's per-key
facts: x-layers, x-inherit, x-narrow and the narrow kind's parameters) and the tests
that cover it (``@pytest.mark.covers``). tests/test_schema_doc.py checks that the
committed file is what this prints; ``--facts`` prints sandbox_kernel/policy_facts.py.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from . import resources

HEADER = """\
# Profile reference

<!-- Generated from profiles/schema.json by `python -m sandbox_kernel.schema_doc > docs/profile-reference.md`.
     Do not edit by hand: change the schema's descriptions and regenerate (tests/test_schema_doc.py checks it). -->

{description}

A profile is a YAML file named `NAME.yaml` in a directory on `SANDBOX_KERNEL_PROFILE_PATH`, in
`/etc/sandbox-kernel/profiles` or among the shipped profiles. Check one with
`sandbox-kernel profiles validate FILE`, see what it resolves to with
`sandbox-kernel profiles show NAME`, and point your editor's YAML support at
`profiles/schema.json`. Which layer enforces each key is its `layer` column (whether that layer is
hard or soft is in the [README](../README.md#profile-format) and printed by `profiles show`);
`extends; ceiling` says how a child's value meets its parent's and how the value narrows under a
ceiling; `tested by` lists the tests in `tests/` marked `@pytest.mark.covers("KEY")` (— where none is).
All three come from the schema's `x-layers`, `x-inherit` and `x-narrow` and the tests' markers.

In `extends` chains, mappings merge key by key and lists replace the parent's, except where
a key's description says it concatenates. Under a ceiling (`SANDBOX_KERNEL_CEILING`), deny lists
unite, allow lists and device sets intersect, numeric limits take the minimum, the network takes
the stricter mode and enforcement the stricter level.

**Re-allowing what a parent denies.** `imports.deny`, `imports.allow`, `shell.deny` and
`filesystem.hidden` concatenate along `extends`: a profile cannot drop a deny its parent
(e.g. `base`) lists, and an `imports.allow` entry of the same name as a deny does nothing (at
equal specificity the deny wins; `profiles validate` and `profiles show` warn). An allow takes
effect only below a denied package (`allow: [insightface.app]` under `deny: [insightface]`).
To let one tenant import a module that `base` denies, the platform (not the tenant) writes
that tenant's chain without the deny: copy `base.yaml` into a root-owned directory on the
search path under another name (e.g. `base-tunnels.yaml`), delete the entry there, and let
the tenant's profile extend a copy of `free` (or `default`) whose `extends` names it. A
ceiling's deny list still applies (deny lists unite under a ceiling), so the ceiling must
not deny the module either.
"""


class Renderer:
    def __init__(self, schema: dict, tested: dict[str, list[str]] | None = None):
        self.schema = schema
        self.defs = schema.get("$defs", {})
        self.used_defs: list[str] = []
        self.facts = facts(schema)
        self.tested = tested or {}

    # ------------------------------------------------------------------ types

    def ref_name(self, node: dict) -> str | None:
        ref = node.get("$ref", "")
        return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None

    def resolve(self, node: dict) -> dict:
        name = self.ref_name(node)
        if name is None:
            return node
        merged = dict(self.defs[name])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return merged

    def type_of(self, node: dict) -> str:
        name = self.ref_name(node)
        if name is not None:
            target = self.defs[name]
            if "enum" in target:
                return self.type_of(target)
            if name not in self.used_defs:
                self.used_defs.append(name)
            return f"[{name}](#value-types)"
        if "enum" in node:
            return "one of " + ", ".join(f"`{json.dumps(v)}`" if not isinstance(v, str) else f"`{v}`"
                                         for v in node["enum"])
        if "oneOf" in node:
            return " or ".join(self.type_of(n) for n in node["oneOf"])
        types = node.get("type")
        if isinstance(types, list):
            return " or ".join(self.type_of(dict(node, type=t)) for t in types)
        if types == "array":
            return "list of " + self.type_of(node.get("items", {}))
        if types == "object":
            props = node.get("properties", {})
            required = set(node.get("required", []))
            keys = ", ".join(f"`{k}`" + ("" if k in required else "?") for k in props)
            return f"mapping {{{keys}}}" if keys else "mapping"
        if types in ("integer", "number"):
            return types + self._range(node)
        return types or "any"

    @staticmethod
    def _range(node: dict) -> str:
        low = (">", node["exclusiveMinimum"]) if "exclusiveMinimum" in node else ("≥", node.get("minimum"))
        high = ("<", node["exclusiveMaximum"]) if "exclusiveMaximum" in node else ("≤", node.get("maximum"))
        parts = [f"{op} {v}" for op, v in (low, high) if v is not None and v != 2**63 - 1]  # "no limit": unsaid
        return f" ({', '.join(parts)})" if parts else ""

    # ------------------------------------------------------------------ cells

    @staticmethod
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    @staticmethod
    def default_of(node: dict) -> str:
        if "default" not in node:
            return ""
        value = node["default"]
        if isinstance(value, dict):
            return ""
        if isinstance(value, list):
            return "`[" + ", ".join(map(str, value)) + "]`" if value else "`[]`"
        if value is None:
            return "`null`"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"

    def rows(self, key: str, node: dict) -> list[str]:
        full = self.resolve(node)
        if full.get("type") == "object" and "properties" in full:
            out = []
            for sub, subnode in full["properties"].items():
                out += self.rows(f"{key}.{sub}", subnode)
            return out
        # the type from the node itself keeps a $ref's name (a link to "Value types")
        description = node.get("description", "" if self.ref_name(node) else full.get("description", ""))
        f = self.facts.get(key, {})
        layers = ", ".join(f"`{name}`" for name in f.get("layers", ())) or "—"
        tests = ", ".join(f"`{t}`" for t in self.tested.get(key, ())) or "—"
        return [f"| `{key}` | {self.cell(self.type_of(node))} | {self.cell(self.default_of(full))} | "
                f"{self.cell(description)} | {layers} | {self.cell(merging(f)) if f else ''} | {tests} |"]

    # ------------------------------------------------------------------ document

    def render(self) -> str:
        out = [HEADER.format(description=self.cell(self.schema.get("description", "")))]
        top = self.schema["properties"]
        scalars = [k for k, v in top.items() if not (self.resolve(v).get("type") == "object")]
        table = ("| key | type | default | meaning | layer | `extends`; ceiling | tested by |\n"
                 "|---|---|---|---|---|---|---|")
        if scalars:
            out.append("## Top-level keys\n\n" + table)
            for k in scalars:
                out += self.rows(k, top[k])
            out.append("")
        for k, v in top.items():
            if k in scalars:
                continue
            v = self.resolve(v)
            out.append(f"## `{k}`\n")
            if v.get("description"):
                out.append(self.cell(v["description"]) + "\n")
            if "properties" not in v:
                out.append(table)
                out += self.rows(k, v)
            else:
                out.append(table)
                for sub, subnode in v["properties"].items():
                    out += self.rows(f"{k}.{sub}", subnode)
            out.append("")
        if self.used_defs:
            out.append("## Value types\n\n| type | accepted values |\n|---|---|")
            for name in self.used_defs:
                d = self.defs[name]
                shape = self.type_of({k: v for k, v in d.items() if k != "description"})
                text = d.get("description") or shape
                out.append(f"| `{name}` | {self.cell(text)} |")
            out.append("")
        return "\n".join(out).rstrip() + "\n"


def _load(schema: dict | None) -> dict:
    if schema is None:
        with open(resources.schema_path()) as fh:
            schema = json.load(fh)
    return schema


def render(schema: dict | None = None, tested: dict[str, list[str]] | None = None) -> str:
    return Renderer(_load(schema), tested_by() if tested is None else tested).render()


# ---------------------------------------------------------------------- "tested by"

def tests_dir() -> Path:
    return Path(resources.schema_path()).resolve().parent.parent / "tests"


def tested_by(root: Path | None = None) -> dict[str, list[str]]:
    """key -> the tests marked `@pytest.mark.covers("key", ...)` (a static scan of tests/, sorted):
    `FILE::TEST` relative to tests/, a class's tests as `FILE::CLASS`, a module's `pytestmark` as `FILE`."""
    root = tests_dir() if root is None else root
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("test_*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found = [(f"{rel}::{node.name}", d) for d in node.decorator_list]
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                      for t in node.targets):
                marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                found = [(rel, m) for m in marks]
            else:
                continue
            for name, mark in found:
                for key in covered_keys(mark):
                    out.setdefault(key, set()).add(name)
    return {k: sorted(v) for k, v in out.items()}


def covered_keys(mark: ast.expr) -> list[str]:
    """The keys of a `pytest.mark.covers("a.b", ...)` expression (string literals only), else []."""
    if not (isinstance(mark, ast.Call) and isinstance(mark.func, ast.Attribute) and mark.func.attr == "covers"):
        return []
    return [a.value for a in mark.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


# ---------------------------------------------------------------------- per-key facts

# The facts every key carries (x-layers, x-narrow, x-inherit) and the parameters a narrow kind may take.
FACT_KEYWORDS = ("x-layers", "x-narrow", "x-inherit")
FACT_PARAMS = ("x-order", "x-absent", "x-identity", "x-first", "x-universal", "x-sides-where", "x-empty-unless",
               "x-requires-same", "x-unlimited", "x-compare")


def leaf_nodes(schema: dict, node: dict | None = None, prefix: str = ""):
    """(key, node) of every key a profile sets, in the schema's order; a `$ref`'s target merged under the node."""
    node = schema if node is None else node
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/"):
        node = dict(schema["$defs"][ref.rsplit("/", 1)[-1]], **node)
    if node.get("type") == "object" and "properties" in node:
        for k, v in node["properties"].items():
            yield from leaf_nodes(schema, v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, node


def facts(schema: dict | None = None) -> dict[str, dict]:
    """key -> its facts: layers (the layer NAMEs that enforce it), inherit (along `extends`),
    narrow (under a ceiling) with that kind's parameters, size (the schema's size type)."""
    schema = _load(schema)
    out: dict[str, dict] = {}
    for key, node in leaf_nodes(schema):
        size = node.get("$ref") == "#/$defs/size"
        f = {"layers": tuple(node["x-layers"]), "inherit": node["x-inherit"], "narrow": node["x-narrow"],
             "size": size}
        for kw in FACT_PARAMS:
            if kw in node:
                v = node[kw]
                f[kw[2:].replace("-", "_")] = tuple(v) if isinstance(v, list) and kw != "x-absent" else v
        if size:
            f["compare"] = "bytes"
        out[key] = f
    return out


FACTS_HEADER = '''"""Per-key policy facts, generated from profiles/schema.json (its x-layers, x-narrow, x-inherit
and the narrow kinds' parameters) by

    python -m sandbox_kernel.schema_doc --facts > sandbox_kernel/policy_facts.py

Do not edit: change the schema and regenerate (tests/test_schema_facts.py checks it). A table and
not the schema itself, because the launcher narrows by a ceiling on its cache-hit path, where it
reads no JSON schema (standard library only, no file read).
"""

'''


INHERIT_TEXT = {"replace": "replaced", "concatenate": "concatenated", "merge": "merged key by key", "none": "—"}


def merging(f: dict) -> str:
    """How a key inherits along `extends` and narrows under a ceiling, in words (from its facts)."""
    kind = f["narrow"]
    text = {
        "none": "—",
        "request": "the request's",
        "ceiling": "the ceiling's where it sets one",
        "stricter": "the stricter (" + " > ".join(f"`{v}`" for v in f.get("order", ())) + ")",
        "min": "the lower",
        "max": "the higher",
        "and": "on only where both are",
        "or": "on where either is",
        "union": "union",
        "intersection": "intersection",
        "intersection-paths": "intersection, the deeper of each nested pair",
    }[kind]
    if f.get("compare") == "bytes":
        text += " in bytes"
    if "unlimited" in f:
        text += f" (`{json.dumps(f['unlimited'])}`: no limit)"
    if f.get("first") == "ceiling":
        text += " (the ceiling's entries first)"
    if "universal" in f:
        text += f" (`{json.dumps(f['universal'])}`: everything)" if f["universal"] is not None else \
            " (omitted: everything)"
    for other, value in f.get("sides_where", {}).items():
        text += f", of the sides whose `{other}` is `{value}`"
    for other, values in f.get("empty_unless", {}).items():
        text += f"; empty unless `{other}` is " + " or ".join(f"`{v}`" for v in values)
    if f.get("requires_same"):
        text += "; none where the sides differ in " + ", ".join(f"`{k}`" for k in f["requires_same"])
    return f"{INHERIT_TEXT[f['inherit']]}; {text}"


def render_facts(schema: dict | None = None) -> str:
    lines = [FACTS_HEADER, "KEYS = {"]
    for key, f in facts(schema).items():
        lines.append(f"    {key!r}: {f!r},")
    lines += ["}", "",
              "# The keys whose values are sizes (bytes, or strings such as 8GiB: resolved.parse_size).",
              "SIZE_KEYS = tuple(k for k, f in KEYS.items() if f[\"size\"])", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.stdout.write(render_facts() if argv == ["--facts"] else render())
    return 0


if __name__ == "__main__":
    sys.exit(main())

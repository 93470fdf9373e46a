"""The profile reference (docs/profile-reference.md), generated from profiles/schema.json.

    python -m sandbox_kernel.schema_doc > docs/profile-reference.md
    python -m sandbox_kernel.schema_doc --facts > sandbox_kernel/policy_facts.py

One table per top-level section of a profile: every key with its type, default and
meaning, taken from the schema (its descriptions are the documentation; edit them
there). tests/test_schema_doc.py checks that the committed file is what this prints.
"""

from __future__ import annotations

import json
import sys

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
`profiles/schema.json`. Which layer enforces each key, and whether that layer is hard or
soft, is in the [README](../README.md#profile-format) and printed by `profiles show`.

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
    def __init__(self, schema: dict):
        self.schema = schema
        self.defs = schema.get("$defs", {})
        self.used_defs: list[str] = []

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
        return [f"| `{key}` | {self.cell(self.type_of(node))} | {self.cell(self.default_of(full))} | "
                f"{self.cell(description)} |"]

    # ------------------------------------------------------------------ document

    def render(self) -> str:
        out = [HEADER.format(description=self.cell(self.schema.get("description", "")))]
        top = self.schema["properties"]
        scalars = [k for k, v in top.items() if not (self.resolve(v).get("type") == "object")]
        table = "| key | type | default | meaning |\n|---|---|---|---|"
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


def render(schema: dict | None = None) -> str:
    return Renderer(_load(schema)).render()


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

"""What is written from the layer registry, so that adding a layer touches its module, one line of
``layers/registry.py:LAYERS`` (the order is a decision, nsjail's one ordered list) and its tests:

- profiles/schema.json's ``enforcement`` keys: one per ``CONFIGURABLE`` layer, in the registry's
  order, its ``DEFAULT`` the key's default;
- README.md's list "The layers, in the order the launcher applies them": each layer's number,
  name, hardness (``HARD``), default level where it is not ``required`` (``DEFAULT``) and its
  ``README`` text;
- and, since the schema changed, what schema_doc generates from it (sandbox_kernel/policy_facts.py,
  docs/profile-reference.md).

    python -m sandbox_kernel.layer_doc --write    # rewrite the files that are out of date
    python -m sandbox_kernel.layer_doc --check    # exit status 1, naming each stale file

tests/layers/test_layer_registry.py checks that the committed files are what ``--write`` makes.
Not on the launch path (it imports json and every layer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import schema_doc
from .layers import registry

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "profiles" / "schema.json"
README = REPO / "README.md"
FACTS = REPO / "sandbox_kernel" / "policy_facts.py"
REFERENCE = REPO / "docs" / "profile-reference.md"

README_BEGIN = ("<!-- generated from each layer module's HARD, DEFAULT and README by "
                "`python -m sandbox_kernel.layer_doc --write`: edit them there -->")
README_END = "<!-- end of the generated list of layers -->"
# The lines of profiles/schema.json that hold the enforcement keys: from the line after this
# one (indented as the schema's second level) to the line that closes the object.
SCHEMA_START = '      "properties": {'
SCHEMA_OWNER = '    "enforcement": {'


def enforcement_key(layer) -> dict:
    """The schema node of ``enforcement.<layer>``: its facts (schema_doc's x-* keywords) and default."""
    return {"x-layers": [layer.NAME], "x-narrow": "stricter", "x-inherit": "replace", "x-absent": "required",
            "$ref": "#/$defs/enforcement", "default": layer.DEFAULT}


def enforcement_lines() -> list[str]:
    keys = [m for m in registry.ALL if m.CONFIGURABLE]
    return [f"        {json.dumps(m.NAME)}: {json.dumps(enforcement_key(m))}" + ("," if i < len(keys) - 1 else "")
            for i, m in enumerate(keys)]


def schema_text(text: str) -> str:
    """`text` (profiles/schema.json) with its enforcement keys written from the registry."""
    lines = text.split("\n")
    owner = lines.index(SCHEMA_OWNER)
    start = lines.index(SCHEMA_START, owner) + 1
    end = lines.index("      },", start)
    return "\n".join(lines[:start] + enforcement_lines() + lines[end:])


def layer_item(number: int, layer) -> str:
    qualifiers = "hard" if layer.HARD else "soft"
    if layer.DEFAULT not in (None, "required"):
        qualifiers += f"; `{layer.DEFAULT}` by default"
    return f"{number}. **{layer.NAME}** ({qualifiers})" + (f": {layer.README}" if layer.README else ".")


def readme_list() -> str:
    items = [layer_item(i, m) for i, m in enumerate(registry.LAYERS, 1)]
    armed = [f"The {m.NAME.replace('_', ' ')} ({'hard' if m.HARD else 'soft'}) {m.README}" for m in registry.IN_KERNEL]
    return "\n".join(items) + "\n\n" + "\n\n".join(armed)


def readme_text(text: str) -> str:
    """`text` (README.md) with its list of layers written from the registry."""
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END, start)
    return text[:start] + "\n\n" + readme_list() + "\n\n" + text[end:]


def expected() -> dict[Path, str]:
    """Each generated file's content as the registry and the schema make it, in dependency order."""
    schema = schema_text(SCHEMA.read_text())
    loaded = json.loads(schema)
    return {SCHEMA: schema, README: readme_text(README.read_text()),
            FACTS: schema_doc.render_facts(loaded), REFERENCE: schema_doc.render(loaded)}


def stale(want: dict[Path, str] | None = None) -> list[Path]:
    """The files whose content is not what `want` (default: expected()) says."""
    want = expected() if want is None else want
    return [path for path, text in want.items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["--write"], ["--check"]):
        sys.stderr.write("usage: python -m sandbox_kernel.layer_doc --write | --check\n")
        return 2
    if not (README.is_file() and (REPO / "pyproject.toml").is_file()):
        sys.stderr.write(f"sandbox-kernel: layer_doc writes the files of a source checkout, and {REPO} is not one "
                         "(no README.md and pyproject.toml): run it from a clone of the repository\n")
        return 2
    want = expected()
    out = stale(want)
    if argv == ["--write"]:
        for path in out:
            path.write_text(want[path])
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    for path in out:
        print(f"stale: {path.relative_to(REPO)} (run python -m sandbox_kernel.layer_doc --write)")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())

"""The configuration reference, generated from the settings model: one source of truth.

    python -m daemon.config.reference > docs/configuration-reference.md

Every table of ``config.toml`` with each key's type, default and description, in the model's order;
``tests/test_docs.py`` fails when the page in ``docs/`` differs from what this prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from daemon.config.settings import Settings

HEADER = """# Configuration reference

Generated from the settings model (`daemon/config`) by `python -m daemon.config.reference`; a test fails when
this page and the model differ. Every key is optional; the defaults below are what an empty `config.toml`
gives. Relative paths resolve against the config file's folder. Unknown keys are errors, so a typo surfaces
at start. Secrets never go in the file: they come from the environment (`PGPASSWORD`, `QDRANT_API_KEY`,
`ANTHROPIC_API_KEY`).
"""


def render() -> str:
    out = [HEADER]
    for table, model in _tables(Settings, ""):
        rows = [(name, f) for name, f in model.model_fields.items() if not f.exclude and not _is_section(f.annotation)]
        if not rows:
            continue
        out.append(f"\n## `[{table}]`\n" if table else "\n## Top level\n")
        if model.__doc__ and table:
            out.append(f"{_one_line(model.__doc__)}\n")
        out.append("| key | type | default | description |\n| --- | --- | --- | --- |")
        for name, f in rows:
            out.append(f"| `{name}` | {_type(f.annotation)} | `{_default(f)}` | {_cell(f.description or '')} |")
    return "\n".join(out) + "\n"


def _tables(model: type[BaseModel], prefix: str):
    yield prefix, model
    for name, f in model.model_fields.items():
        if _is_section(f.annotation):
            yield from _tables(f.annotation, f"{prefix}.{name}" if prefix else name)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is not None and str(origin).endswith("Literal"):
        return " \\| ".join(f"`{json.dumps(a)}`" for a in get_args(annotation))
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return {"Path": "path", "str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        name, _cell(str(annotation).replace("typing.", "").replace("pathlib.", "")))


def _default(f) -> str:
    value = f.default_factory() if f.default is PydanticUndefined and f.default_factory else f.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value if not hasattr(value, "__fspath__") else str(value))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    sys.stdout.write(render())

"""The site file's reference page, from the pydantic models of `config.site`.

Each section of the file is a model; each of its fields is shown with its type, its default and
its description: the field's own `description`, else the ``#:`` comment above it in the model's
source (the way the models document their fields), else nothing. A model used by a field is
documented once, after the first model that uses it.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from config.site import Site

_FIELD = re.compile(r"^\s+(\w+)\s*:")


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comment above each field in the model's class body, joined into one line."""
    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = _FIELD.match(line)
        if m and pending and m.group(1) in model.model_fields:
            found[m.group(1)] = " ".join(pending)
        pending = []
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (`X`, `list[X]`, `dict[str, X]`, `X | None`...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        made = info.default_factory()  # type: ignore[call-arg]
        if isinstance(made, BaseModel):
            return "its defaults"
        return f"`{made!r}`" if made not in ([], {}) else "empty"
    if info.default is PydanticUndefined or info.default is None:
        return "none"
    return f"`{info.default!r}`".replace("'", '"')


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def page() -> str:
    """The site file's reference, as markdown."""
    out = [
        "# Site file",
        "",
        "Generated from the site model (`config/site/`) by `python -m infra.docs`. A site file "
        "is YAML; `handover check-config FILE` checks one, naming each wrong field and how to fix "
        "it. Every name that reaches a remote shell is checked against a strict pattern, and the "
        "cross-field invariants (references between sections, consistent bounds) are checked "
        "when the file loads.",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[type[BaseModel]] = [Site]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        doc = inspect.getdoc(model) or ""
        out += [f"## {model.__name__}", "", doc, ""] if doc else [f"## {model.__name__}", ""]
        comments = field_comments(model)
        out += ["| field | type | default | what it is |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            what = info.description or comments.get(name, "")
            out.append(
                f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {_cell(what)} |"
            )
            queue += [m for m in _models_in(info.annotation) if m not in seen]
        out.append("")
    return "\n".join(out).rstrip() + "\n"

"""Load a site file and turn every problem into "field path: what is wrong; fix: what to do"."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.invariants import InvariantError, Problem
from config.site import Site

_FIXES: dict[str, str] = {
    "missing": "add this field",
    "extra_forbidden": "remove it, or check its spelling",
    "string_pattern_mismatch": (
        "use only letters, digits and . _ - (no spaces, ';', quotes or other shell characters)"
    ),
    "literal_error": "use one of the values named",
    "enum": "use one of the values named",
    "int_parsing": "give a whole number",
    "float_parsing": "give a number",
    "greater_than": "give a larger value",
    "greater_than_equal": "give a larger value",
    "less_than_equal": "give a smaller value",
    "less_than": "give a smaller value",
    "too_short": "give at least one entry",
    "model_type": "give a mapping (key: value)",
    "list_type": "give a list",
    "dict_type": "give a mapping (key: value)",
    "string_type": "give a string",
}


#: fields that site files of an earlier release set and that nothing reads any more: the field's
#: path (a pattern), why it went, and the fix; a file that still sets one is refused with these
#: words rather than with "unknown field"
_RETIRED: list[tuple[re.Pattern[str], str, str]] = [
    (
        re.compile(r"^procedures\.[^.]+\.step_timeout_s$"),
        "no longer read: each step is bounded by its verb's own bounds (the SSH command timeout, "
        "the drain, lock and approval timeouts)",
        "remove the line",
    ),
    (
        re.compile(r"^commands\.start_all$"),
        "no longer read: agents are started one by one (commands.start_agent)",
        "remove the line",
    ),
    (
        re.compile(r"^commands\.agent_user$"),
        "no longer read: the agents' init script runs them as their user",
        "remove the line",
    ),
]


class SiteConfigError(ValueError):
    """A site file is malformed. `problems` lists each one with its field path and fix."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds the union member tag ("SecretRef", "function-after[...]") to some locations
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p[:1].isupper())))


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    """Translate pydantic's errors into problems with field paths and fixes."""
    problems: list[Problem] = []
    for err in exc.errors():
        ctx: dict[str, Any] = err.get("ctx") or {}
        inner = ctx.get("error")
        prefix = _path(_clean_loc(err["loc"]))
        if isinstance(inner, InvariantError):
            for p in inner.problems:
                path = p.path if prefix == "(top level)" else f"{prefix}.{p.path}"
                problems.append(Problem(path, p.message, p.fix))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        kind = err["type"]
        fix = _FIXES.get(kind, "correct the value")
        if kind == "value_error" and "; " not in msg and "inline secrets" in msg:
            fix = "reference the secret: {env: VAR}, {file: /path} or {prefect_secret: name}"
            msg = "inline secrets are not allowed"
        elif kind == "value_error":
            fix = "see the message"
        if kind == "extra_forbidden":
            msg = "unknown field"
            for pattern, why, retired_fix in _RETIRED:
                if pattern.fullmatch(prefix):
                    msg, fix = why, retired_fix
        problems.append(Problem(prefix, msg, fix))
    return problems


#: a value `handover init` could not infer starts with it (`flows.plans.site_draft`)
TODO_MARK = "TODO"


def todo_problems(data: object, where: tuple[int | str, ...] = ()) -> list[Problem]:
    """Every value still marked TODO (a draft of `handover init`), with its field path."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in todo_problems(v, (*where, str(k)))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in todo_problems(v, (*where, i))]
    if isinstance(data, str) and data.startswith(TODO_MARK):
        what = data.removeprefix(TODO_MARK).strip(" :") or "a value"
        return [
            Problem(
                _path(where),
                f"still to fill in (left by `handover init`): {what}",
                "replace it with the value; the comment above it says how far the hosts told",
            )
        ]
    return []


def _related(path: str, marked: str) -> bool:
    """Whether a problem's path is a TODO's, inside it, or its parent (a secret reference
    whose `file` is the TODO)."""
    parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", marked)
    return path in (marked, parent) or path.startswith((f"{marked}.", f"{marked}["))


def parse_site(data: object, source: str = "<site>") -> Site:
    """Validate already-parsed YAML data as a site.

    Raises:
        SiteConfigError: listing every problem found (a value still marked TODO first).
    """
    if not isinstance(data, dict):
        raise SiteConfigError(
            source,
            [Problem("(top level)", "the file is not a mapping", "start with `site: NAME`")],
        )
    todos = todo_problems(data)
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        # a TODO's own validation error (not a host, not a name, the reference around it)
        # says less than the TODO
        marked = {t.path for t in todos}
        rest = [
            p for p in problems_from_validation(exc) if not any(_related(p.path, m) for m in marked)
        ]
        raise SiteConfigError(source, todos + rest) from None
    if todos:
        raise SiteConfigError(source, todos)
    return site


def load_site(path: str | Path) -> Site:
    """Read and validate a site file.

    Args:
        path: the YAML file.

    Returns:
        The validated site; cross-field invariants have been checked.

    Raises:
        SiteConfigError: the file is missing, not YAML, or invalid (every problem is listed).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SiteConfigError(
            str(p), [Problem("(file)", f"cannot read: {exc.strerror}", "check the path")]
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise SiteConfigError(
            str(p),
            [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}", "fix the syntax")],
        ) from None
    return parse_site(data, str(p))


#: where reviewed site files live; a run created through the Prefect API loads only these
#: (and the directories in ``HANDOVER_SITES_DIRS``, separated by ``:``)
SITES_DIRS = (Path(__file__).resolve().parent / "sites", Path("/etc/handover/sites"))


def allowed_site_dirs() -> list[Path]:
    """The directories a run created through the API may load a site file from."""
    extra = [Path(p) for p in os.environ.get("HANDOVER_SITES_DIRS", "").split(os.pathsep) if p]
    return [d.resolve() for d in (*SITES_DIRS, *extra)]


#: a site named rather than given by path: ``<name>.yaml`` in the first site directory that has it
SITE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def is_site_name(ref: str | Path) -> bool:
    """Whether `ref` names a site (``lab``) rather than giving a path (``./lab.yaml``)."""
    return isinstance(ref, str) and SITE_NAME_RE.fullmatch(ref) is not None


def find_site(name: str) -> Path:
    """The file of the site called `name`: ``<name>.yaml`` in the first of `allowed_site_dirs`.

    Raises:
        SiteConfigError: no site directory has it (the message lists the sites there are).
    """
    dirs = allowed_site_dirs()
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            if (d / f"{name}{suffix}").is_file():
                return d / f"{name}{suffix}"
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.y*ml")})
    raise SiteConfigError(
        name,
        [
            Problem(
                "(file)",
                f"no site called {name!r} in the site directories ({', '.join(map(str, dirs))})",
                f"use one of: {', '.join(known) or '(none)'}; or put {name}.yaml there",
            )
        ],
    )


def load_site_ref(ref: str | Path) -> Site:
    """`load_site` of a path, or of a site's name (see `find_site`) when `ref` is a bare name
    and no such file exists here."""
    if is_site_name(ref) and not Path(ref).exists():
        return load_site(find_site(str(ref)))
    return load_site(ref)


def load_reviewed_site(path: str | Path) -> Site:
    """`load_site`, for a site named (``lab``) or a file in one of `allowed_site_dirs` only.

    A run created through the Prefect API names its site as a parameter: anyone who reaches the
    API could point it at a file of their own, whose commands would run with the site's SSH key.
    Such runs load only sites that were put where site files are reviewed.

    Raises:
        SiteConfigError: the file is elsewhere (nothing was read), or it is invalid.
    """
    if is_site_name(path):
        path = find_site(str(path))
    resolved = Path(path).resolve()  # a link out of the site directories is refused too
    dirs = allowed_site_dirs()
    if not any(resolved.is_relative_to(d) for d in dirs):
        raise SiteConfigError(
            str(path),
            [
                Problem(
                    "(file)",
                    "a run created through the Prefect API loads site files from the site "
                    f"directories only ({', '.join(str(d) for d in dirs)})",
                    "name the site (e.g. `lab` for lab.yaml there), put the file there, or add "
                    "its directory to HANDOVER_SITES_DIRS where the runs execute (handover "
                    "serve adds the directory of its --site)",
                )
            ],
        )
    return load_site(resolved)

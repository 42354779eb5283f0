"""mkdocs hook: the configuration reference and the problem-type list, generated from the code at build time.

A page writes `<!-- generated: settings -->` or `<!-- generated: problem-types -->` on a line of its own; this hook
replaces the marker with a Markdown table read from `shared.config.settings.Settings` (pydantic-settings) or from the
subclasses of `shared.config.errors.InferqError`. Nothing is written by hand, so the docs cannot drift from the code: a
setting without a description fails the build.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, whatever the working directory

from shared.config.errors import PROBLEM_BASE, InferqError  # noqa: E402
from shared.config.settings import Settings  # noqa: E402

SETTINGS_MARKER = "<!-- generated: settings -->"
PROBLEMS_MARKER = "<!-- generated: problem-types -->"
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", Path: "path", SecretStr: "secret"}
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def type_name(annotation: Any) -> str:
    """A reader's name for a setting's type: `int`, `path or none`, `secret`."""
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "none"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(value: Any) -> str:
    """A setting's default as it would be written in the environment (sizes in bytes also in KiB/MiB/GiB)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        return "*(empty)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    text = f"`{value}`"
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return f"{text} ({value // size} {unit})"
    return text


def bounds_text(field: FieldInfo) -> str:
    """The range pydantic enforces on a setting, e.g. `≥ 1` or `≥ 0, ≤ 65535`."""
    parts = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS.items():
            if getattr(item, attr, None) is not None:
                parts.append(f"{symbol} {getattr(item, attr)}")
    return ", ".join(parts)


def settings_table() -> str:
    """One row per setting of `Settings`, in the order they are declared; a setting without description fails."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| environment variable | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name} has no description in shared/config/settings.py")
        description = field.description.replace("|", "\\|")
        env = f"{prefix}{name}".upper()
        line = f"| `{env}` | {type_name(field.annotation)} | {default_text(field.default)} | {bounds_text(field)} |"
        rows.append(f"{line} {description} |")
    return "\n".join(rows)


def _subclasses(cls: type[InferqError]) -> list[type[InferqError]]:
    found: list[type[InferqError]] = []
    for sub in cls.__subclasses__():
        found.extend([sub, *_subclasses(sub)])
    return found


def problem_types_table() -> str:
    """Every problem type inferq can answer or record, sorted by status then slug, with its title."""
    classes = {cls.type_slug: cls for cls in [InferqError, *_subclasses(InferqError)]}
    rows = [f"| type (after `{PROBLEM_BASE}`) | status | title |", "|---|---|---|"]
    for slug, cls in sorted(classes.items(), key=lambda item: (item[1].status, item[0])):
        rows.append(f"| `{slug}` | {cls.status} | {cls.title} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs event: replace each marker on a page with its generated table."""
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if PROBLEMS_MARKER in markdown:
        markdown = markdown.replace(PROBLEMS_MARKER, problem_types_table())
    return markdown

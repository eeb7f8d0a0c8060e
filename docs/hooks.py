"""MkDocs hooks: pages stay in sync with the code because parts of them are generated.

Directives (each on a line of its own in a page's markdown):

* ``--8<-- "path/from/repo/root"`` -- replaced by the file's text (used inside code fences, so
  the examples shown are the files the tests run);
* ``<!-- plmkit:params NAME -->`` -- the parameters of objective ``NAME``'s ``__init__`` (its
  own and the ones it forwards to its parent classes), with defaults and docstring text;
* ``<!-- plmkit:recipes NAME -->`` -- the built-in recipes that train objective ``NAME``, with
  their sizes and descriptions;
* ``<!-- plmkit:objectives -->`` -- every registered objective, linked to its page;
* ``<!-- plmkit:signature dotted.path.Class -->`` -- the parameters of any class (a dataclass's
  fields documented in its ``Args:``, or an ``__init__``'s parameters);
* ``<!-- plmkit:help COMMAND ... -->`` -- the ``--help`` text of a ``plmkit`` command.

A directive that cannot be resolved (missing file, unknown objective) fails the build.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import os
import re
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_INCLUDE = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<path>[^"]+)"[ \t]*$', re.M)
_DIRECTIVE = re.compile(r"^<!-- plmkit:(?P<name>[a-z]+)(?P<args>[^>]*?)\s*-->[ \t]*$", re.M)
_SIZE_KEYS = ("size", "num_layers", "hidden_size", "num_heads", "intermediate_size",
              "embedding_size", "d_model", "d_ff", "lstm_size", "projection_size")


class DocsError(Exception):
    """A directive that cannot be resolved."""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = getattr(getattr(page, "file", None), "src_path", "?")
    markdown = _INCLUDE.sub(lambda m: _include(m, where), markdown)
    return _DIRECTIVE.sub(lambda m: _directive(m, where), markdown)


def _include(match: re.Match, where: str) -> str:
    path = ROOT / match.group("path")
    if not path.is_file():
        raise DocsError(f"{where}: included file {match.group('path')} does not exist")
    indent = match.group("indent")
    text = path.read_text(encoding="utf-8").rstrip("\n")
    return "\n".join(indent + line if line else line for line in text.splitlines())


def _directive(match: re.Match, where: str) -> str:
    name, args = match.group("name"), match.group("args").split()
    if name == "params":
        return params_table(_objective(args[0], where))
    if name == "recipes":
        return recipes_table(args[0])
    if name == "objectives":
        return objectives_table("" if where.startswith("methods/") else "methods/")
    if name == "signature":
        return signature_table(_import(args[0], where))
    if name == "help":
        return "```text\n" + command_help(args) + "\n```"
    raise DocsError(f"{where}: unknown directive plmkit:{name}")


def _objective(name: str, where: str) -> type:
    from plmkit.registry import get_registry

    registry = get_registry()
    if name not in registry.objectives:
        raise DocsError(f"{where}: no registered objective '{name}'")
    return registry.objectives[name].cls


def _import(dotted: str, where: str) -> type:
    import importlib

    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DocsError(f"{where}: cannot import {dotted}: {exc}") from exc


# ------------------------------------------------------------------------- parameters
def parse_args_section(doc: str | None) -> dict[str, str]:
    """``{name: description}`` from a Google-style ``Args:`` section."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    inside, current, base = False, None, None
    for line in lines:
        if line.strip() == "Args:":
            inside, base = True, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if base is None:
            base = indent
        if indent < base or (indent == 0 and line.rstrip().endswith(":")):
            inside = False
            continue
        m = re.match(r"\s*(\*{0,2}\w+)(?: \([^)]*\))?:\s*(.*)", line)
        if indent == base and m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current is not None:
            out[current] += " " + line.strip()
    return out


def _fixed_by_super_call(init: Any) -> set[str]:
    """Keyword names an ``__init__`` passes itself to ``super().__init__(...)``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "__init__" and isinstance(node.func.value, ast.Call)
                and getattr(node.func.value.func, "id", None) == "super"):
            names.update(k.arg for k in node.keywords if k.arg)
    return names


def collect_params(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, default, description, defined in)`` for every ``__init__`` parameter, walking
    the MRO while a class forwards ``**kwargs`` to its parent (parameters a class sets itself
    in its ``super().__init__`` call are not the user's and are left out)."""
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        docs = parse_args_section(init.__doc__)
        forwards = False
        for param in list(signature.parameters.values())[1:]:
            if param.kind is param.VAR_KEYWORD:
                forwards = True
                continue
            if param.kind is param.VAR_POSITIONAL or param.name in seen:
                continue
            seen.add(param.name)
            if dataclasses.is_dataclass(param.default):  # a typed block: one row a field
                rows.extend((f"{param.name}.{field}", default, text, klass.__name__)
                            for field, default, text in _field_rows(param.default))
                continue
            default = "required" if param.default is param.empty else repr(param.default)
            rows.append((param.name, default, docs.get(param.name, ""), klass.__name__))
        seen |= _fixed_by_super_call(init)
        if not forwards or klass.__name__ == "Objective":
            break
    return rows


def _field_rows(config: object) -> list[tuple[str, str, str]]:
    """``(field, default, attribute docstring)`` of a config dataclass instance."""
    import docstring_parser

    docs = {p.arg_name: p.description or "" for p in
            docstring_parser.parse_from_object(type(config)).params}
    return [(f.name, repr(getattr(config, f.name)), " ".join(docs.get(f.name, "").split()))
            for f in dataclasses.fields(config)]


def params_table(cls: type) -> str:
    lines = ["| parameter | default | meaning | from |", "|---|---|---|---|"]
    for name, default, text, owner in collect_params(cls):
        lines.append(f"| `{name}` | `{default}` | {_cell(text)} | `{owner}` |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "(undocumented)"


def signature_table(cls: type) -> str:
    lines = ["| parameter | default | meaning |", "|---|---|---|"]
    if dataclasses.is_dataclass(cls):
        docs = parse_args_section(cls.__doc__)
        import docstring_parser

        docs |= {p.arg_name: " ".join((p.description or "").split())
                 for p in docstring_parser.parse_from_object(cls).params if p.description}
        for f in dataclasses.fields(cls):
            default = repr(f.default) if f.default is not dataclasses.MISSING else "required"
            lines.append(f"| `{f.name}` | `{default}` | {_cell(docs.get(f.name, ''))} |")
        return "\n".join(lines)
    for name, default, text, _ in collect_params(cls):
        lines.append(f"| `{name}` | `{default}` | {_cell(text)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- recipes
def recipes_table(objective: str) -> str:
    from plmkit.registry import get_registry

    registry = get_registry()
    lines = ["| recipe | sizes | description |", "|---|---|---|"]
    found = 0
    for recipe in registry.recipes.values():
        spec = registry.objective_for_class_path(recipe.class_path)
        if spec is None or spec.name != objective or recipe.plugin.distribution != "plmkit":
            continue
        import yaml

        config = yaml.safe_load(Path(recipe.path).read_text(encoding="utf-8")) or {}
        init = (config.get("model") or {}).get("init_args") or {}
        data = config.get("data") or {}
        shape = {**init, **(init.get("encoder") or {})}  # typed encoder block or loose keys
        sizes = [f"{k}={shape[k]}" for k in _SIZE_KEYS if k in shape]
        if "max_length" in data:
            sizes.append(f"max_length={data['max_length']}")
        if "batch_size" in data:
            sizes.append(f"batch={data['batch_size']}")
        lines.append(f"| `{recipe.name}` | {', '.join(sizes)} | {recipe.description} |")
        found += 1
    if not found:
        raise DocsError(f"no built-in recipe trains objective '{objective}'")
    return "\n".join(lines)


def objectives_table(prefix: str = "methods/") -> str:
    from plmkit.registry import get_registry

    lines = ["| objective | page | description |", "|---|---|---|"]
    for name, spec in sorted(get_registry().objectives.items()):
        if spec.plugin.distribution != "plmkit":
            continue
        lines.append(f"| `{name}` | [{name}]({prefix}{name}.md) | {spec.description} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- help
def command_help(args: list[str]) -> str:
    from plmkit.cli import main

    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*args, "--help"])
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    text = out.getvalue().rstrip()
    if not text:
        raise DocsError(f"'plmkit {' '.join(args)} --help' printed nothing")
    return text

"""The API reference is complete: every public name has an entry, parameters, and no raw roles.

Fast checks (no mkdocs build; ``tests/test_docs.py`` builds the site): the public names are
``__all__`` of ``modeopt_masks``, ``modeopt_masks.circuits`` and ``modeopt_masks.probing``.
A name has an entry when ``docs/api.md`` renders the module that defines it with ``:::``
(or names the object itself); mkdocstrings reads Google-style docstrings, so a function or
class with parameters needs an ``Args:`` section naming each of them and nothing else; a Sphinx role
(``:func:`x```) would show raw on the page.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "modeopt_masks"
PUBLIC_PACKAGES = ("modeopt_masks", "modeopt_masks.circuits", "modeopt_masks.probing")
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`")
ARGS_ENTRY = re.compile(r"^    (\*{0,2}\w+)(?: \([^)]*\))?:", re.M)


def api_entries(api_text: str) -> tuple[set[str], set[str]]:
    """``(every ::: path, the paths rendered with their members)`` of an api.md text."""
    every, with_members = set(), set()
    for m in re.finditer(r"^::: *(\S+)((?:\n[ \t]+\S.*)*)", api_text, re.M):
        every.add(m.group(1))
        if not re.search(r"members:\s*(false|\[\])", m.group(2)):
            with_members.add(m.group(1))
    return every, with_members


def module_assignments(module: str) -> dict[str, bool]:
    """Top-level names assigned in ``module``'s source -> whether an attribute docstring follows."""
    path = PACKAGE_DIR.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    body = ast.parse(path.read_text()).body
    found = {}
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        documented = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                      and isinstance(nxt.value.value, str))
        found.update(dict.fromkeys(names, documented))
    return found


def defining_path(package: str, name: str) -> tuple[str, bool]:
    """``(module.qualname where the public name is defined, whether it has a docstring)``."""
    obj = getattr(importlib.import_module(package), name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}", bool(inspect.getdoc(obj))
    # a constant: the module (among those the package imports it through) that assigns it
    for module in sorted(m for m in list(sys.modules) if m.startswith("modeopt_masks")):
        try:
            assigned = module_assignments(module)
        except FileNotFoundError:
            continue
        if name in assigned and getattr(importlib.import_module(module), name, None) is obj:
            return f"{module}.{name}", assigned[name]
    raise AssertionError(f"cannot find where {package}.{name} is assigned")


def public_paths() -> dict[str, str]:
    """``{public name: the dotted path mkdocstrings gives its entry}``."""
    return {f"{package}.{name}": defining_path(package, name)[0]
            for package in PUBLIC_PACKAGES for name in importlib.import_module(package).__all__}


def missing_entries(api_text: str) -> list[str]:
    """Public names that the api text does not render, with the reason."""
    every, with_members = api_entries(api_text)
    problems = []
    for package in PUBLIC_PACKAGES:
        for name in importlib.import_module(package).__all__:
            path, documented = defining_path(package, name)
            module = path.rpartition(".")[0]
            while module not in with_members and "." in module:
                module = module.rpartition(".")[0]  # a class' method: its module renders it
            if path not in every and module not in with_members:
                problems.append(f"{package}.{name}: no '::: {path.rpartition('.')[0]}' in docs/api.md")
            elif any(part.startswith("_") for part in path.split(".")):
                problems.append(f"{package}.{name}: defined under a private name ({path})")
            elif not documented:
                problems.append(f"{package}.{name}: no docstring, so mkdocstrings hides it")
    return problems


def parameter_problems(obj: object) -> list[str]:
    """What is wrong with ``obj``'s ``Args:`` section: missing, or not naming each parameter."""
    try:
        params = list(inspect.signature(obj).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    if not params:
        return []
    doc = inspect.getdoc(obj) or ""
    # a pydantic model's constructor keywords are its fields: griffe reads the signature
    # statically and cannot see pydantic's __init__, so they are documented as Attributes
    title = "Attributes" if inspect.isclass(obj) and issubclass(obj, BaseModel) else "Args"
    section = re.search(rf"^{title}:\n((?:    .*\n?|\n)+)", doc, re.M)
    if section is None:
        return [f"no {title}: section for ({', '.join(p.name for p in params)})"]
    documented = {n.lstrip("*") for n in ARGS_ENTRY.findall(section.group(1))}
    real = {p.name for p in params}
    problems = [f"{title}: names {n!r}, which is not a parameter" for n in sorted(documented - real)]
    problems += [f"{title}: misses {n!r}" for n in sorted(real - documented)]
    return problems


def raw_roles(source: str) -> list[str]:
    """The docstrings (module, class, function, attribute) of a source that hold a Sphinx role."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str) and SPHINX_ROLE.search(node.value.value)):
            line = next(ln for ln in node.value.value.splitlines() if SPHINX_ROLE.search(ln))
            hits.append(f"line {node.lineno}: {line.strip()}")
    return hits


def public_objects() -> list[tuple[str, object]]:
    out = []
    for package in PUBLIC_PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                out.append((f"{package}.{name}", obj))
    return out


def test_every_public_name_has_an_api_entry():
    problems = missing_entries((ROOT / "docs" / "api.md").read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "obj"), public_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_public_object_documents_its_parameters(name, obj):
    problems = parameter_problems(obj)
    assert not problems, f"{name}: " + "; ".join(problems)


def test_no_docstring_holds_a_raw_sphinx_role():
    hits = [f"{path.relative_to(ROOT)} {hit}" for path in sorted(PACKAGE_DIR.rglob("*.py"))
            for hit in raw_roles(path.read_text())]
    assert not hits, "Sphinx roles show raw in mkdocs; write [`name`][module.name]:\n" + "\n".join(hits)


def test_checks_catch_what_they_are_for():
    api = (ROOT / "docs" / "api.md").read_text()
    without_conversion = api.replace("::: modeopt_masks.conversion\n", "")
    assert any(p.startswith("modeopt_masks.convert:") for p in missing_entries(without_conversion))
    listed_only = api.replace("::: modeopt_masks.circuits.edges\n",
                              "::: modeopt_masks.circuits.edges\n    options:\n      members: false\n")
    assert any(p.startswith("modeopt_masks.circuits.LAYOUTS:") for p in missing_entries(listed_only))

    def undocumented(model, steps=3):
        """Train.

        Args:
            model: the model.
            stale: a parameter that no longer exists.
        """

    assert parameter_problems(undocumented) == [
        "Args: names 'stale', which is not a parameter", "Args: misses 'steps'"]
    assert parameter_problems(lambda x: x) == ["no Args: section for (x)"]
    assert raw_roles('"""See :func:`convert`."""\nx = 1\n"""Or :class:`~a.B`."""\n') == [
        "line 1: See :func:`convert`.", "line 3: Or :class:`~a.B`."]
    assert raw_roles('"""See [`convert`][modeopt_masks.conversion.convert]."""\n') == []

"""A Griffe extension for the documentation site: the Sphinx roles of detloss's docstrings as cross-references.

detloss's docstrings name other objects with Sphinx roles (``:func:`detloss.plan.plan_run```,
``:class:`~detloss.data.regions.RegionTargets```, ``:meth:`describe```, ``:mod:`.storage```), which Markdown would
show literally. Loaded by mkdocstrings (``extensions`` in ``mkdocs.yml``), this rewrites each role, before the
docstring is rendered, into an optional autorefs cross-reference: a link where the target is on the site, its name
in code type where it is not (a private helper, an object of another library), never an unresolved link.

Targets are read as Sphinx reads them: ``~`` shows only the last name; a leading ``.`` is relative to the module
that holds the docstring's object (its package for a second dot); a bare name is looked up beside the object (a
method or attribute of the class, else a name of the module).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>func|class|meth|mod|data|attr|exc|obj|const):`(?P<target>[^`]+)`")


def _module_of(obj: griffe.Object) -> griffe.Object:
    while obj.kind is not griffe.Kind.MODULE and obj.parent is not None:
        obj = obj.parent
    return obj


def _resolve(target: str, obj: griffe.Object) -> str:
    """The dotted path a role's ``target`` names, seen from the docstring of ``obj``."""
    module = _module_of(obj)
    if target.startswith("."):
        dots = len(target) - len(target.lstrip("."))
        base = module
        for _ in range(dots - 1):
            base = base.parent or base
        return f"{base.path}.{target.lstrip('.')}"
    if "." in target:
        return target
    owner = obj if obj.kind in (griffe.Kind.CLASS, griffe.Kind.MODULE) else (obj.parent or module)
    return f"{owner.path}.{target}"


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every Sphinx role replaced by an optional cross-reference."""

    def replace(match: re.Match) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        if "<" in target and target.endswith(">"):  # :func:`title <target>`
            title, target = (part.strip() for part in target[:-1].split("<", 1))
        else:
            title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        identifier = _resolve(target, obj)
        return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of each object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = rewrite(obj.docstring.value, obj)

"""The public API is small and the rest is private by name (issue 9)."""

from __future__ import annotations

import re
from pathlib import Path

import slimtune

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimtune"

#: Modules a user may import by path: the knob base class and the packed-file loader;
#: and every registered knob's file (each one an example of the extension API), read
#: from the registry so that a new knob breaks no test here.  The CLI entry point
#: (``slimtune.cli:main``) is a package: its ``__init__.py`` and ``__main__.py``.
PUBLIC_MODULES = {"spaces/base.py", "search/packed.py"}


def _knob_files() -> set[str]:
    import sys

    from slimtune.spaces import get_knob, knob_families

    return {Path(sys.modules[get_knob(f).__module__].__file__).resolve().relative_to(PACKAGE).as_posix()
            for f in knob_families()}


def test_every_public_name_resolves():
    for name in slimtune.__all__:
        assert getattr(slimtune, name) is not None, name
    for name in ("Study", "Task", "Candidate", "Knob", "register_knob", "StudyError", "TaskError", "SpaceError",
                 "NoCandidateError"):
        assert name in slimtune.__all__, name


def test_internal_modules_are_private_by_name():
    missing = sorted(rel for rel in PUBLIC_MODULES if not (PACKAGE / rel).is_file())
    assert missing == [], f"PUBLIC_MODULES names modules that are not there: {missing}"
    assert (PACKAGE / "cli" / "__init__.py").is_file() and (PACKAGE / "cli" / "__main__.py").is_file()
    knobs = _knob_files()
    assert "spaces/quantization.py" in knobs and "spaces/clustering.py" in knobs
    public = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        parts = rel.split("/")
        if parts[-1] == "__init__.py" or any(p.startswith("_") for p in parts) or rel in PUBLIC_MODULES | knobs:
            continue
        public.append(rel)
    assert public == [], f"modules outside the public API must start with an underscore: {public}"


#: Names that mean the same role wherever they appear: a package's registry of its
#: plug-ins, and the base class the plug-ins subclass.
ROLE_NAMES = {"registry", "base"}


def test_no_two_modules_share_a_name():
    """No ``candidate.py`` in two packages with two meanings (``measure`` beside ``measurement``
    was the other trap: the stems are compared without their leading underscore)."""
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py" and path.stem.lstrip("_") not in ROLE_NAMES:
            names.setdefault(path.stem.lstrip("_"), []).append(path.relative_to(PACKAGE).as_posix())
    assert {k: v for k, v in names.items() if len(v) > 1} == {}


def test_readme_uses_only_the_public_api():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    used = set(re.findall(r"\bslimtune\.([A-Za-z_]\w*)", text)) - {"db", "cli"}
    modules = {p.name for p in PACKAGE.iterdir()}
    for name in sorted(used):
        if name in modules:  # a public subpackage (slimtune.search.packed, slimtune.widgets, ...)
            assert not name.startswith("_"), name
            continue
        assert name in slimtune.__all__, f"README uses slimtune.{name}, which is not exported"
    for match in re.finditer(r"from (slimtune[\w.]*) import ([\w, ]+)", text):
        assert not any(part.startswith("_") for part in match.group(1).split(".")), match.group(0)


def test_package_inits_reexport_what_they_list():
    import importlib

    for init in PACKAGE.rglob("__init__.py"):
        mod = ".".join(["slimtune", *init.parent.relative_to(PACKAGE).parts])
        module = importlib.import_module(mod)
        missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n) and n not in dir(module)]
        assert missing == [], (mod, missing)

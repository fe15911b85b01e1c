"""The package's structure: one import name, and dependencies that run one way (adapters ->
core, never core -> adapter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_MODULES = ("csrefine.relion", "csrefine.cryosparc", "relion_external", "cryosparc_job")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "csrefine" + "".join("." + p for p in path.relative_to(ROOT / "plugin").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_core_module_imports_an_adapter():
    core = sorted((ROOT / "plugin").rglob("*.py"))
    assert len(core) > 20
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p)
                                                  if m.startswith(ADAPTER_MODULES))
                 for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_name_is_csrefine_and_adapters_are_its_subpackages():
    import csrefine.cryosparc
    import csrefine.relion

    assert Path(csrefine.__file__).parent == ROOT / "plugin"
    assert Path(csrefine.relion.__file__).parent == ROOT / "relion_external"
    assert Path(csrefine.cryosparc.__file__).parent == ROOT / "cryosparc_job"
    assert csrefine.__version__ not in ("", "unknown")
    for generic in ("plugin", "relion_external", "cryosparc_job"):
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({generic!r}) is not None)"
        # run outside the repository so that the folders themselves are not on sys.path
        assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0, generic


def test_adapters_are_found_through_entry_points():
    from csrefine.cli import load_adapters

    adapters = load_adapters()
    assert adapters["relion"].PARTICLE_SUFFIXES == (".star",)
    assert adapters["cryosparc"].PARTICLE_SUFFIXES == (".cs",)


def test_an_abort_while_the_outputs_are_written_leaves_nothing(tmp_path):
    """RELION_JOB_ABORT_NOW that appears while the outputs are staged is honoured: nothing is
    moved into place, the staging directory and the lock are gone."""
    from types import SimpleNamespace

    from csrefine.errors import AbortRequested
    from csrefine.outputs import OutputDirectory

    written = []

    def write_particles(path, result):
        path.write_text("particles")
        written.append(path)

    out = OutputDirectory(tmp_path / "out", "particles.star", write_particles,
                          {"csrefine.json": lambda path, result: path.write_text("{}")})
    out.files.pop("logfile.pdf")
    out.open()
    out.check(SimpleNamespace(input_paths=(), sources={}))
    calls = iter([False, True])  # the request appears after the first staged file
    with pytest.raises(AbortRequested) as exc:
        out.write(SimpleNamespace(), lambda: next(calls))
    out.close(exc.value)
    assert written and not written[0].exists()
    assert not (tmp_path / "out").exists()  # created by this run, left empty: removed



def _layout_by_folder() -> dict[str, str]:
    """The README's Layout section, split at its ``### `folder/` `` headings."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Layout\n")
    section = text[start:text.index("\n## ", start + 1)]
    parts = section.split("\n### `")[1:]
    return {part.split("/`", 1)[0]: part for part in parts}


def test_the_readme_layout_names_every_module_and_only_modules_that_exist():
    """The README's Layout section lists every module of the three folders under its folder's
    heading (a module of a subpackage after the subpackage's name), and every module it lists
    exists."""
    import re

    layout = _layout_by_folder()
    assert sorted(layout) == ["cryosparc_job", "plugin", "relion_external"]
    for folder, text in layout.items():
        root = ROOT / folder
        modules = [p.relative_to(root) for p in root.rglob("*.py") if p.name != "__init__.py"]
        listed = set(re.findall(r"`(\w+\.py)`", text))
        packages = set(re.findall(r"`(\w+)/`", text))
        missing = [str(m) for m in modules if m.name not in listed
                   or (len(m.parts) > 1 and m.parts[0] not in packages)]
        assert missing == [], folder
        names = {m.name for m in modules}
        assert sorted(listed - names) == [], folder


def test_the_readme_layout_names_every_module():
    """README's Layout section names every module of the three packages (and the C kernel), and
    nothing that does not exist."""
    import re

    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    layout = readme[start:readme.index("\n## ", start + 1)]
    named = {name.rsplit("/", 1)[-1] for name in re.findall(r"`([\w/]+\.(?:py|c))`", layout)}
    modules = {p.name for root in ("plugin", "relion_external", "cryosparc_job")
               for p in (ROOT / root).rglob("*") if p.suffix in (".py", ".c")
               and p.name != "__init__.py"}
    tests = {p.name for p in (ROOT / "tests").glob("*.py")}
    assert sorted(modules - named) == []
    assert sorted(named - modules - tests) == []

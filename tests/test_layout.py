"""The tree's shape: which package may import which, and docs whose links resolve.

Import directions are read from the source with ``ast`` (nothing is imported): ``analysis/``
never imports the server, and the JSON routes (``server/api/``) and the HTML routes
(``server/web/``) never import each other; both read through the shared read layer.

Markdown links from the README and ``docs/`` to local files must name a file that exists,
and a ``#fragment`` a heading (GitHub's anchor of it) or an ``<a id>`` in that file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Source folders and the import names they install as (setup.py's package_dir), most
# specific first: ``server/client/`` is ``phaseboard`` itself.
ROOTS = (
    ("server/client", "phaseboard"),
    ("server", "phaseboard.server"),
    ("analysis", "phaseboard.analysis"),
)


# ---------------------------------------------------------------------------- imports


def module_name(path: Path, root: Path = ROOT) -> str:
    """``server/api/runs.py`` -> ``phaseboard.server.api.runs`` (a package: its name)."""
    rel = path.relative_to(root).with_suffix("").as_posix()
    for folder, package in ROOTS:
        if rel == folder or rel.startswith(folder + "/"):
            parts = [package, *rel[len(folder) :].strip("/").split("/")]
            break
    else:
        parts = rel.split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(p for p in parts if p)


def imported_modules(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """Every module a file imports, relative imports resolved, with its line number.

    ``from x import y`` yields both ``x`` and ``x.y`` (``y`` may be a submodule).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def forbidden_imports(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """``file:line imports name`` for each import under ``folder`` (or in that one file) of a
    forbidden module."""
    found = set()
    where = root / folder
    for path in [where] if where.is_file() else sorted(where.rglob("*.py")):
        for line, name in imported_modules(path, root):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.add(f"{path.relative_to(root).as_posix()}:{line} imports {name}")
    return sorted(found)


def test_module_names_follow_the_installed_layout() -> None:
    assert module_name(ROOT / "server/api/runs.py") == "phaseboard.server.api.runs"
    assert module_name(ROOT / "server/client/__init__.py") == "phaseboard"
    assert module_name(ROOT / "analysis/llc/__init__.py") == "phaseboard.analysis.llc"


def test_the_scan_resolves_absolute_and_relative_imports(tmp_path: Path) -> None:
    """A forbidden import is found whichever way it is written (the scan can fail)."""
    (tmp_path / "analysis" / "llc").mkdir(parents=True)
    (tmp_path / "analysis" / "llc" / "probe.py").write_text(
        "from ...server import db\nimport phaseboard.server.app\nfrom .. import tasks\n"
    )
    found = forbidden_imports("analysis", ("phaseboard.server",), root=tmp_path)
    assert found == [
        "analysis/llc/probe.py:1 imports phaseboard.server",
        "analysis/llc/probe.py:1 imports phaseboard.server.db",
        "analysis/llc/probe.py:2 imports phaseboard.server.app",
    ]


def test_analysis_never_imports_the_server() -> None:
    assert forbidden_imports("analysis", ("phaseboard.server", "server")) == []


def test_json_routes_never_import_the_pages() -> None:
    assert forbidden_imports("server/api", ("phaseboard.server.web",)) == []


def test_pages_never_import_the_json_routes() -> None:
    assert forbidden_imports("server/web", ("phaseboard.server.api",)) == []


def test_the_read_layer_imports_neither_route_package() -> None:
    routes = ("phaseboard.server.api", "phaseboard.server.web")
    assert forbidden_imports("server/read", routes) == []
    assert forbidden_imports("server/deps.py", routes) == []


# ---------------------------------------------------------------------------- docs

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "bench").rglob("README.md"))
    return [f for f in files if f.exists()]


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines outside fenced code blocks, with their numbers."""
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(path):
        if m := HEADING.match(line):
            slug = github_anchor(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
        out.update(HTML_ID.findall(line))
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for number, line in prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold examples, not links
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root).as_posix()}:{number} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{where}: no heading #{fragment} there")
    return broken


def test_github_anchors_are_computed_as_github_does() -> None:
    assert github_anchor("Offline runs and `phaseboard sync`") == "offline-runs-and-phaseboard-sync"
    assert github_anchor("Lanes: cheap jobs never wait") == "lanes-cheap-jobs-never-wait"
    assert github_anchor("Essential dynamics (`essential_dynamics`)") == (
        "essential-dynamics-essential_dynamics"
    )


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Title\n\n## A section: `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](README.md#a-section-code) [gone](nowhere.md) [bad anchor](README.md#no-such)\n"
        "```\n[in code](also-nowhere.md)\n```\n`[span](gone.md)`\n"
    )
    found = broken_links(page, root=tmp_path)
    assert found == [
        "page.md:1 -> nowhere.md: no such file",
        "page.md:1 -> README.md#no-such: no heading #no-such there",
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_to_local_files_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_readme_is_a_short_front_door() -> None:
    """The README says what it is and how to start; the rest lives in docs/ and is linked."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) < 8000, len(readme)
    for needed in ("make run", "make test", "import phaseboard", "docs/run-page.png", "chromium"):
        assert needed in readme
    linked = {t.partition("#")[0] for _, line in prose_lines(ROOT / "docs" / "README.md")
              for t in LINK.findall(line)}  # fmt: skip
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"

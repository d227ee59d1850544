"""Routes hold no SQL: no module of service/routes imports SQLAlchemy (its catalog queries are
indexer.catalog.queries'). The same rule is an import-linter contract (pyproject.toml); this test reads the
sources themselves, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import service.routes

ROUTES = Path(service.routes.__file__).parent


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, at any depth (`from a.b import c` -> "a.b"; relative imports as written)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def sql_imports(source: str) -> set[str]:
    return {m for m in imported_modules(source) if m == "sqlalchemy" or m.startswith("sqlalchemy.")}


def test_the_check_sees_every_way_of_importing_sqlalchemy() -> None:
    source = "import sqlalchemy.orm as orm\ndef f():\n    from sqlalchemy import select\n\nimport sqlalchemyx\n"
    assert sql_imports(source) == {"sqlalchemy.orm", "sqlalchemy"}
    assert sql_imports("from indexer.catalog.queries import video_page\nimport numpy\n") == set()


def test_no_route_module_imports_sqlalchemy() -> None:
    modules = sorted(ROUTES.glob("*.py"))
    assert {p.name for p in modules} >= {"catalog.py", "system.py", "search.py", "jobs.py"}
    offenders = {p.name: found for p in modules if (found := sql_imports(p.read_text()))}
    assert offenders == {}, f"routes hold no SQL: move these modules' queries to indexer.catalog.queries: {offenders}"

"""Package layout: the folders keep the design's names, installed as one package ``phaseboard``.

``server/client/`` is ``phaseboard`` itself (what training scripts import), ``server/`` is
``phaseboard.server``, ``analysis/`` is ``phaseboard.analysis``; the templates, static files
and migrations travel as package data. No generic top-level name (``server``, ``analysis``)
is installed, so a user's own ``analysis/`` or ``server.py`` never shadows ours. Everything
else about the distribution is in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

ROOTS = {
    "phaseboard": "server/client",
    "phaseboard.server": "server",
    "phaseboard.analysis": "analysis",
}


def packages() -> list[str]:
    found = ["phaseboard.frontend", "phaseboard.migrations", "phaseboard.migrations.versions"]
    found += [f"phaseboard.frontend.{sub}" for sub in find_namespace_packages(where="frontend")]
    for name, folder in ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return sorted(p for p in set(found) if not p.startswith("phaseboard.server.client"))


setup(
    package_dir={**ROOTS, "phaseboard.frontend": "frontend", "phaseboard.migrations": "migrations"},
    packages=packages(),
    package_data={
        "phaseboard.frontend.templates": ["*.html"],
        "phaseboard.frontend.static": ["*"],
        "phaseboard.frontend.static.vendor": ["*"],
        "phaseboard.migrations": ["script.py.mako"],
    },
)

"""The one ``phaseboard`` package: light to import, never shadowed, whole in a regular install.

A user's working directory holding its own ``analysis/`` package and ``server.py`` must not
change what ``import phaseboard...`` finds, in the suite's editable install and in a regular
install of a wheel built from this tree. The regular install runs from ``pip install
--target`` with ``python -S`` and ``PYTHONPATH=<target>:<the suite's site-packages>``: the
dependencies come from the suite's venv, but ``-S`` skips its ``.pth`` files, so the editable
finder cannot answer for ``phaseboard``. There ``phaseboard up`` must serve pages (templates,
static files and migrations travel as package data).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from phaseboard.server.settings import REPO_ROOT

pytestmark = pytest.mark.slow

HEAVY = ("torch", "numpy", "sqlalchemy", "celery", "fastapi", "starlette", "pydantic",
         "transformers", "lightning", "phaseboard.server", "phaseboard.analysis")  # fmt: skip

# What a researcher's project might hold: names ours must not collide with.
USER_FILES = {
    "analysis/__init__.py": 'MARK = "user analysis"\n',
    "analysis/llc.py": 'raise ImportError("the user\'s analysis.llc was imported")\n',
    "analysis/tasks.py": 'raise ImportError("the user\'s analysis.tasks was imported")\n',
    "server.py": 'MARK = "user server"\n',
    "client.py": 'raise ImportError("the user\'s client.py was imported")\n',
}

# Imports the user's modules first (so they sit in sys.modules), then ours, then runs a tiny
# LLC estimate; prints where everything came from.
IMPORT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, math, sys
    import analysis, server
    import phaseboard, phaseboard.analysis, phaseboard.server.app, phaseboard.integrations
    import torch
    from phaseboard.analysis import LLCConfig, estimate_llc, get_task

    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = x @ torch.tensor([[1.0], [-1.0]])
    model = torch.nn.Linear(2, 1)
    loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
    cfg = LLCConfig(num_chains=2, num_draws=4, batch_size=32, lr=1e-4, num_samples=64)
    result = estimate_llc(model, loss, [(x, y)], cfg)
    print(json.dumps({
        "user": [analysis.MARK, server.MARK, sys.modules["analysis"].MARK],
        "files": {m.__name__: m.__file__ for m in (
            phaseboard, phaseboard.analysis, phaseboard.server, phaseboard.server.app,
            phaseboard.integrations)},
        "llc_finite": math.isfinite(result.mean),
        "task": type(get_task("dln", {"widths": [2, 2], "true_rank": 1})).__name__,
        "server_client": importlib.util.find_spec("phaseboard.server.client") is not None,
    }))
    """
)


def _user_dir(root: Path) -> Path:
    for rel, text in USER_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(argv: list[str], cwd: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [*argv, "-c", IMPORT_SCRIPT], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_imports(report: dict, user: Path, install: Path) -> None:
    assert report["user"] == ["user analysis", "user server", "user analysis"]
    for name, file in report["files"].items():
        path = Path(file).resolve()
        assert not path.is_relative_to(user.resolve()), f"{name} shadowed by {file}"
        assert path.is_relative_to(install.resolve()), f"{name} from {file}, not {install}"
    assert report["llc_finite"]
    assert report["task"] == "DLN"


@contextmanager
def _phaseboard_up(argv: list[str], cwd: Path, env: dict[str, str], home: Path) -> Iterator[str]:
    """Start ``phaseboard up`` (``argv``) on a new home; yield its URL; stop it afterwards."""
    port = _free_port()
    env = {**env, "PHASEBOARD_HOME": str(home), "PHASEBOARD_QUEUE": "none"}
    proc = subprocess.Popen(
        [*argv, "up", "--port", str(port)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out[-3000:])  # shown when the test fails


def _serves_pages(url: str) -> None:
    """The server migrated its new home and renders ``/`` and the assets it links."""
    deadline = time.monotonic() + 120
    while True:
        try:
            page = httpx.get(f"{url}/", timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "phaseboard up did not answer"
            time.sleep(0.2)
    assert page.status_code == 200
    assert "<html" in page.text and "Phaseboard" in page.text
    for asset in ("/static/app.css", "/static/app.js"):
        assert asset in page.text
        resp = httpx.get(url + asset, timeout=10)
        assert resp.status_code == 200 and len(resp.content) > 100, asset


def _clean_env() -> dict[str, str]:
    """This environment less anything that would point Python or Phaseboard elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PHASEBOARD_", "PYTHON")) and k != "VIRTUAL_ENV"
    }


# --- importing the client is light -------------------------------------------------------


def test_import_phaseboard_and_its_integrations_loads_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, json, phaseboard, phaseboard.integrations\n"
        "from phaseboard.integrations import __all__ as names\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


# --- the editable install (this suite's) -------------------------------------------------


def test_editable_install_is_not_shadowed_by_a_users_analysis_and_server(tmp_path: Path) -> None:
    user = _user_dir(tmp_path / "project")
    console_script = Path(sys.executable).parent / "phaseboard"  # what `pip install -e` made
    with _phaseboard_up([str(console_script)], user, _clean_env(), tmp_path / "home") as url:
        report = _run_script([sys.executable], user, _clean_env())  # while the server starts
        _serves_pages(url)
    _check_imports(report, user, REPO_ROOT)
    assert report["files"]["phaseboard"] == str(REPO_ROOT / "server" / "client" / "__init__.py")


# --- a regular install of a wheel --------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheel built from this tree (sources copied out, so the tree gets no build/),
    installed with ``pip install --target``."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for folder in ("server", "analysis", "frontend", "migrations"):
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=ignore)
    for file in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / file, src / file)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    quiet = {"capture_output": True, "text": True, "timeout": 180}
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root, src],
        **quiet,
    )  # type: ignore[call-overload]
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = root.glob("phaseboard-*.whl")
    target = root / "target"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", target, wheel], **quiet
    )  # type: ignore[call-overload]
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield target


def _wheel_env(target: Path) -> dict[str, str]:
    site_packages = sysconfig.get_paths()["purelib"]
    return {**_clean_env(), "PYTHONPATH": os.pathsep.join([str(target), site_packages])}


def test_wheel_installs_one_top_level_package(wheel_install: Path) -> None:
    top = sorted(p.name for p in wheel_install.iterdir() if p.name != "bin")
    assert top == ["phaseboard", "phaseboard-0.1.0.dist-info"]
    assert not (wheel_install / "phaseboard" / "server" / "client").exists()
    assert (wheel_install / "phaseboard" / "integrations" / "huggingface.py").is_file()
    for data in ("frontend/templates/base.html", "frontend/static/app.css",
                 "migrations/env.py", "migrations/script.py.mako"):  # fmt: skip
        assert (wheel_install / "phaseboard" / data).is_file(), data
    script = (wheel_install / "bin" / "phaseboard").read_text()
    assert "phaseboard.server.commands.cli" in script


def test_wheel_install_is_not_shadowed_and_serves_pages(
    wheel_install: Path, tmp_path: Path
) -> None:
    user = _user_dir(tmp_path / "project")
    env = _wheel_env(wheel_install)
    # The installed console script, run by this interpreter without site (no editable finder).
    up = [sys.executable, "-S", str(wheel_install / "bin" / "phaseboard")]
    with _phaseboard_up(up, user, env, tmp_path / "home") as url:
        report = _run_script([sys.executable, "-S"], user, env)
        _serves_pages(url)
    _check_imports(report, user, wheel_install)
    assert not report["server_client"]  # the client is installed once, as phaseboard


def test_analysis_surface_resolves_every_name_and_loads_torch_only_when_asked(
    tmp_path: Path,
) -> None:
    code = (
        "import sys, json, phaseboard.analysis as a\n"
        "before = 'torch' in sys.modules\n"
        "missing = [n for n in a.__all__ if getattr(a, n, None) is None]\n"
        "print(json.dumps([before, missing, 'torch' in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, [], True]

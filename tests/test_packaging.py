"""The wheel's layout: fedrec, fedrec.server, fedrec.client import from anywhere; no bare top-level packages."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Earlier tests may have started Ray, which exports PYTHONPATH with the checkout in it.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
IMPORTS = "import fedrec.server.app, fedrec.client.app, fedrec.simulations.runner, fedrec; print(fedrec.__file__)"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, env=CLEAN_ENV)
    return next(out.glob("fedrec-*.whl"))


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel installed; dependencies come from this environment via a .pth line."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=CLEAN_ENV).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=CLEAN_ENV)
    # Dependencies only: a path line adds the folder but does not run its .pth files (no editable fedrec).
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_contains_no_bare_top_level_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fedrec"}
    assert "fedrec/server/app.py" in names and "fedrec/client/app.py" in names
    assert "fedrec/simulations/conf/e1-ml100k.toml" in names


def test_installed_wheel_imports_from_elsewhere(fresh_python: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(fresh_python), "-c", IMPORTS], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env=CLEAN_ENV)
    assert str(fresh_python.parent.parent) in out.stdout


def test_installed_wheel_imports_from_the_project_root(fresh_python: Path) -> None:
    """Flower puts the app folder first on sys.path; the local fedrec/ must still expose fedrec.server."""
    subprocess.run([str(fresh_python), "-c", IMPORTS], cwd=ROOT, check=True, capture_output=True, text=True,
                   env=CLEAN_ENV)
    # The app components named in pyproject resolve from the project folder, as Flower loads them.
    code = "import importlib; [getattr(importlib.import_module(m), 'app') for m in ('server.app', 'client.app')]"
    subprocess.run([str(fresh_python), "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                   env=CLEAN_ENV)


def test_flower_loads_the_app_components_from_the_project_folder() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.server_app import LoadServerAppError
    from flwr.supercore.object_ref import load_app

    server = load_app("server.app:app", LoadServerAppError, str(ROOT))
    client = load_app("client.app:app", ValueError, str(ROOT))
    assert isinstance(server, ServerApp) and isinstance(client, ClientApp)

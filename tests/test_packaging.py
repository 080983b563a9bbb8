"""The wheel, as a user installs it: built from the source, installed without ``-e`` into a fresh environment, and
its entry points run from a directory that holds nothing of the checkout (what CI checks, through ``make test``).

The fresh environment is a virtual environment of its own (its prefix, ``bin/`` and site-packages, where the wheel
goes) that also sees the packages of the interpreter running the tests, through a ``.pth`` file naming that
interpreter's site-packages: torch and the rest are not installed again, and this works alike when the tests run
in a virtual environment, a conda environment or a system interpreter (a venv's ``--system-site-packages`` would
show the *base* interpreter's packages instead, without what the running environment installed). The wheel is
built without build isolation (setuptools from the ``dev`` extra), so nothing is downloaded at all.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what a wheel is built from (the rest of the checkout stays out, so the wheel cannot lean on it)
SOURCES = ("pyproject.toml", "README.md", "detloss", "configs", "hydra_plugins")


def listed_packages() -> list[str]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_package_of_detloss_is_listed_in_pyproject():
    # detloss's, and its Hydra plugin's under the namespace package hydra_plugins (no __init__.py of its own: other
    # plugins share it), which is listed too so that an editable install puts it on hydra_plugins' path
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("detloss", "hydra_plugins")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()
    assert found | {"detloss.configs", "hydra_plugins"} == set(listed_packages())


def clean_env() -> dict[str, str]:
    """This environment without anything that would put the checkout on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(*cmd, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def site_dirs() -> list[str]:
    """The folders the running interpreter takes its installed packages from: the site-packages of its environment
    (and of its base, where a venv includes those), and the user's where that is on."""
    dirs = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def fresh_environment(where: Path, env: dict[str, str]) -> Path:
    """A virtual environment at ``where`` that sees the running interpreter's packages after its own; its python.

    A ``.pth`` line in its site-packages runs ``site.addsitedir`` on each of :func:`site_dirs` at start-up, so their
    own ``.pth`` files are processed as the running interpreter processes them.
    """
    venv.create(where, with_pip=False)  # pip too comes from the running interpreter's packages
    python = where / "bin" / "python"
    own = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=where, env=env).stdout.strip()
    lines = "; ".join(f"site.addsitedir({d!r})" for d in site_dirs())
    (Path(own) / "detloss_test_packages.pth").write_text(f"import site; {lines}\n")
    return python


def check_build_backend() -> None:
    """The wheel is built without build isolation, by the setuptools of this environment (``dev`` extra)."""
    try:
        found = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        found = "none"
    if found == "none" or tuple(int(part) for part in found.split(".")[:2]) < (70, 1):
        pytest.fail(f"building the wheel needs setuptools >= 70.1 here, found {found}: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment with the wheel installed (not editable); its ``bin`` folder and environment."""
    check_build_backend()
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    env = clean_env()
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
        cwd=source, env=env)  # fmt: skip
    wheel = next((tmp / "dist").glob("detloss-*.whl"))
    python = fresh_environment(tmp / "env", env)
    run(python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", wheel, cwd=tmp, env=env)
    return python.parent, env


def test_the_wheel_carries_the_configs_and_its_entry_points_run_from_anywhere(installed, tmp_path):
    bin_dir, env = installed
    where = run(bin_dir / "python", "-c", "import detloss, detloss.config as c; print(detloss.__file__); "
                "print(c.CONFIG_SOURCE); print(c.CONFIG_DIR)", cwd=tmp_path, env=env).stdout.split()  # fmt: skip
    assert Path(where[0]).is_relative_to(bin_dir.parent), where  # the wheel's detloss, not the checkout's
    assert where[1] == "pkg://detloss.configs" and (Path(where[2]) / "loss" / "yolo.yaml").is_file()

    run(bin_dir / "detloss-train", "++trainer.fast_dev_run=true", "data.num_train=16", "data.num_val=8",
        "data.image_size=64", "callbacks=none", "logger=none", "hydra.run.dir=run", cwd=tmp_path, env=env)  # fmt: skip
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "ok" and "val/map_50" in record["metrics"]
    for entry in ("detloss-eval", "detloss-predict"):  # Hydra's help composes the config and lists the groups
        shown = run(bin_dir / entry, "--help", cwd=tmp_path, env=env).stdout
        assert "== Configuration groups ==" in shown and "yolo_vfl" in shown and "ckpt_path" in shown, shown
    assert "usage" in run(bin_dir / "detloss-report", "--help", cwd=tmp_path, env=env).stdout
    # the wheel's Optuna sweeper plugin is found by Hydra (its config group lists it)
    shown = run(bin_dir / "detloss-train", "--hydra-help", cwd=tmp_path, env=env).stdout
    assert "detloss_optuna" in shown, shown
    assert not (tmp_path / "outputs").exists()

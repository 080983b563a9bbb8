"""The documentation site (``mkdocs.yml``, ``docs/``) builds with ``--strict``: a broken link or anchor, a page
left out of the navigation and an API object that mkdocstrings cannot find fail the build; and no built page asks
the network for anything."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: the packages whose API reference pages the site must hold, one page each
PACKAGES = ("losses", "composite", "detection", "segmentation", "models", "data", "tasks", "plan", "report")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
           "--site-dir", str(out)]  # fmt: skip
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def test_the_site_builds_strictly_with_a_page_per_package(site):
    for name in PACKAGES:
        page = (site / "reference" / name / "index.html").read_text()
        assert f'id="detloss.{name}' in page, name  # mkdocstrings rendered the package's objects
    entry = (site / "reference" / "entry_points" / "index.html").read_text()
    for module in ("detloss.train", "detloss.eval", "detloss.predict", "detloss.plan.cli", "detloss.report.cli"):
        assert f'id="{module}"' in entry, module


def test_a_fused_loss_page_links_its_reference_form(site):
    page = (site / "reference" / "losses" / "index.html").read_text()
    fused = ("bce_with_logits", "focal_loss", "varifocal_loss", "quality_focal_loss", "cross_entropy", "dfl_loss",
             "dice_loss", "generalized_dice_loss", "tversky_loss", "focal_tversky_loss", "jaccard_loss")  # fmt: skip
    for name in fused:
        assert f'href="#detloss.losses.reference.{name}"' in page, name
        assert f'id="detloss.losses.reference.{name}"' in page, name


def test_sphinx_roles_in_docstrings_render_as_code_or_links(site):
    """Docstrings cite other objects with Sphinx roles (``:func:`dice_loss```); the site shows them as code, linked
    where the object has a page (tools/griffe_sphinx_roles.py), never as the raw role."""
    role = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`")
    for page in (site / "reference").rglob("*.html"):
        assert not role.findall(page.read_text()), page.relative_to(site)
    losses = (site / "reference" / "losses" / "index.html").read_text()
    assert re.search(r'<a class="autorefs[^"]*"[^>]*href="[^"]*#detloss\.[^"]+"[^>]*><code>', losses)


#: an attribute that makes the browser fetch something: a script, a style sheet, a font, an image, a frame
FETCH = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"", re.I)


def test_no_page_loads_anything_from_the_network(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        text = page.read_text()
        assert not FETCH.findall(text), (page.relative_to(site), FETCH.findall(text))
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page.relative_to(site)
    for sheet in site.rglob("*.css"):
        assert not re.search(r"@import\s+url\((?:https?:)?//", sheet.read_text()), sheet.relative_to(site)


def readme_commands() -> list[list[str]]:
    """The arguments of every ``detloss.train`` command in the README's shell blocks (``torchrun ... -m
    detloss.train`` too), continuation lines joined, comments dropped; commands with a placeholder left out."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" #")[0])
        if "detloss.train" not in words or any(mark in line for mark in ("DIR", "...", "<")):
            continue
        commands.append(words[words.index("detloss.train") + 1 :])
    return commands


def sweep_points(args: list[str]) -> list[list[str]]:
    """A multirun's command line as the single runs it launches (each comma-separated value in turn)."""
    runs = [[]]
    for arg in args:
        if arg == "-m":
            continue
        key, _, values = arg.partition("=")
        choices = values.split(",") if "," in values and not values.startswith(("[", "{")) else [values]
        runs = [run + [f"{key}={value}" if _ else key] for run in runs for value in choices]
    return runs


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) > 10
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_training_command_of_the_readme_composes(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 10  # the headline commands are all there
    for args in commands:
        for run in sweep_points(args):
            cfg = compose_config(f"paths.output_dir={tmp_path}", *run, return_hydra_config=True)
            assert cfg.task_name in ("detection", "segmentation", "volumetric", "brats"), run

"""The shipped configs: where Hydra finds them, and the resolvers they use.

Where: in a checkout the configs live at the repository's top level (``configs/``); a wheel installs them as the
package ``detloss.configs`` (``pyproject.toml`` maps the folder), which Hydra reads by package,
``pkg://detloss.configs``. :data:`CONFIG_SOURCE` is what the entry points hand to ``hydra.main``, and
:data:`CONFIG_DIR` the folder on disk. A user's own config folder joins them with ``--config-dir DIR`` (or
``hydra.searchpath=[file://DIR]``): its ``loss/``, ``model/``, ``data/`` ... options sit beside the shipped ones.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONFIG_DIR", "CONFIG_SOURCE"]

_ROOT = Path(__file__).resolve().parents[1]


def _in_checkout() -> bool:
    """Whether this detloss runs from its source tree (a checkout, installed editable or on ``PYTHONPATH``)."""
    pyproject = _ROOT / "pyproject.toml"
    in_repository = (_ROOT / "configs" / "train.yaml").is_file() and pyproject.is_file()
    return in_repository and 'name = "detloss"' in pyproject.read_text(encoding="utf-8")


if _in_checkout():
    CONFIG_DIR = _ROOT / "configs"
    CONFIG_SOURCE = str(CONFIG_DIR)
else:  # an installed wheel: the package detloss.configs
    from importlib.resources import files

    CONFIG_DIR = Path(str(files("detloss.configs")))
    CONFIG_SOURCE = "pkg://detloss.configs"

# ``${detloss_or:a,b}``: ``a`` unless it is null, else ``b`` (``oc.select`` falls back for missing keys only);
# configs/hydra/default.yaml uses it to put a run resumed with ``resume=RUN_DIR`` back into RUN_DIR.
# ``${detloss_set:a}``: whether ``a`` is not null.
if not OmegaConf.has_resolver("detloss_or"):
    OmegaConf.register_new_resolver("detloss_or", lambda value, default: default if value is None else value)
if not OmegaConf.has_resolver("detloss_set"):
    OmegaConf.register_new_resolver("detloss_set", lambda value: value is not None)

# The shipped Hydra configs. The wheel installs this folder as the package `detloss.configs` (pyproject.toml maps
# it), which is how Hydra finds it there: `pkg://detloss.configs`; this file makes it a package.

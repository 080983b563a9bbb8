# The whole set-up of a fresh machine is `make train` (the main job) or `make test` (the tests).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -e ".[dev]"
# torchvision's C++ ops must load against the installed torch (see docs/getting_started.md)
CHECK_TORCHVISION = $(PYTHON) -c "import torch, torchvision.ops as o; o.nms(torch.rand(1, 4), torch.rand(1), 0.5)" \
	|| { echo "torchvision's ops do not load against this torch; reinstall the pair: see docs/getting_started.md"; exit 1; }

.PHONY: install lint train test test-slow fuzz-long bench docs

install:
	$(PIP_INSTALL)
	@$(CHECK_TORCHVISION)

train: install
	$(PYTHON) -m detloss.train

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	$(PYTHON) -m pytest

test-slow: install
	$(PYTHON) -m pytest -m slow

# the fuzzer's long profile: at least 10,000 random examples per property (tests/losses/test_fuzz.py)
fuzz-long: install
	$(PYTHON) -m pytest -m slow tests/losses/test_fuzz.py

bench: install
	$(PYTHON) tools/bench_losses.py

# the documentation site (mkdocs.yml) into build/site/; --strict fails on a broken link or a missing API object
docs: install
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir build/site

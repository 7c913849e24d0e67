# The two commands a new user runs: `make demo` and `make test`.
# Each bootstraps .venv when missing: the pinned torch pair first (an unpinned torch
# lets the resolver pick one), then this project with its dev extra.
#
# On a GPU cluster keep your own torch:  make test USE_SYSTEM_TORCH=1
# (the venv then sees the interpreter's site-packages and no torch is installed).

PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.replk-installed
PYTEST_ARGS ?=
# CI's lock (exact proven versions, torch excepted); `make test LOCK=` installs the ranges instead.
LOCK ?= .ci/constraints.txt
LOWER := .venv-lower
# img2dataset in a venv of its own, as its users run it: it pins webdataset<0.3, which this project's
# webdataset>=1.0 excludes from one environment. The adopt tests run it for real (~40 s, 0.8 GB).
IMG2DATASET := .venv-img2dataset
IMG2DATASET_PIN ?= img2dataset==1.47.0

.PHONY: demo test lint bench clean-venv lower-bounds

$(STAMP): setup.py $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(if $(USE_SYSTEM_TORCH),--system-site-packages) $(VENV)
	$(if $(USE_SYSTEM_TORCH),@echo "keeping the interpreter's own torch",$(BIN)/pip install --quiet $(TORCH_PIN))
	$(BIN)/pip install --quiet -e '.[dev,tracking]' $(if $(LOCK),-c $(LOCK))
	@touch $@

# The whole pipeline on scikit-learn's digits, on this machine, in about 11-13 minutes on 2 cores:
# shards on a local SeaweedFS S3 server -> a RepLKNet teacher per task, trained on its human labels and exported -> pseudo-labels -> multi-task
# RepLKNet pretraining (DeepSpeed, 2 processes) -> fine-tuning -> evaluation -> export -> ERF.
# `make demo DEMO_ARGS=--local` keeps everything in a local folder instead of S3.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python -m pretrain.apps.demo --out runs/demo $(DEMO_ARGS)

$(IMG2DATASET)/.installed:
	@test -x $(IMG2DATASET)/bin/python || $(PYTHON) -m venv $(IMG2DATASET)
	$(IMG2DATASET)/bin/pip install --quiet $(IMG2DATASET_PIN)
	@touch $@

test: $(STAMP) $(IMG2DATASET)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# pyflakes' and pycodestyle's errors and import order (pyproject.toml [tool.ruff]); seconds.
lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/reparam.py --channels-last

# The lower bounds setup.py declares really work: the lowest allowed versions (.ci/lower-bounds.txt)
# beside the pinned torch, in their own venv, against the unit tier (the fast tests that touch every
# dependency's API). CI runs it after `make test`. The pinned torch (3 GB with its CUDA libraries)
# is borrowed from .venv rather than installed twice: a .pth line puts .venv's site-packages after
# .venv-lower's own, so everything pinned here shadows .venv's version (pip installs it here and
# leaves .venv alone: "outside environment").
lower-bounds: $(STAMP)
	@test -x $(LOWER)/bin/python || $(PYTHON) -m venv $(LOWER)
	$(LOWER)/bin/python -c "import sysconfig; print(sysconfig.get_paths(vars={'base': '$(abspath $(VENV))', 'platbase': '$(abspath $(VENV))'})['purelib'])" \
	  > "$$($(LOWER)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-pinned-torch-from-venv.pth"
	$(LOWER)/bin/pip install --quiet -e '.[dev]' $(TORCH_PIN) -c .ci/lower-bounds.txt
	$(LOWER)/bin/python -m pytest tests/unit -q -m 'not slow' -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV) $(LOWER) $(IMG2DATASET)

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

.PHONY: demo test bench clean-venv

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(if $(USE_SYSTEM_TORCH),--system-site-packages) $(VENV)
	$(if $(USE_SYSTEM_TORCH),@echo "keeping the interpreter's own torch",$(BIN)/pip install --quiet $(TORCH_PIN))
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Until the full demo lands: a synthetic two-task image set is packed into shards with a
# label store, then two DeepSpeed ZeRO-2 ranks pretrain a toy RepLKNet on it with
# pretrain/run.py (CPU with gloo, or two GPUs with nccl), then the model table.
demo: $(STAMP)
	$(BIN)/python -m pretrain.tiny_data runs/tiny_data
	rm -rf runs/tiny_cpu
	OMP_NUM_THREADS=1 $(BIN)/deepspeed --num_gpus 2 pretrain/run.py --config configs/tiny_cpu.json
	$(BIN)/replk-models

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/reparam.py --channels-last

clean-venv:
	rm -rf $(VENV)

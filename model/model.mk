# model/: PyTorch reference of PneumoLLM and its ONNX exporter.
# Included by the root Makefile; alone: `make -f model/model.mk test-model`.
# torch is large (about 5.5 GB installed with its CUDA runtime wheels): it lives
# in its own virtual environment and is never part of `make test`.

MODEL_VENV := .venv-model
MODEL_PY := $(MODEL_VENV)/bin/python
MODEL_STAMP := $(MODEL_VENV)/.installed

.PHONY: test-model demo-model model-venv

$(MODEL_STAMP): model/requirements.txt
	[ -x $(MODEL_PY) ] || python3 -m venv $(MODEL_VENV)
	$(MODEL_PY) -m pip install -q --disable-pip-version-check -r model/requirements.txt
	@touch $@

model-venv: $(MODEL_STAMP)

test-model: $(MODEL_STAMP)
	cd model && ../$(MODEL_PY) -m pytest

demo-model: $(MODEL_STAMP)
	$(MODEL_PY) model/make_demo.py

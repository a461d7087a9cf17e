# mcugpt: `make run` and `make test` set up everything they need (a venv in .venv/).
#
#   make run          compile MODEL into build/MODEL and generate TOKENS tokens from PROMPT
#   make test         the whole pytest suite (what CI runs)
#   make flash-image  compile MODEL: build/MODEL/{model.onnx,plan.json,flash.img,include/}
#   make clean        remove build/ (keeps the venv); `make distclean` removes the venv too
#
# Variables: MODEL (gpt2, distilgpt2, gpt2-medium, tiny), RAM (e.g. 4MiB), PROMPT, TOKENS.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODEL  ?= gpt2
RAM    ?= 64MiB
PROMPT ?= The staged method runs a language model on a microcontroller by
TOKENS ?= 16
BUILD  := build/$(MODEL)

.PHONY: run test flash-image clean distclean venv toolchain

venv: $(VENV)/.installed

# Reinstall when the dependency list changes; the package itself is installed editable.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The default C compiler is the pip-installed zig (in the venv). arm-none-eabi-gcc must work
# too: as root (CI) it is installed from Debian's packages when missing.
toolchain:
	@command -v arm-none-eabi-gcc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q gcc-arm-none-eabi >/dev/null || \
	    { apt-get update -q >/dev/null && apt-get install -y -q gcc-arm-none-eabi >/dev/null; }; \
	  else echo "note: arm-none-eabi-gcc not found; its tests will be skipped"; fi; }

flash-image: $(VENV)/.installed
	$(BIN)/mcugpt compile --model $(MODEL) --ram $(RAM) --out $(BUILD)

run: flash-image
	@echo "--- numpy reference (the tokens the emulated board must produce) ---"
	$(BIN)/mcugpt reference --model $(MODEL) --prompt "$(PROMPT)" --tokens $(TOKENS)
	@echo "--- emulated Cortex-M7 board: not yet (the runtime and emulator arrive next) ---"

test: $(VENV)/.installed toolchain
	$(BIN)/python -m pytest -q

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)

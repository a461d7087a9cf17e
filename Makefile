# mcugpt: `make run` and `make test` set up everything they need (a venv in .venv/).
#
#   make run          compile MODEL into build/MODEL (if needed), generate TOKENS tokens from
#                     PROMPT on the emulated board, check them against the numpy reference
#   make test         the whole pytest suite (what CI runs)
#   make flash-image  compile MODEL: build/MODEL/{model.onnx,plan.json,flash.img,include/}
#   make fuzz         the long fuzz campaign (docs/reliability.md): 13,000 cases on the tiny
#                     model (about 30 minutes), SEED=N for another; exits 1 naming failures
#   make clean        remove build/ (keeps the venv); `make distclean` removes the venv too
#
# Variables: MODEL (gpt2, distilgpt2, gpt2-medium, tiny), BOARD (sim64, stm32h7s78-dk,
#            stm32h735g-dk: `mcugpt fit` says which fit), DTYPE (fp32, int8), RAM (default:
#            the board's SRAM), PROMPT, TOKENS.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODEL  ?= gpt2
BOARD  ?= sim64
DTYPE  ?= fp32
RAM    ?=
PROMPT ?= The staged method runs a language model on a microcontroller by
TOKENS ?= 16
BUILD  := build/$(MODEL)$(if $(filter-out sim64,$(BOARD)),-$(BOARD))$(if $(filter-out fp32,$(DTYPE)),-$(DTYPE))
COMPILE_FLAGS := --model $(MODEL) --board $(BOARD) --dtype $(DTYPE) $(if $(RAM),--ram $(RAM))

.PHONY: run test flash-image fuzz clean distclean venv toolchain

venv: $(VENV)/.installed

# Reinstall when the dependency list changes; the package itself is installed editable.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The default C compiler is the pip-installed zig (in the venv). The tests also use Debian's
# arm-none-eabi-gcc (the second supported compiler), llvm (llvm-mca, LLVM's Cortex-M7
# timing model, and llvm-objdump) and gdb-multiarch (`mcugpt run --gdb`, docs/debugging.md):
# as root (CI) they are installed when missing.
toolchain:
	@for need in arm-none-eabi-gcc:gcc-arm-none-eabi llvm-mca:llvm gdb-multiarch:gdb-multiarch; do \
	  cmd=$${need%%:*}; pkg=$${need##*:}; \
	  command -v $$cmd >/dev/null || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get install -y -q $$pkg >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkg >/dev/null 2>&1; } || \
	      echo "note: could not install $$pkg; the tests that need $$cmd will be skipped"; \
	    else echo "note: $$cmd not found (Debian package $$pkg); its tests will be skipped"; fi; }; \
	done

flash-image: $(VENV)/.installed
	$(BIN)/mcugpt compile $(COMPILE_FLAGS) --out $(BUILD)

# Compile (weights, ONNX, stages, plan, flash image, firmware) only when something changed,
# then generate on the emulated board and compare with the numpy reference (--check).
run: $(BUILD)/firmware.elf
	$(BIN)/mcugpt run --build $(BUILD) --prompt "$(PROMPT)" --tokens $(TOKENS) --check

$(BUILD)/firmware.elf: $(VENV)/.installed $(wildcard target/*.py compiler/*.py compiler/templates/* runtime_c/* models/*)
	$(BIN)/mcugpt compile $(COMPILE_FLAGS) --out $(BUILD)

SEED ?= 0
fuzz: $(VENV)/.installed
	$(BIN)/mcugpt fuzz --seed $(SEED) --images 10000 --checkpoints 1000 --cli 2000 --out build/fuzz

test: $(VENV)/.installed toolchain
	$(BIN)/python -m pytest -q

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)

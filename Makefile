# Two commands do all set-up on a fresh machine:
#   make demo   - creates .venv, builds the C++ engine, runs the whole pipeline on the bundled data
#   make test   - creates .venv, builds, runs the C++ tests (ASan+UBSan) and the Python tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.engine-built
CPP    := $(wildcard cpp/src/*.cpp cpp/include/exposure/*.hpp) CMakeLists.txt pyproject.toml

.PHONY: all venv build test test-cpp test-py demo bench clean
all: build

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	# On a GPU machine install the CUDA torch you need first; this line then does nothing.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake xxhash
	$(BIN)/pip install -q --no-build-isolation -e ".[eval,test]"
	touch $@

$(BUILT): $(DEPS) $(CPP)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(DEPS)
build: $(BUILT)

test: test-cpp test-py

test-cpp: $(DEPS)
	cmake -S . -B build/cpp-tests -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN))/ninja \
	  -DEXPOSURE_BUILD_PYTHON=OFF -DEXPOSURE_BUILD_TESTS=ON -DEXPOSURE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
	cmake --build build/cpp-tests
	cd build/cpp-tests && ctest --output-on-failure

test-py: $(BUILT)
	$(BIN)/python -m pytest -q

demo: $(BUILT)
	$(BIN)/exposure demo

bench: $(BUILT)
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf build $(VENV) runs

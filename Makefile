# BronchOpt ROS: the two commands of the README.
#   make demo   set up (first run only) and run the main job on a synthetic procedure, no GPU
#   make test   set up (first run only) and run the test suite
# Setup = .venv/ (Python deps from the registries, torch pinned to the CPU build, ROS 2 kilted from
# the ros-kilted-* wheels) + bronchopt_msgs (and tf2_msgs when none is found) built into .overlay/.
# Every step leaves a stamp file, so a second run only checks stamps (seconds).

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
OVERLAY := $(CURDIR)/.overlay
PYVER := $(shell $(PYTHON) -c "import sys; print('%d.%d' % sys.version_info[:2])")
BUILD := $(CURDIR)/build/overlay
REQS := requirements/constraints.txt requirements/core.txt requirements/ros.txt \
        requirements/ros-build.txt requirements/test.txt
MSGS_SRC := $(wildcard bronchopt_msgs/msg/*.msg bronchopt_msgs/srv/*.srv) \
            bronchopt_msgs/CMakeLists.txt bronchopt_msgs/package.xml cmake/pypi_wheels_fix.cmake
# Run anything inside the activated venv (activation exports the overlay's paths).
IN_VENV := source $(VENV)/bin/activate &&
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test test-all bench clean distclean help

help:
	@echo "make demo   - set up and run the navigator on a synthetic procedure (CPU)"
	@echo "make test   - set up and run the test suite (slow/bench tests excluded)"
	@echo "make test-all - also the slow tests;  make bench - the benchmarks"

setup: $(VENV)/.deps.stamp $(VENV)/.package.stamp $(OVERLAY)/.msgs.stamp $(VENV)/.activate.stamp

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps.stamp: $(REQS) | $(PY)
	@echo ">> installing Python and ROS 2 (kilted wheels) dependencies into $(VENV)"
	$(PIP) install -q -c requirements/constraints.txt \
	  -r requirements/core.txt -r requirements/ros.txt -r requirements/ros-build.txt -r requirements/test.txt
	@touch $@

$(VENV)/.package.stamp: setup.py setup.cfg $(VENV)/.deps.stamp
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@

# bronchopt_msgs (+ tf2_msgs only when no tf2_msgs is importable) -> .overlay/
$(OVERLAY)/.msgs.stamp: $(MSGS_SRC) $(VENV)/.deps.stamp
	@echo ">> building bronchopt_msgs into .overlay/"
	@source $(VENV)/bin/activate && export CMAKE_PREFIX_PATH=$$VIRTUAL_ENV AMENT_PREFIX_PATH=$(OVERLAY):$$VIRTUAL_ENV && \
	build_pkg() { \
	  cmake -S $$1 -B $(BUILD)/$$2 -DCMAKE_INSTALL_PREFIX=$(OVERLAY) -DPython3_EXECUTABLE=$$VIRTUAL_ENV/bin/python \
	    -DCMAKE_PROJECT_INCLUDE=$(CURDIR)/cmake/pypi_wheels_fix.cmake -DBUILD_TESTING=OFF \
	    -DCMAKE_BUILD_TYPE=Release > $(BUILD)/$$2.log 2>&1 \
	  && make -C $(BUILD)/$$2 install -j2 >> $(BUILD)/$$2.log 2>&1 \
	  || { tail -40 $(BUILD)/$$2.log; echo "building $$2 failed, full log: $(BUILD)/$$2.log"; exit 1; }; }; \
	mkdir -p $(BUILD) && \
	if ! python -c "import tf2_msgs.msg" 2>/dev/null && [ ! -d $(OVERLAY)/share/tf2_msgs ]; then \
	  echo ">> no tf2_msgs found: building the stand-in (third_party/tf2_msgs)"; build_pkg third_party/tf2_msgs tf2_msgs; fi && \
	build_pkg bronchopt_msgs bronchopt_msgs
	@touch $@

# `. .venv/bin/activate` alone makes rclpy, bronchopt_msgs and the CLI usable.
$(VENV)/.activate.stamp: $(VENV)/.deps.stamp
	@sed -i '/# >>> bronchopt overlay >>>/,/# <<< bronchopt overlay <<</d' $(VENV)/bin/activate
	@printf '%s\n' \
	  '# >>> bronchopt overlay >>>' \
	  '# Added by the bronchopt_ros Makefile: the ROS 2 prefix is this venv, the overlay holds bronchopt_msgs.' \
	  'export AMENT_PREFIX_PATH="$(OVERLAY):$$VIRTUAL_ENV"' \
	  'export CMAKE_PREFIX_PATH="$(OVERLAY):$$VIRTUAL_ENV"' \
	  'export PYTHONPATH="$(OVERLAY)/lib/python$(PYVER)/site-packages$${PYTHONPATH:+:$$PYTHONPATH}"' \
	  'export LD_LIBRARY_PATH="$(OVERLAY)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"' \
	  'export RMW_IMPLEMENTATION="$${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"' \
	  '# <<< bronchopt overlay <<<' >> $(VENV)/bin/activate
	@touch $@

demo: setup
	$(IN_VENV) bronchopt navigate --demo --multi-process $(DEMO_ARGS)

test: setup
	$(IN_VENV) python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(IN_VENV) python -m pytest -m "not bench" $(PYTEST_ARGS)

bench: setup
	$(IN_VENV) python -m pytest -m bench $(PYTEST_ARGS)

clean:
	rm -rf build $(OVERLAY) .pytest_cache

distclean: clean
	rm -rf $(VENV)

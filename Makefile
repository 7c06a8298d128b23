# insta-rs. Set-up and everyday commands first, then the studies behind the numbers in README.md and docs/,
# one commented block per study. `make demo` and `make test` are all a fresh machine needs.
#   make install        .venv with the package and its test tools (`pip install -e '.[dev]'`)
#   make demo           train and certify on the embedded digits data, print the comparison
#   make test           the test suite (test-quick: without the end-to-end runs)
#   make check-gpu      every GPU path once, one line each (docs/gpu.md); refuses without CUDA
#   make bench          the speed figures (bench-sequential: sequential against fixed sampling)
#   make results-digits / results-cifar-jpg   the headline results; the studies below
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: install demo test test-quick check-gpu bench bench-sequential clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# an editable install from pyproject.toml needs pip >= 21.3 (Python 3.10.0-3.10.2 ship an older one); a newer pip
# is only fetched then (`--upgrade pip` would fetch the latest on every fresh install)
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet 'pip>=21.3'
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# One small CNN trained across sigma {0.12, 0.25, 0.5, 1.0} on the embedded digits data (20 epochs), every 6th
# test input (60 of 360) certified at n = 10,000, alpha = 0.001 with three rules on that same model: Cohen's
# fixed sigma 0.25 (sound), the semi-elastic rule (sound) and the Insta-RS search (instance, 64 draws per
# evaluated sigma); one table,
# one overlaid plot (outputs/demo/compare.png) and the search's per-input sigmas
# (outputs/demo/certify/insta_rs/sigma_hist.png). tests/test_demo.py runs this recipe at tiny size.
DEMO := outputs/demo
DEMO_CERT := certify=demo logger=none print_config=false ckpt_path=$(DEMO)/train/checkpoints/last.ckpt
demo: install
	rm -rf $(DEMO)
	$(PY) train.py experiment=demo logger=csv print_config=false hydra.run.dir=$(DEMO)/train
	$(PY) certify.py $(DEMO_CERT) sigma_search=fixed sigma_search.sigma=0.25 hydra.run.dir=$(DEMO)/certify/fixed
	$(PY) certify.py $(DEMO_CERT) sigma_search=semi_elastic sigma_search.sigma_b=0.25 hydra.run.dir=$(DEMO)/certify/semi_elastic
	$(PY) certify.py $(DEMO_CERT) sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(DEMO)/certify/insta_rs
	$(PY) -m insta_rs.compare $(DEMO)/certify/fixed $(DEMO)/certify/semi_elastic $(DEMO)/certify/insta_rs --out $(DEMO)

# two workers (pytest-xdist): the suite's work is single-threaded, so they use both cores of a 2-core machine;
# --dist loadscope keeps a module's trained runs in one worker
test: install
	$(PY) -m pytest -q -n 2 --dist loadscope tests

test-quick: install
	$(PY) -m pytest -q -n 2 --dist loadscope -m "not slow" tests

# Each GPU path through the real entry points at tiny size, one PASS / FAIL / SKIP line per path (docs/gpu.md).
check-gpu: install
	$(PY) -m insta_rs.check_gpu

# The speed figures ("Speed and scale"): certification against a naive loop and the bare forward pass, the
# Insta-RS search's cost, and the CIFAR models' throughput side by side; each printout kept in outputs/bench.
B := outputs/bench
bench: install
	mkdir -p $(B)
	$(PY) -m insta_rs.bench certify --model small_cnn --n 10000 --threads 1 | tee $(B)/certify_small_cnn_1.txt
	$(PY) -m insta_rs.bench certify --model small_cnn --n 10000 --threads 2 | tee $(B)/certify_small_cnn_2.txt
	$(PY) -m insta_rs.bench certify --model cifar_resnet20 --n 2000 --threads 1 | tee $(B)/certify_cifar_resnet20.txt
	$(PY) -m insta_rs.bench search --n 100000 | tee $(B)/search.txt
	$(PY) -m insta_rs.bench throughput --models cifar_resnet20,cifar_vgg --n 10000 | tee $(B)/throughput.txt

# Sequential against fixed certification, alpha = 0.001, the same 200 inputs each way: digits (small CNN,
# Gaussian sigma 0.25, 30 epochs; n = 100,000) and the CIFAR-10 JPEG subset (cifar_vgg at sigma 0.25, every
# 10th test image; n = 10,000). The default bound (union) was chosen on synthetic draws (tests/test_sequential.py).
bench-sequential: install
	mkdir -p $(B)
	$(PY) train.py experiment=digits_results train.sigma=0.25 hydra.run.dir=$(B)/digits_train
	$(PY) -m insta_rs.bench sequential --ckpt $(B)/digits_train/checkpoints/last.ckpt --rows 200 --n 100000 --batch-size 2000 | tee $(B)/sequential_digits.txt
	$(PY) train.py experiment=cifar_jpg_results model=cifar_vgg train.sigma=0.25 train.epochs=20 train.lr=0.1 hydra.run.dir=$(B)/cifar_vgg_train
	$(PY) -m insta_rs.bench sequential --ckpt $(B)/cifar_vgg_train/checkpoints/last.ckpt --skip 10 --rows 200 --n 10000 --bound union | tee $(B)/sequential_cifar_jpg.txt

clean:
	rm -rf outputs multirun .pytest_cache

comma := ,
empty :=
space := $(empty) $(empty)
# $(call ckpts,DIR,0 1 2): DIR/0/checkpoints/last.ckpt,DIR/1/...: the checkpoints of a multirun's jobs
ckpts = $(subst $(space),$(comma),$(foreach i,$(2),$(1)/$(i)/checkpoints/last.ckpt))
# $(call selectors,DIR,0 1): DIR/0/selector.pt,DIR/1/selector.pt
selectors = $(subst $(space),$(comma),$(foreach i,$(2),$(1)/$(i)/selector.pt))
# $(call levers,STUDY,KNOWN): the recipes lever-STUDY-NAME of each NAME in LEVERS, after checking the names
define levers
$(if $(filter-out $(2),$(LEVERS)),$(error LEVERS="$(LEVERS)": the $(1) levers are $(2)))$(foreach lever,$(LEVERS),$(lever-$(1)-$(lever))$(newline))
endef
define newline


endef

# ---- Study: digits, fixed sigma, baselines and the instance-wise methods (headline) ----------------------------
# Every model 30 epochs (conf/experiment/digits_results.yaml); every 2nd test input (180 of 360) certified at
# n0 = 100, n = 10,000, alpha = 0.001; one comparison. About 30 minutes on 2 CPU cores.
.PHONY: results-digits
R := outputs/results/digits
CERT := certify.n=10000 certify.batch_size=2000 certify.skip=2 certify.progress=false logger=none
results-digits: install
	rm -rf $(R)
	$(PY) train.py -m experiment=digits_results train.sigma=0.12,0.25,0.5,1.0 hydra.sweep.dir=$(R)/train/gaussian
	$(PY) train.py experiment=digits_results 'train.sigma=[0.12,0.25,0.5,1.0]' hydra.run.dir=$(R)/train/across_sigmas
	$(PY) train.py -m experiment=digits_results train=consistency,macer train.sigma=0.25 hydra.sweep.dir=$(R)/train/baselines
	$(PY) train.py experiment=digits_results train=insta_rs hydra.run.dir=$(R)/train/insta_rs
	$(PY) certify.py -m $(CERT) ckpt_path=$(call ckpts,$(R)/train/gaussian,0 1 2 3),$(call ckpts,$(R)/train/baselines,0 1) hydra.sweep.dir=$(R)/certify/fixed
	$(PY) certify.py -m $(CERT) ckpt_path=$(R)/train/across_sigmas/checkpoints/last.ckpt sigma_search=grid,cascade hydra.sweep.dir=$(R)/certify/across_sigmas/sound
	$(PY) certify.py $(CERT) ckpt_path=$(R)/train/across_sigmas/checkpoints/last.ckpt sigma_search=semi_elastic sigma_search.sigma_b=0.25 hydra.run.dir=$(R)/certify/across_sigmas/semi_elastic
	$(PY) certify.py $(CERT) ckpt_path=$(R)/train/across_sigmas/checkpoints/last.ckpt sigma_search=insta_rs certify.consistency=memory hydra.run.dir=$(R)/certify/across_sigmas/insta_rs
	$(PY) certify.py -m $(CERT) ckpt_path=$(R)/train/insta_rs/checkpoints/last.ckpt sigma_search=fixed,insta_rs,grid hydra.sweep.dir=$(R)/certify/insta_rs_train
	$(PY) train.py train=selector base_ckpt=$(R)/train/insta_rs/checkpoints/last.ckpt logger=csv hydra.run.dir=$(R)/train/selector
	$(PY) certify.py $(CERT) ckpt_path=$(R)/train/insta_rs/checkpoints/last.ckpt sigma_search=selector sigma_search.ckpt_path=$(R)/train/selector/selector.pt hydra.run.dir=$(R)/certify/insta_rs_train/selector
	$(PY) -m insta_rs.compare $(R)/certify $(R)/certify/across_sigmas/insta_rs/certify_memory.tsv --out $(R)

# ---- Study: which CIFAR model this CPU should certify (chosen on the validation split) -------------------------
# ../shared/data/cifar10-jpg-12k. Candidates: cifar_vgg at widths 8 / 16 / 32 and cifar_resnet20, each a Gaussian
# model at sigma 0.25 and 0.5 (10 epochs, the study's other settings); every 10th validation image (100 of 1,000)
# certified at its training sigma with certify=cifar_fast, n0 = 100, n = 1,000, alpha = 0.001. Training seconds are
# train/epoch_seconds in each run's csv/metrics.csv; certification seconds are summary.json's `seconds`. The chosen
# width's two models are also certified in float32 (same noise) for a paired bf16 against float32 comparison.
.PHONY: results-cifar-jpg-models
RM := outputs/results/cifar_jpg_models
MODEL_CANDIDATES := vgg8:model=cifar_vgg~model.width=8 vgg16:model=cifar_vgg~model.width=16 vgg32:model=cifar_vgg~model.width=32 resnet20:model=cifar_resnet20
results-cifar-jpg-models: install
	$(foreach c,$(MODEL_CANDIDATES),$(PY) train.py -m experiment=cifar_jpg_results $(subst ~, ,$(word 2,$(subst :, ,$(c)))) train.epochs=10 train.sigma=0.25,0.5 hydra.sweep.dir=$(RM)/train/$(word 1,$(subst :, ,$(c))) &&) true
	$(PY) certify.py -m certify=cifar_fast certify.split=val certify.skip=10 certify.n0=100 certify.n=1000 certify.progress=false logger=none ckpt_path=$(subst $(space),$(comma),$(foreach c,$(MODEL_CANDIDATES),$(call ckpts,$(RM)/train/$(word 1,$(subst :, ,$(c))),0 1))) hydra.sweep.dir=$(RM)/val
	$(PY) -m insta_rs.compare $(RM)/val --dataset cifar10 --out $(RM)/val
	$(PY) certify.py -m certify.channels_last=true certify.split=val certify.skip=10 certify.n0=100 certify.n=1000 certify.progress=false logger=none ckpt_path=$(call ckpts,$(RM)/train/vgg8,0 1) hydra.sweep.dir=$(RM)/val_fp32
	$(PY) -m insta_rs.compare $(RM)/val/0 $(RM)/val_fp32/0 --dataset cifar10 --out $(RM)/bf16_fp32/sigma_025
	$(PY) -m insta_rs.compare $(RM)/val/1 $(RM)/val_fp32/1 --dataset cifar10 --out $(RM)/bf16_fp32/sigma_05
	$(PY) -c 'import csv, glob; [print(p.split("/")[-4], p.split("/")[-3], "training seconds", round(sum(float(r["train/epoch_seconds"]) for r in csv.DictReader(open(p)) if r["train/epoch_seconds"]), 1)) for p in sorted(glob.glob("$(RM)/train/*/*/csv/metrics.csv"))]'

# ---- Study: the CIFAR-10 JPEG subset, fixed sigma, the envelope, experts, instance-wise methods (headline) --------
# ../shared/data/cifar10-jpg-12k (not comparable with published CIFAR-10 numbers); the model chosen on the validation
# split by results-cifar-jpg-models, 15 epochs each (conf/experiment/cifar_jpg_results.yaml). Every 4th test image
# (500 of 2,000), n0 = 100, sequential sampling in radii mode (certify.radii = 0.25 ... 1.0, at most n = 10,000
# draws per input, which reaches every grid radius that n = 100,000 reaches; docs/sequential.md), alpha = 0.001, bf16 forward (certify=cifar_fast); the Insta-RS search at
# m = 64 draws per sigma. Insta-RS Train: the digits validation choice (probe rule, stage 1 log-uniform over
# [0.05, 1.0]; docs/insta_rs_train.md) with a third of the epochs in stage 1 and eta = 0.2, so that its ten
# stage-2 moves can span [0.05, 1.0] (not chosen on CIFAR validation data). Two
# halves so that a stopped run can go on (certification resumes where it stopped). Insta-RS Train is trained with
# the probe signal chosen on validation (correct; results-cifar-jpg-insta-train-val trains the other one). The four Gaussian models are also the per-level experts.
#   time make results-cifar-jpg       the whole study from scratch (README: its wall time)
.PHONY: results-cifar-jpg results-cifar-jpg-train results-cifar-jpg-certify results-cifar-jpg-finite-across
RC := outputs/results/cifar_jpg
G := $(RC)/train/gaussian
CIFAR_SKIP ?= 4
CIFAR_N ?= 10000
CIFAR_RADII := [0.25,0.5,0.75,1.0]
CERT_RADII := certify=cifar_fast certify.sampling=sequential 'certify.radii=$(CIFAR_RADII)' certify.n0=100 certify.n=$(CIFAR_N) certify.progress=false logger=none
CERTC := $(CERT_RADII) certify.skip=$(CIFAR_SKIP)
TRAINC := experiment=cifar_jpg_results
LEVELS := [0.12,0.25,0.5,1.0]
EXPERT_MAP := {0.12:$(G)/0/checkpoints/last.ckpt,0.25:$(G)/1/checkpoints/last.ckpt,0.5:$(G)/2/checkpoints/last.ckpt,1.0:$(G)/3/checkpoints/last.ckpt}
EXPERTS := 'sigma_search.experts=$(EXPERT_MAP)'
ACROSS := $(RC)/train/across_sigmas/checkpoints/last.ckpt
INSTA := $(RC)/train/insta_rs/checkpoints/last.ckpt
INSTA_CORRECT := $(RC)/train/insta_rs_correct/checkpoints/last.ckpt
INSTA_TRAIN := train=insta_rs_probe train.stage1_sigma=log_uniform train.stage1_epochs=5 train.eta=0.2
results-cifar-jpg: results-cifar-jpg-train results-cifar-jpg-certify

results-cifar-jpg-train: install
	$(PY) train.py -m $(TRAINC) train.sigma=0.12,0.25,0.5,1.0 hydra.sweep.dir=$(G)
	$(PY) train.py -m $(TRAINC) train=consistency train.sigma=0.25,0.5 hydra.sweep.dir=$(RC)/train/consistency
	$(PY) train.py $(TRAINC) 'train.sigma=$(LEVELS)' hydra.run.dir=$(RC)/train/across_sigmas
	$(PY) train.py $(TRAINC) $(INSTA_TRAIN) train.probe_signal=correct hydra.run.dir=$(RC)/train/insta_rs_correct
	$(PY) train.py train=selector base_ckpt=$(G)/1/checkpoints/last.ckpt 'experts=$(EXPERT_MAP)' selector.draws=16 logger=csv hydra.run.dir=$(RC)/train/selector_experts

results-cifar-jpg-certify: install
	$(PY) certify.py -m $(CERTC) ckpt_path=$(call ckpts,$(G),0 1 2 3),$(call ckpts,$(RC)/train/consistency,0 1) hydra.sweep.dir=$(RC)/certify/fixed
	$(PY) certify.py $(CERTC) ckpt_path=$(ACROSS) sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(RC)/certify/across_sigmas/insta_rs
	$(PY) certify.py $(CERTC) ckpt_path=$(INSTA_CORRECT) sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(RC)/certify/insta_rs_train_correct/insta_rs
	$(PY) certify.py $(CERTC) ckpt_path=$(INSTA_CORRECT) hydra.run.dir=$(RC)/certify/insta_rs_train_correct/fixed
	$(PY) certify.py $(CERTC) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=best_level '++sigma_search.levels=$(LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/certify/experts/best_level
	$(PY) certify.py $(CERTC) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=selector sigma_search.ckpt_path=$(RC)/train/selector_experts/selector.pt $(EXPERTS) hydra.run.dir=$(RC)/certify/experts/selector
	$(PY) certify.py $(CERTC) ckpt_path=$(ACROSS) sigma_search=semi_elastic sigma_search.sigma_b=0.25 hydra.run.dir=$(RC)/certify/across_sigmas/semi_elastic
	$(PY) certify.py $(CERTC) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=cascade '++sigma_search.levels=$(LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/certify/experts/cascade
	$(PY) -m insta_rs.compare $(RC)/certify --dataset cifar10 --envelope --out $(RC)
	$(PY) -m insta_rs.compare $(RC)/certify/across_sigmas/insta_rs $(RC)/certify/insta_rs_train_correct/insta_rs --dataset cifar10 --out $(RC)/insta_train_vs_across
	$(PY) -m insta_rs.compare $(RC)/certify/fixed/1 $(RC)/certify/insta_rs_train_correct/fixed --dataset cifar10 --out $(RC)/insta_train_vs_gaussian

# grid with the experts, grid and cascade on the model trained across sigmas: the README table's last three sound rows,
# kept apart because they do not fit the study's 2 hours here (17 min more, 2026-12-07)
results-cifar-jpg-finite-across: install
	$(PY) certify.py $(CERTC) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=grid '++sigma_search.levels=$(LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/certify/experts/grid
	$(PY) certify.py -m $(CERTC) ckpt_path=$(ACROSS) sigma_search=grid,cascade '++sigma_search.levels=$(LEVELS)' hydra.sweep.dir=$(RC)/certify/across_sigmas/sound
	$(PY) -m insta_rs.compare $(RC)/certify --dataset cifar10 --envelope --out $(RC)

# ---- Study: Insta-RS Train's probe signal on the CIFAR-10 JPEG subset (validation split) -----------------------
# After results-cifar-jpg-train. Insta-RS Train with probe_signal=prob (the softmax probability of the
# label) against the same run with probe_signal=correct (one vote per visit, the quantity the smoothed classifier
# counts) and the model trained across sigmas, each with the insta_rs search, on every 10th validation image (100
# of 1,000) with the study's certification settings; then the sigma tables (docs/insta_rs_train.md).
.PHONY: results-cifar-jpg-insta-train-val
RCV := $(RC)/insta_train_val
results-cifar-jpg-insta-train-val: install
	$(PY) train.py $(TRAINC) $(INSTA_TRAIN) hydra.run.dir=$(RC)/train/insta_rs
	$(PY) certify.py -m $(CERT_RADII) certify.split=val certify.skip=10 ckpt_path=$(ACROSS),$(INSTA),$(INSTA_CORRECT) sigma_search=insta_rs sigma_search.m=64 hydra.sweep.dir=$(RCV)
	$(PY) -m insta_rs.compare $(RCV) --dataset cifar10 --out $(RCV)

# ---- Study: Insta-RS Train's update rules, digits -----------------------------------------------------------
# The probe rule (no forward pass of its own) with stage 1 at sigma0 and across sigmas (log-uniform), the search
# rule at update_every 16, the model trained across sigmas and the Gaussian sigma-0.25 model (30 epochs each,
# conf/experiment/digits_insta_rs.yaml / digits_results.yaml). Levers on the validation split (every 2nd of
# 180 inputs, n = 2,000, the search at m = 64), then the val choice on the test split (every 2nd of 360 inputs)
# with paired differences from the model trained across sigmas (the first row of each compare is the reference). docs/insta_rs_train.md reads both.
#   make results-digits-insta-train-val     train the five models, certify them on val, compare
#   make results-digits-insta-train         the val choice on the test split
.PHONY: results-digits-insta-train-val results-digits-insta-train
RI := outputs/insta_rs_train/digits
CERTI := certify.n=2000 certify.batch_size=2000 certify.skip=2 certify.progress=false logger=none
INSTA_CHOICE ?= probe_log_uniform
results-digits-insta-train-val: install
	$(PY) train.py experiment=digits_insta_rs train=insta_rs_probe hydra.run.dir=$(RI)/train/probe
	$(PY) train.py experiment=digits_insta_rs train=insta_rs_probe train.stage1_sigma=log_uniform hydra.run.dir=$(RI)/train/probe_log_uniform
	$(PY) train.py experiment=digits_insta_rs train.update_every=16 hydra.run.dir=$(RI)/train/search16
	$(PY) train.py experiment=digits_results 'train.sigma=[0.12,0.25,0.5,1.0]' hydra.run.dir=$(RI)/train/across_sigmas
	$(PY) train.py experiment=digits_results train.sigma=0.25 hydra.run.dir=$(RI)/train/gaussian_025
	for run in probe probe_log_uniform search16 across_sigmas; do $(PY) certify.py $(CERTI) certify.split=val ckpt_path=$(RI)/train/$$run/checkpoints/last.ckpt sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(RI)/val2/$${run}_insta_rs || exit 1; done
	$(PY) certify.py $(CERTI) certify.split=val ckpt_path=$(RI)/train/probe/checkpoints/last.ckpt sigma_search=fixed hydra.run.dir=$(RI)/val2/probe_fixed
	$(PY) certify.py $(CERTI) certify.split=val ckpt_path=$(RI)/train/gaussian_025/checkpoints/last.ckpt sigma_search=fixed hydra.run.dir=$(RI)/val2/gaussian_025_fixed
	$(PY) -m insta_rs.compare $(RI)/val2 --radii 0,0.25,0.5,0.75,1.0 --envelope --out $(RI)/val2

results-digits-insta-train: install
	for run in $(INSTA_CHOICE) across_sigmas; do $(PY) certify.py $(CERTI) ckpt_path=$(RI)/train/$$run/checkpoints/last.ckpt sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(RI)/test/$${run}_insta_rs || exit 1; done
	$(PY) certify.py $(CERTI) ckpt_path=$(RI)/train/$(INSTA_CHOICE)/checkpoints/last.ckpt sigma_search=fixed hydra.run.dir=$(RI)/test/$(INSTA_CHOICE)_fixed
	$(PY) certify.py $(CERTI) ckpt_path=$(RI)/train/gaussian_025/checkpoints/last.ckpt sigma_search=fixed hydra.run.dir=$(RI)/test/gaussian_025_fixed
	$(PY) -m insta_rs.compare $(RI)/test/across_sigmas_insta_rs $(RI)/test/$(INSTA_CHOICE)_insta_rs --radii 0,0.25,0.5,0.75,1.0 --out $(RI)/test/search
	$(PY) -m insta_rs.compare $(RI)/test/gaussian_025_fixed $(RI)/test/$(INSTA_CHOICE)_fixed --radii 0,0.25,0.5,0.75,1.0 --out $(RI)/test/fixed

# The CIFAR validation choice of the probe's signal (votes: train.probe_signal=correct) on the digits test split,
# against the same two rows as above (after results-digits-insta-train-val and results-digits-insta-train).
.PHONY: results-digits-insta-train-votes
results-digits-insta-train-votes: install
	$(PY) train.py experiment=digits_insta_rs train=insta_rs_probe train.stage1_sigma=log_uniform train.probe_signal=correct hydra.run.dir=$(RI)/train/probe_log_uniform_votes
	$(PY) certify.py $(CERTI) ckpt_path=$(RI)/train/probe_log_uniform_votes/checkpoints/last.ckpt sigma_search=insta_rs sigma_search.m=64 hydra.run.dir=$(RI)/test/probe_log_uniform_votes_insta_rs
	$(PY) certify.py $(CERTI) ckpt_path=$(RI)/train/probe_log_uniform_votes/checkpoints/last.ckpt sigma_search=fixed hydra.run.dir=$(RI)/test/probe_log_uniform_votes_fixed
	$(PY) -m insta_rs.compare $(RI)/test/across_sigmas_insta_rs $(RI)/test/probe_log_uniform_votes_insta_rs --radii 0,0.25,0.5,0.75,1.0 --out $(RI)/test/search_votes
	$(PY) -m insta_rs.compare $(RI)/test/gaussian_025_fixed $(RI)/test/probe_log_uniform_votes_fixed --radii 0,0.25,0.5,0.75,1.0 --out $(RI)/test/fixed_votes

# ---- Study: sound rules with one expert per level, digits ----------------------------------------------------
# Four Gaussian experts (sigma 0.12, 0.25, 0.5, 1.0; 30 epochs each). Levers are certified on the validation split
# (all 180 val inputs, n = 2,000), each lever training what it needs first; the val choice then runs once on the
# test split (every 2nd input, 180 of 360, n = 2,000) against the experts' envelope and the best-level ceiling.
#   make results-digits-experts-train                  the experts
#   make results-digits-experts-val [LEVERS="..."]     the levers (default: all), then one val comparison
#   make results-digits-experts                        the test split
# Levers: finite (grid and cascade, p0 0.5-0.8, with or without level 0.12); selectors (selectors at sigma_sel
# 0.25 / 0.5 / 1.0 on the default labels, and at 0.5 on 128-draw labels with drop_unreached x balance_levels);
# noise (12 selectors: sigma_sel 0.25 / 0.5 / 1.0 x pool 1 / 2 x consistency 0 / 40, job i = 4 i_sigma + 2 i_pool
# + i_consistency; the four experts' fixed rows and best_level; the six corners, pool and consistency both off
# or both on, with the answer and the level rule); noise-rest (the other six, answer rule; needs noise);
# two-levels (selectors between levels 0.25 and 0.5 only); alpha (selector_alpha 0.1; needs noise and two-levels);
# larger (a selector of width 32, hidden 128).
.PHONY: results-digits-experts-train results-digits-experts-val results-digits-experts
RD := outputs/results/digits_experts
DX := $(RD)/train/experts
SN := $(RD)/train/selector_noise
S2 := $(RD)/train/selector_two_levels
DEXPERT_MAP := {0.12:$(DX)/0/checkpoints/last.ckpt,0.25:$(DX)/1/checkpoints/last.ckpt,0.5:$(DX)/2/checkpoints/last.ckpt,1.0:$(DX)/3/checkpoints/last.ckpt}
DEXPERTS := 'sigma_search.experts=$(DEXPERT_MAP)'
# DVAL and DTEST name the sigma-0.25 expert as ckpt_path; a later ckpt_path= on a command line replaces it
DVAL := certify.split=val certify.n=2000 certify.batch_size=2000 certify.progress=false logger=none ckpt_path=$(DX)/1/checkpoints/last.ckpt
DTEST := certify.n=2000 certify.batch_size=2000 certify.skip=2 certify.progress=false logger=none ckpt_path=$(DX)/1/checkpoints/last.ckpt
DSEL := train=selector base_ckpt=$(DX)/1/checkpoints/last.ckpt 'experts=$(DEXPERT_MAP)' logger=csv
DIGITS_LEVERS := finite selectors noise noise-rest two-levels alpha larger
# the val choices run on the test split: grid's p0 and levels (lever finite; only its first four jobs ran, so only
# p0 is a validation choice), and the selector with its rule and alpha share (lever alpha's level-rule row)
GRID_P0 ?= 0.6
GRID_LEVELS ?= [0.5,0.25,0.12]
DIGITS_SELECTOR ?= $(SN)/11/selector.pt
DIGITS_SELECTOR_RULE ?= level
DIGITS_SELECTOR_ALPHA ?= 0.1

define lever-digits-finite
$(PY) certify.py -m $(DVAL) sigma_search=grid,cascade sigma_search.p0=0.5,0.6,0.7,0.8 '++sigma_search.levels=[1.0,0.5,0.25,0.12],[0.5,0.25,0.12]' $(DEXPERTS) hydra.sweep.dir=$(RD)/val/finite
endef
define lever-digits-selectors
$(PY) train.py -m $(DSEL) selector.sigma=0.25,0.5,1.0 hydra.sweep.dir=$(RD)/train/selector
$(PY) train.py -m $(DSEL) selector.sigma=0.5 selector.draws=128 selector.drop_unreached=false,true selector.balance_levels=false,true hydra.sweep.dir=$(RD)/train/selector_levers
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(RD)/train/selector,0 1 2),$(call selectors,$(RD)/train/selector_levers,0 1 2 3) $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector
$(PY) -m insta_rs.compare $(RD)/val/selector --out $(RD)/val/selector
endef
define lever-digits-noise
$(PY) train.py -m $(DSEL) selector.sigma=0.25,0.5,1.0 selector.pool=1,2 selector.consistency=0,40 hydra.sweep.dir=$(SN)
$(PY) certify.py -m $(DVAL) ckpt_path=$(call ckpts,$(DX),0 1 2 3) hydra.sweep.dir=$(RD)/val/fixed
$(PY) certify.py $(DVAL) sigma_search=best_level 'sigma_search.levels=[1.0,0.5,0.25,0.12]' $(DEXPERTS) hydra.run.dir=$(RD)/val/best_level
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(SN),0 3 4 7 8 11) sigma_search.rule=answer $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector_noise/answer
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(SN),0 3 4 7 8 11) sigma_search.rule=level $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector_noise/level
$(PY) -m insta_rs.compare $(RD)/val/fixed $(RD)/val/best_level $(RD)/val/selector_noise --envelope --out $(RD)/val/selector_noise
endef
define lever-digits-noise-rest
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(SN),1 2 5 6 9 10) sigma_search.rule=answer $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector_noise/answer_rest
endef
define lever-digits-two-levels
$(PY) train.py -m $(DSEL) 'selector.levels=[0.25,0.5]' selector.sigma=0.5,1.0 hydra.sweep.dir=$(S2)/plain
$(PY) train.py -m $(DSEL) 'selector.levels=[0.25,0.5]' selector.sigma=0.5,1.0 selector.pool=2 selector.consistency=40 hydra.sweep.dir=$(S2)/lowpass
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(S2)/plain,0 1),$(call selectors,$(S2)/lowpass,0 1) sigma_search.rule=answer $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector_two_levels
endef
define lever-digits-alpha
$(PY) certify.py -m $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(SN)/11/selector.pt,$(call selectors,$(S2)/lowpass,0 1) sigma_search.rule=answer,level sigma_search.selector_alpha=0.1 $(DEXPERTS) hydra.sweep.dir=$(RD)/val/selector_alpha
endef
define lever-digits-larger
$(PY) train.py $(DSEL) selector.sigma=0.5 selector.pool=2 selector.consistency=40 selector.width=32 selector.hidden=128 hydra.run.dir=$(RD)/train/selector_larger
$(PY) certify.py $(DVAL) sigma_search=selector sigma_search.ckpt_path=$(RD)/train/selector_larger/selector.pt sigma_search.rule=answer $(DEXPERTS) hydra.run.dir=$(RD)/val/selector_larger
endef

results-digits-experts-train: install
	$(PY) train.py -m experiment=digits_results train.sigma=0.12,0.25,0.5,1.0 hydra.sweep.dir=$(DX)

results-digits-experts-val: LEVERS ?= $(DIGITS_LEVERS)
results-digits-experts-val: install
	$(call levers,digits,$(DIGITS_LEVERS))
	$(PY) -m insta_rs.compare $(RD)/val --out $(RD)/val

results-digits-experts: install
	$(PY) certify.py -m $(DTEST) ckpt_path=$(call ckpts,$(DX),0 1 2 3) hydra.sweep.dir=$(RD)/test/fixed
	$(PY) certify.py $(DTEST) sigma_search=best_level 'sigma_search.levels=[1.0,0.5,0.25,0.12]' $(DEXPERTS) hydra.run.dir=$(RD)/test/best_level
	$(PY) certify.py -m $(DTEST) sigma_search=grid,cascade '++sigma_search.levels=[1.0,0.5,0.25,0.12]' $(DEXPERTS) hydra.sweep.dir=$(RD)/test/default
	$(PY) certify.py $(DTEST) sigma_search=grid sigma_search.p0=$(GRID_P0) '++sigma_search.levels=$(GRID_LEVELS)' $(DEXPERTS) hydra.run.dir=$(RD)/test/grid_chosen
	$(PY) certify.py $(DTEST) sigma_search=selector sigma_search.ckpt_path=$(DIGITS_SELECTOR) sigma_search.rule=$(DIGITS_SELECTOR_RULE) sigma_search.selector_alpha=$(DIGITS_SELECTOR_ALPHA) $(DEXPERTS) hydra.run.dir=$(RD)/test/selector
	$(PY) -m insta_rs.compare $(RD)/test --envelope --out $(RD)/test

# ---- Study: sound rules with one expert per level, CIFAR-10 JPEG subset -------------------------------------------
# The experts are results-cifar-jpg-train's four Gaussian models. Levers on the validation split (every 10th of its
# 1,000 images, n = 1,000), then the val choice on results-cifar-jpg's test inputs:
#   make results-cifar-jpg-experts-val [LEVERS="..."]   the levers (default: all)
#   make results-cifar-jpg-experts-test                 the test split, compared with the experts' envelope
# Levers: cascade (p0 0.5 / 0.7 x levels {0.12, 0.25, 0.5, 1.0} or without 0.12); selectors (sigma_sel 0.25 / 1.0,
# plain and with pool 2 + consistency 40, 16 label draws per level and training image; the experts' fixed rows
# and best_level; every selector with the answer rule, the first also with the level rule).
.PHONY: results-cifar-jpg-experts-val results-cifar-jpg-experts-test
CSN := $(RC)/train/selector_noise
# a later ckpt_path= on a command line replaces the one in CERTCV
CERTCV := certify.split=val certify.n0=100 certify.n=1000 certify.skip=10 certify.progress=false logger=none ckpt_path=$(G)/1/checkpoints/last.ckpt
CSEL := train=selector base_ckpt=$(G)/1/checkpoints/last.ckpt 'experts=$(EXPERT_MAP)' selector.draws=16 logger=csv
CIFAR_LEVERS := cascade selectors
# the val choices run on the test split (cascade p0 0.5 on {0.25, 0.5, 1.0}; the sigma_sel 1.0 plain selector)
CIFAR_RULE ?= cascade
CIFAR_P0 ?= 0.5
CIFAR_RULE_LEVELS ?= [0.25,0.5,1.0]
CIFAR_SELECTOR ?= $(CSN)/plain/1/selector.pt
CIFAR_SELECTOR_RULE ?= answer
CIFAR_SELECTOR_ALPHA ?= 0.5
# the answer rule has no sequential form: these rows take a fixed n = 10,000 on the study's 500 test images
CERTCF := certify=cifar_fast certify.n0=100 certify.n=10000 certify.skip=$(CIFAR_SKIP) certify.progress=false logger=none

define lever-cifar-cascade
$(PY) certify.py -m $(CERTCV) sigma_search=cascade sigma_search.p0=0.5,0.7 '++sigma_search.levels=$(LEVELS),[0.25,0.5,1.0]' $(EXPERTS) hydra.sweep.dir=$(RC)/levers/val_cascade
endef
define lever-cifar-selectors
$(PY) train.py -m $(CSEL) selector.sigma=0.25,1.0 hydra.sweep.dir=$(CSN)/plain
$(PY) train.py -m $(CSEL) selector.sigma=0.25,1.0 selector.pool=2 selector.consistency=40 hydra.sweep.dir=$(CSN)/lowpass
$(PY) certify.py -m $(CERTCV) ckpt_path=$(call ckpts,$(G),0 1 2 3) hydra.sweep.dir=$(RC)/levers/val_fixed
$(PY) certify.py $(CERTCV) sigma_search=best_level '++sigma_search.levels=$(LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/levers/val_best_level
$(PY) certify.py -m $(CERTCV) sigma_search=selector sigma_search.ckpt_path=$(call selectors,$(CSN)/plain,0 1),$(call selectors,$(CSN)/lowpass,0 1) sigma_search.rule=answer $(EXPERTS) hydra.sweep.dir=$(RC)/levers/val_selector_noise/answer
$(PY) certify.py $(CERTCV) sigma_search=selector sigma_search.ckpt_path=$(CSN)/plain/0/selector.pt sigma_search.rule=level $(EXPERTS) hydra.run.dir=$(RC)/levers/val_selector_noise/level
$(PY) -m insta_rs.compare $(RC)/levers/val_fixed $(RC)/levers/val_best_level $(RC)/levers/val_selector_noise --dataset cifar10 --envelope --out $(RC)/levers/val_selector_noise
endef

results-cifar-jpg-experts-val: LEVERS ?= $(CIFAR_LEVERS)
results-cifar-jpg-experts-val: install
	$(call levers,cifar,$(CIFAR_LEVERS))

results-cifar-jpg-experts-test: install
	$(PY) certify.py -m $(CERTCF) ckpt_path=$(call ckpts,$(G),0 1 2 3) hydra.sweep.dir=$(RC)/test_experts/fixed
	$(PY) certify.py $(CERTCF) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=best_level '++sigma_search.levels=$(LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/test_experts/best_level
	$(PY) certify.py $(CERTCF) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=selector sigma_search.ckpt_path=$(CIFAR_SELECTOR) sigma_search.rule=$(CIFAR_SELECTOR_RULE) sigma_search.selector_alpha=$(CIFAR_SELECTOR_ALPHA) $(EXPERTS) hydra.run.dir=$(RC)/test_experts/selector
	$(PY) certify.py $(CERTCF) ckpt_path=$(G)/1/checkpoints/last.ckpt sigma_search=$(CIFAR_RULE) sigma_search.p0=$(CIFAR_P0) '++sigma_search.levels=$(CIFAR_RULE_LEVELS)' $(EXPERTS) hydra.run.dir=$(RC)/test_experts/finite_rule
	$(PY) -m insta_rs.compare $(RC)/test_experts --dataset cifar10 --envelope --out $(RC)/test_experts

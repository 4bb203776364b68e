# frontforce: two commands matter.
#   make demo          everything on this machine + a realistic scenario (Ctrl-C stops)
#   make demo ONCE=1   same, prints the summary, stops everything, exits
#   make test          lint, types, and the test suite on a real broker and registry
PYTHON ?= python3
# bash with pipefail: a bench piped into tee still fails the target when it fails.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

.PHONY: venv demo test lint tools bench bench-tools drills stack-start stack-stop stack-status clean

# Salesforce's Pub/Sub API stubs are generated, not committed: they must match the pinned
# grpcio/protobuf, and the proto (eventbus/pubsub_api.proto) is the only source of truth.
PROTO  := eventbus/pubsub_api.proto
STUBS  := eventbus/pubsub_api_pb2.py eventbus/pubsub_api_pb2_grpc.py

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Regenerated when the proto changes or the venv was reinstalled (grpcio-tools may differ).
$(STUBS) &: $(PROTO) $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. $(PROTO)
	touch $(STUBS)

venv: $(STAMP) $(STUBS)

demo: venv
	bash deploy/stack.sh fetch
	$(BIN)/frontforce demo $(if $(filter 1 true yes,$(ONCE)),--once)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy frontforce sources streams sinks schemas emulators eventbus

# kcat (Debian package) is how the tests prove a tool that is not ours reads our topics.
tools:
	@command -v kcat >/dev/null || { echo "installing kcat (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) >/dev/null \
	  || { echo "kcat is required: apt-get install kcat" >&2; exit 1; }; }
	@# Headless Chromium and its WebDriver for the status page's browser test
	@# (tests/test_status_page.py). One Debian source package builds both, so apt always
	@# installs a driver of the browser's exact version; the test speaks W3C WebDriver to it
	@# over HTTP (no Python client to keep in step, no browser download).
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
	  echo "installing chromium + chromium-driver (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  >/dev/null || { echo "chromium is required: apt-get install chromium chromium-driver" >&2; exit 1; }; }

# Four pytest processes on two cores: the suite mostly waits (brokers, session timeouts, flush
# windows). With three, its CPU time was half its wall time (6.2 of 12.2 min); with four the
# same suite took 11.1 min instead of 12.2.
test: lint tools
	bash deploy/stack.sh fetch
	$(BIN)/pytest -n 4 --dist loadfile $(PYTEST_ARGS)

# Measurements for BENCHMARKS.md (each prints its figures with the command that made them;
# the outputs are kept in .run/bench/). Minutes each; not part of `make test`.
BENCH_OUT := .run/bench
bench: venv bench-tools
	bash deploy/stack.sh fetch
	mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/worker_throughput.py --events 100000 --contacts 1000 | tee $(BENCH_OUT)/worker_throughput.txt
	for n in 1 2 4; do $(BIN)/python bench/worker_throughput.py --events 100000 --contacts 1000 \
	  --workers $$n --partitions 8; done | tee $(BENCH_OUT)/worker_scaleout.txt
	$(BIN)/python bench/worker_memory.py --contacts 1000000 | tee $(BENCH_OUT)/worker_memory.txt
	$(BIN)/python bench/idle_cpu.py --settle 40 --duration 30 | tee $(BENCH_OUT)/idle_cpu.txt
	$(BIN)/python bench/replay.py --events 1000000 --contacts 1000 | tee $(BENCH_OUT)/replay.txt
	$(BIN)/python bench/salesforce_calls.py --messages 10000 --rate 200 --naive 0 --concurrency 16 \
	  --unknown-share 0.2 | tee $(BENCH_OUT)/salesforce_calls.txt
	$(BIN)/python bench/front_sink_coalescing.py --commands 1000 --conversations 50 --contacts 50 \
	  | tee $(BENCH_OUT)/front_sink_coalescing.txt
	$(BIN)/python bench/front_backfill.py --rpm 50 --rpm 100 --windows 3 | tee $(BENCH_OUT)/front_backfill.txt
	$(BIN)/python bench/webhook_to_task.py --messages 1000 --senders 200 --known 160 \
	  | tee $(BENCH_OUT)/webhook_to_task.txt
	$(BIN)/python bench/webhook_ingest.py --processes 1 2 4 --duration 20 \
	  --out $(BENCH_OUT)/webhook_ingest.json | tee $(BENCH_OUT)/webhook_ingest.txt
	$(BIN)/python bench/latency.py --rates 200 1000 --duration 60 --batch-wait-ms 200 \
	  --out $(BENCH_OUT)/latency.json | tee $(BENCH_OUT)/latency.txt
	$(BIN)/python bench/charts.py --ingest $(BENCH_OUT)/webhook_ingest.json \
	  --latency $(BENCH_OUT)/latency.json --outdir bench/charts

# wrk (Debian package) loads the receiver in bench/webhook_ingest.py.
bench-tools:
	@command -v wrk >/dev/null || { echo "installing wrk (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null \
	  || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }; }

# Fault drills at full size (each starts and stops what it needs, prints what it counted and
# fails on a loss, a double write or an echo). Too long for `make test`, which runs them small.
# Each starts its own broker(s) and registry on free ports; one at a time (2 cores). The
# outputs are kept in .run/drills/.
DRILL_OUT := .run/drills
drills: venv tools
	bash deploy/stack.sh fetch
	mkdir -p $(DRILL_OUT)
	$(BIN)/python -m drills.echo_run --changes 1000 | tee $(DRILL_OUT)/echo_run.txt
	$(BIN)/python -m drills.sigkill_run --size 20000 --kills 5 --kill-every 6:14 | tee $(DRILL_OUT)/sigkill_run.txt
	$(BIN)/python -m drills.broker_restart --size 4000 | tee $(DRILL_OUT)/broker_restart.txt
	$(BIN)/python -m drills.cluster_run --size 4000 | tee $(DRILL_OUT)/cluster_run.txt
	$(BIN)/python -m drills.scaleout_run --size 4000 --pace 0.04 | tee $(DRILL_OUT)/scaleout_run.txt
	$(BIN)/python -m drills.outage_run --size 3000 | tee $(DRILL_OUT)/outage_run.txt
	FRONTFORCE_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q tests/test_receiver.py -k fuzz

stack-start:
	bash deploy/stack.sh start
stack-stop:
	bash deploy/stack.sh stop
stack-status:
	bash deploy/stack.sh status

clean: stack-stop
	rm -rf .run

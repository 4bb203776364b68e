# frontforce: two commands matter.
#   make demo          everything on this machine + a realistic scenario (Ctrl-C stops)
#   make demo ONCE=1   same, prints the summary, stops everything, exits
#   make test          lint, types, and the test suite on a real broker and registry
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

.PHONY: venv demo test lint tools stack-start stack-stop stack-status clean

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

test: lint tools
	bash deploy/stack.sh fetch
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

stack-start:
	bash deploy/stack.sh start
stack-stop:
	bash deploy/stack.sh stop
stack-status:
	bash deploy/stack.sh status

clean: stack-stop
	rm -rf .run

# tlsgate — two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV    := .tlsgate

.PHONY: run test sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Real clients the tests drive: curl (HTTP/1.1 + HTTP/2), nghttp (nghttp2-client: HTTP/2)
# and openssl s_client; the bench's peers (tests/test_bench_peers.py): nginx and haproxy.
sysdeps:
	@command -v curl >/dev/null && command -v openssl >/dev/null && \
	  command -v nghttp >/dev/null && \
	  command -v nginx >/dev/null && command -v haproxy >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    curl openssl nghttp2-client nginx haproxy)

test: $(STAMP) sysdeps
	$(PY) -m pytest

run: $(STAMP)
	@$(PY) -m tlsgate pki init $(DEV)/pki >/dev/null
	@cp tlsgate/defaults/gateway.toml $(DEV)/gateway.toml
	@echo "tlsgate dev gateway on https://localhost:8443 — try:"
	@echo "  curl --cacert $(DEV)/pki/root.pem --cert $(DEV)/pki/client.pem --key $(DEV)/pki/client.key https://localhost:8443/echo"
	$(PY) -m tlsgate serve --config $(DEV)/gateway.toml

clean:
	rm -rf $(VENV) $(DEV) .pytest_cache

"""Shared fixtures: a development PKI made once per test session, and real gateways."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from gatewayd import RunningGateway, run_gateway, write_config
from httpclients import OriginProcess

from tlsgate.pki import init_pki

# The dev server certificate, and the dev root as trust anchor: every test gateway has them.
SERVER_CERTIFICATE_AND_ROOT = """
[[certificate]]
id = "gateway"
file = "{pki}/server.pem"
key_file = "{pki}/server.key"

[[ca_certificate]]
id = "root"
file = "{pki}/root.pem"
store = "root"
"""

# A gateway on an ephemeral port: handshake mode on "localhost", nothing asked on
# "open.localhost", TLS 1.2 and 1.3, the echo backend on /echo.
BASIC_CONFIG = """
[gateway]
listen = ["127.0.0.1:0"]
data_dir = "data"
handshake_timeout = 5
""" + SERVER_CERTIFICATE_AND_ROOT + """
[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true

[[hostname]]
name = "open.localhost"
certificate = "gateway"

[[hostname]]
name = "default"
certificate = "gateway"
negotiate_client_certificate = true

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
"""


#: A policy that reads the client certificate (on a hostname that did not ask for it in the
#: handshake, the first read fetches it late) and passes its thumbprint on as x-thumb.
READS_CERTIFICATE_POLICY = """<policies><inbound>
<set-header name="x-thumb" exists-action="override">
<value>@(context.Request.Certificate?.Thumbprint ?? "none")</value></set-header></inbound>
<backend><forward-request /></backend><outbound /><on-error /></policies>"""


def on_demand_config(policy: Path) -> str:
    """BASIC_CONFIG with "localhost" asking for no certificate in the handshake, and an API
    at /late (echo) behind ``policy``."""
    asking = 'name = "localhost"\ncertificate = "gateway"\nnegotiate_client_certificate = '
    assert asking + "true" in BASIC_CONFIG
    return BASIC_CONFIG.replace(asking + "true", asking + "false") + f"""
[[api]]
name = "late"
path = "/late"
backend = "echo:"
policy = "{policy}"
"""

@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(init_pki(tmp_path_factory.mktemp("pki") / "pki")["root.pem"]).parent


@pytest.fixture(scope="session")
def thumbprints(pki: Path) -> dict[str, dict[str, str]]:
    return json.loads((pki / "thumbprints.json").read_text())


@pytest.fixture
def start_gateway(tmp_path: Path, pki: Path) -> Iterator[Callable[..., RunningGateway]]:
    """``start_gateway(config_text=BASIC_CONFIG)`` → a running gateway, stopped after the test."""
    with ExitStack() as stack:
        counter = iter(range(1000))

        def start(config_text: str = BASIC_CONFIG) -> RunningGateway:
            directory = tmp_path / f"gw{next(counter)}"
            directory.mkdir()
            return stack.enter_context(run_gateway(write_config(directory, config_text, pki=pki)))

        yield start


@pytest.fixture
def gateway(start_gateway) -> RunningGateway:
    return start_gateway()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (make sysdeps)")
    return path


@pytest.fixture
def no_tracebacks(caplog):
    """Whatever a test does to the gateway, it logs no error and no traceback
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("no_tracebacks")``)."""
    from httpclients import tlsgate_errors

    yield
    time.sleep(0.05)          # let the gateway thread finish what the client started
    assert not tlsgate_errors(caplog.records)


@pytest.fixture
def access_log(caplog):
    """``access_log(count)``: the JSON access-log lines so far; with ``count``, wait briefly
    until that many exist (the line is written once the response is out, maybe after the
    client left)."""
    caplog.set_level(logging.INFO, logger="tlsgate.access")

    def lines(count: int | None = None, timeout: float = 5) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = [json.loads(r.getMessage()) for r in caplog.records
                     if r.name == "tlsgate.access"]
            if count is None or len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)
    return lines


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginProcess]:
    """An HTTP/1.1 origin server in a subprocess (see httpclients.OriginProcess)."""
    with OriginProcess() as process:
        yield process

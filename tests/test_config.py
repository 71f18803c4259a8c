"""gateway.toml: every SPEC §2 section, defaults, and every kind of error with its position."""

from __future__ import annotations

import json
import textwrap
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from certgen import (
    cert_der,
    cert_pem,
    crl_pem,
    key_pem,
    make_ca,
    make_leaf,
    new_key,
    pfx,
    write,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.config.errors import ConfigError, Problem
from tlsgate.config.loader import check_config, config_warnings, load_config
from tlsgate.config.model import (
    AdminSettings,
    CertificateHeaderSettings,
    GatewaySettings,
    HostnameSettings,
    RevocationSettings,
)
from tlsgate.config.positions import KeyLocator

PFX_PASSWORD = "pfx-Secret-4711"
ADMIN_TOKEN = "admin-Token-0815"


@pytest.fixture(scope="module")
def certs():
    root = make_ca("Config Test Root")
    intermediate = make_ca("Config Test Intermediate", issuer=root)
    return root, intermediate, make_leaf("localhost", intermediate)


@pytest.fixture
def workdir(tmp_path, monkeypatch, certs):
    """A folder with a PKI and policies; the config is written as ./gateway.toml there."""
    root, intermediate, leaf = certs
    pki = tmp_path / "pki"
    write(pki / "server.pem", cert_pem(leaf.cert), cert_pem(intermediate.cert), key_pem(leaf.key))
    write(pki / "server-split.pem", cert_pem(leaf.cert), cert_pem(intermediate.cert))
    write(pki / "server.key", key_pem(leaf.key))
    write(pki / "server.cer", cert_der(leaf.cert))
    write(pki / "server.pfx", pfx(leaf, (intermediate.cert,), PFX_PASSWORD))
    write(pki / "root.pem", cert_pem(root.cert))
    write(pki / "intermediate.pem", cert_pem(intermediate.cert))
    write(pki / "intermediate.crl", crl_pem(intermediate))
    write(pki / "garbage.crl", b"not a CRL")
    write(tmp_path / "policies" / "echo.xml", b"<policies />")
    write(tmp_path / "policies" / "global.xml", b"<policies />")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLSGATE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("SERVER_PFX_PASSWORD", raising=False)
    return tmp_path


def write_config(text: str, name: str = "gateway.toml") -> Path:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(text: str) -> list[str]:
    """The problem lines of a config that must not load."""
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    return [str(problem) for problem in caught.value.problems]


# The smallest valid configuration; tests add to it or change it.
BASE = """\
[[certificate]]
id = "server"
file = "pki/server.pem"

[[hostname]]
name = "localhost"
certificate = "server"
"""


FULL = """\
[gateway]
listen = ["127.0.0.1:8443", "[::1]:8443"]
workers = 2
data_dir = "state"
min_tls = "1.2"
max_tls = "1.3"
handshake_timeout = 2.5
idle_timeout = 75
proxy_protocol = ["10.0.0.0/8", "192.0.2.7"]
max_header_size = 8192
max_body_size = 1048576
http2_max_concurrent_streams = 50

[admin]
listen = "127.0.0.1:9901"
token = "env:TLSGATE_ADMIN_TOKEN"

[[certificate]]
id = "gateway"
file = "pki/server.pfx"
password = "env:SERVER_PFX_PASSWORD"

[[certificate]]
id = "split"
file = "pki/server-split.pem"
key_file = "pki/server.key"

[[certificate]]
id = "public-only"
file = "pki/server.cer"

[[certificate]]
id = "rotating"
vault = "file:///srv/vault/gateway"
refresh_interval = 600

[[ca_certificate]]
id = "dev-root"
file = "pki/root.pem"
store = "root"

[[ca_certificate]]
id = "dev-intermediate"
file = "pki/intermediate.pem"
store = "intermediate"

[revocation]
mode = "ignore-unavailable"
crl_files = ["pki/intermediate.crl"]
fetch_distribution_points = false
fetch_timeout = 3

[[hostname]]
name = "localhost"
certificate = "gateway"
negotiate_client_certificate = true
client_certificate_required = true
http2 = false
on_demand_body = "stall"
on_demand_buffer_limit = 1000
on_demand_spool_limit = 2000
upload_read_ahead = 3000
on_demand_timeout = 1.5
on_demand_http2 = "null"

[[hostname]]
name = "*.Example.com"
certificate = "split"

[[hostname]]
name = "default"
certificate = "gateway"

[[api]]
name = "echo"
path = "/echo"
backend = "echo:"
policy = "policies/echo.xml"
timeout = 30
max_body_size = 4096

[[api]]
name = "orders"
path = "/orders"
backend = "http://127.0.0.1:9000/base"

[policies]
global = "policies/global.xml"

[forwarded_client_certificate]
header = "X-Client-Cert"
format = "pem-urlencoded"
trusted_proxies = ["127.0.0.1/32"]

[upstream_client_certificate]
header = "Client-Cert"
format = "rfc9440"
"""


@pytest.fixture
def full_env(monkeypatch):
    monkeypatch.setenv("TLSGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("SERVER_PFX_PASSWORD", PFX_PASSWORD)


# -- a valid configuration ----------------------------------------------------------------------


def test_full_config(workdir, full_env, certs):
    _, intermediate, leaf = certs
    config = load_config(write_config(FULL))

    assert config.path == workdir / "gateway.toml"
    assert config.gateway == GatewaySettings(
        listen=("127.0.0.1:8443", "[::1]:8443"),
        workers=2,
        data_dir=workdir / "state",
        min_tls="1.2",
        max_tls="1.3",
        handshake_timeout=2.5,
        idle_timeout=75.0,
        proxy_protocol=("10.0.0.0/8", "192.0.2.7/32"),
        max_header_size=8192,
        max_body_size=1048576,
        http2_max_concurrent_streams=50,
    )
    assert config.admin == AdminSettings(listen="127.0.0.1:9901", token=ADMIN_TOKEN)

    gateway = config.certificates["gateway"]
    assert gateway.file == workdir / "pki" / "server.pfx"
    assert gateway.password == PFX_PASSWORD
    assert gateway.loaded.certificate == leaf.cert
    assert gateway.loaded.chain == (intermediate.cert,)
    assert config.certificates["split"].loaded.private_key is not None
    assert config.certificates["split"].key_file == workdir / "pki" / "server.key"
    assert config.certificates["public-only"].loaded.private_key is None
    rotating = config.certificates["rotating"]
    assert (rotating.file, rotating.loaded, rotating.vault, rotating.refresh_interval) == (
        None, None, "file:///srv/vault/gateway", 600.0)

    assert config.ca_certificates["dev-root"].store == "root"
    assert config.ca_certificates["dev-intermediate"].certificates == (intermediate.cert,)

    assert config.revocation == RevocationSettings(
        mode="ignore-unavailable",
        crl_files=(workdir / "pki" / "intermediate.crl",),
        fetch_distribution_points=False,
        fetch_timeout=3.0,
        crls=config.revocation.crls,
    )
    assert [crl.issuer for crl in config.revocation.crls] == [intermediate.cert]
    assert config.hostnames[0] == HostnameSettings(
        name="localhost",
        certificate="gateway",
        negotiate_client_certificate=True,
        client_certificate_required=True,
        http2=False,
        on_demand_body="stall",
        on_demand_buffer_limit=1000,
        on_demand_spool_limit=2000,
        upload_read_ahead=3000,
        on_demand_timeout=1.5,
        on_demand_http2="null",
    )
    assert config.hostnames[1] == HostnameSettings(name="*.example.com", certificate="split")
    assert [h.name for h in config.hostnames] == ["localhost", "*.example.com", "default"]

    echo, orders = config.apis
    assert (echo.name, echo.path, echo.backend, echo.timeout, echo.max_body_size) == (
        "echo", "/echo", "echo:", 30.0, 4096)
    assert echo.policy == workdir / "policies" / "echo.xml"
    assert (orders.backend, orders.policy, orders.max_body_size) == (
        "http://127.0.0.1:9000/base", None, None)

    assert config.policies.global_policy == workdir / "policies" / "global.xml"
    assert config.forwarded_client_certificate == CertificateHeaderSettings(
        "X-Client-Cert", "pem-urlencoded", ("127.0.0.1/32",))
    assert config.upstream_client_certificate == CertificateHeaderSettings("Client-Cert", "rfc9440")
    assert check_config(Path("gateway.toml")) == []


def test_full_config_warnings(workdir, full_env):
    warnings = config_warnings(load_config(write_config(FULL)))
    assert warnings == [
        "[admin] is not implemented yet and is ignored",
        "[forwarded_client_certificate] is not implemented yet and is ignored",
        "certificate 'rotating': vault references are not implemented yet; "
        "the certificate is not loaded",
    ]


def test_minimal_config_defaults(workdir):
    config = load_config(write_config(BASE))
    assert config.gateway == GatewaySettings(data_dir=workdir / ".tlsgate")
    assert config.admin is None
    assert config.revocation == RevocationSettings()
    assert config.hostnames == (HostnameSettings(name="localhost", certificate="server"),)
    assert config.apis == ()
    assert config.policies.global_policy is None
    assert config.forwarded_client_certificate is None
    assert config.upstream_client_certificate is None
    assert config_warnings(config) == []


def test_revocation_section_with_defaults_only_warns_about_fetching(workdir):
    config = load_config(write_config(BASE + '\n[revocation]\nmode = "strict"\n'))
    assert config_warnings(config) == [
        "revocation.fetch_distribution_points: fetching CRLs from distribution points is not "
        "implemented yet; only crl_files are used"]


def test_paths_are_relative_to_the_config_folder(workdir, monkeypatch):
    (workdir / "elsewhere").mkdir()
    config_path = write_config(BASE.replace("pki/", "../pki/"), name="conf/gateway.toml")
    monkeypatch.chdir(workdir / "elsewhere")
    config = load_config(workdir / config_path)
    assert config.certificates["server"].file == workdir / "pki" / "server.pem"
    assert config.gateway.data_dir == workdir / "conf" / ".tlsgate"


def test_expired_server_certificate_is_a_warning(workdir, certs):
    _, intermediate, _ = certs
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    old = make_leaf("localhost", intermediate, days=1, not_before=ten_days_ago)
    write(workdir / "pki" / "server.pem", cert_pem(old.cert), key_pem(old.key))
    (warning,) = config_warnings(load_config(write_config(BASE)))
    assert warning.startswith("certificate 'server' expired on ")


# -- secrets ------------------------------------------------------------------------------------


def test_env_secret_missing_names_the_variable(workdir):
    # The PFX is not opened without its password, so there is no follow-up error about it.
    assert problems(FULL) == [
        "gateway.toml:16:1: admin.token: environment variable TLSGATE_ADMIN_TOKEN is not set",
        "gateway.toml:21:1: certificate[0].password: "
        "environment variable SERVER_PFX_PASSWORD is not set",
    ]


def test_literal_secret(workdir):
    config = load_config(write_config(
        BASE.replace(
            'file = "pki/server.pem"', f'file = "pki/server.pfx"\npassword = "{PFX_PASSWORD}"'
        )
    ))
    assert config.certificates["server"].password == PFX_PASSWORD


def test_env_prefix_without_a_name(workdir):
    assert problems(BASE + '\n[admin]\ntoken = "env:"\n') == [
        "gateway.toml:10:1: admin.token: 'env:' must be followed by an environment variable name"
    ]


def test_secrets_never_appear_in_messages_or_records(workdir, monkeypatch):
    monkeypatch.setenv("TLSGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("SERVER_PFX_PASSWORD", "wrong-" + PFX_PASSWORD)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(FULL))
    assert [p.message for p in caught.value.problems] == [
        "certificate[0].file: cannot load pki/server.pfx: wrong password or corrupt PKCS#12"
    ]
    assert PFX_PASSWORD not in str(caught.value)

    monkeypatch.setenv("SERVER_PFX_PASSWORD", PFX_PASSWORD)
    config = load_config(Path("gateway.toml"))
    for text in (repr(config), str(config), repr(config.admin), repr(config.certificates)):
        assert ADMIN_TOKEN not in text
        assert PFX_PASSWORD not in text
        assert "private_key" not in text


def test_wrong_type_for_a_secret_does_not_echo_it(workdir):
    assert problems(BASE + "\n[admin]\ntoken = 123456789\n") == [
        "gateway.toml:10:1: admin.token: expected a string, got integer"
    ]


# -- errors with their positions ----------------------------------------------------------------

def with_base(snippet: str) -> str:
    """BASE, a blank line, then ``snippet``: its first line is line 9 of the file."""
    return BASE + "\n" + textwrap.dedent(snippet)


ERRORS = {
    "wrong type": (
        '[gateway]\nworkers = "4"',
        "gateway.toml:10:1: gateway.workers: expected an integer, got string",
    ),
    "boolean is not an integer": (
        "[gateway]\n  workers = true",
        "gateway.toml:10:3: gateway.workers: expected an integer, got boolean",
    ),
    "integer out of range": (
        "[gateway]\nworkers = 0",
        "gateway.toml:10:1: gateway.workers: must be at least 1, got 0",
    ),
    "float size": (
        "[gateway]\nmax_body_size = 1.5",
        "gateway.toml:10:1: gateway.max_body_size: expected an integer, got float",
    ),
    "negative duration": (
        "[gateway]\nidle_timeout = -1",
        "gateway.toml:10:1: gateway.idle_timeout: must be 0 or more, got -1",
    ),
    "duration as string": (
        '[gateway]\nhandshake_timeout = "10s"',
        "gateway.toml:10:1: gateway.handshake_timeout: expected a number of seconds, got string",
    ),
    "infinite duration": (
        "[gateway]\nidle_timeout = inf",
        "gateway.toml:10:1: gateway.idle_timeout: must be a finite number of seconds",
    ),
    "unknown key": (
        "[gateway]\nfoo = 1",
        "gateway.toml:10:1: unknown key 'foo' in [gateway]",
    ),
    "misspelt key": (
        "[gateway]\nworker = 2",
        "gateway.toml:10:1: unknown key 'worker' in [gateway] (did you mean 'workers'?)",
    ),
    "unknown dotted key": (
        "[gateway]\ntls.min = 1",
        "gateway.toml:10:1: unknown key 'tls' in [gateway]",
    ),
    "unknown key in an array table": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "echo:"\n    timeout_s = 1',
        "gateway.toml:13:5: unknown key 'timeout_s' in [[api]] (did you mean 'timeout'?)",
    ),
    "unknown section": (
        "[gatway]\nworkers = 1",
        "gateway.toml:9:2: unknown section [gatway] (did you mean 'gateway'?)",
    ),
    "unknown nested section": (
        "[gateway.tls]\nciphers = 1",
        "gateway.toml:9:10: unknown key 'tls' in [gateway]",
    ),
    "listen address without port": (
        '[gateway]\nlisten = ["127.0.0.1:8443", "localhost"]',
        "gateway.toml:10:29: gateway.listen[1]: invalid listen address 'localhost': "
        'expected "host:port" or "[::1]:port"',
    ),
    "listen address with a bad port": (
        '[gateway]\nlisten = [\n  "127.0.0.1:8443",  # ok\n  "127.0.0.1:70000",\n]',
        "gateway.toml:12:3: gateway.listen[1]: invalid listen address '127.0.0.1:70000': "
        "port must be a number from 0 to 65535",
    ),
    "unbracketed IPv6": (
        '[gateway]\nlisten = ["::1:8443"]',
        "gateway.toml:10:11: gateway.listen[0]: invalid listen address '::1:8443': "
        'write IPv6 addresses in brackets, as "[::1]:8443"',
    ),
    "bad IPv6": (
        '[gateway]\nlisten = ["[::g]:8443"]',
        "gateway.toml:10:11: gateway.listen[0]: invalid listen address '[::g]:8443': "
        "'::g' is not an IPv6 address",
    ),
    "no listen address": (
        "[gateway]\nlisten = []",
        "gateway.toml:10:1: gateway.listen: at least one listen address is required",
    ),
    "listen as a string": (
        '[gateway]\nlisten = "127.0.0.1:8443"',
        "gateway.toml:10:1: gateway.listen: expected an array of strings, got string",
    ),
    "TLS version as a number": (
        "[gateway]\nmin_tls = 1.3",
        'gateway.toml:10:1: gateway.min_tls: expected a string, got float (write "1.3" in quotes)',
    ),
    "unknown TLS version": (
        '[gateway]\nmax_tls = "1.0"',
        'gateway.toml:10:1: gateway.max_tls: "1.0" is not one of "1.2", "1.3"',
    ),
    "min_tls above max_tls": (
        '[gateway]\nmax_tls = "1.2"\nmin_tls = "1.3"',
        'gateway.toml:11:1: gateway.min_tls: "1.3" is newer than max_tls "1.2"',
    ),
    "CIDR with host bits": (
        '[gateway]\nproxy_protocol = ["10.0.0.1/8"]',
        "gateway.toml:10:19: gateway.proxy_protocol[0]: invalid CIDR '10.0.0.1/8': "
        "10.0.0.1/8 has host bits set",
    ),
    "not a CIDR": (
        '[forwarded_client_certificate]\nheader = "X-Cert"\nformat = "pem"\n'
        'trusted_proxies = ["127.0.0.1/32", "proxy.local"]',
        "gateway.toml:12:36: forwarded_client_certificate.trusted_proxies[1]: "
        "invalid CIDR 'proxy.local': 'proxy.local' does not appear to be an IPv4 or IPv6 network",
    ),
    "unknown header format": (
        '[upstream_client_certificate]\nheader = "Client-Cert"\nformat = "der"',
        'gateway.toml:11:1: upstream_client_certificate.format: "der" is not one of "pem", '
        '"pem-urlencoded", "base64-der", "rfc9440", "xfcc"',
    ),
    "upstream has no trusted proxies": (
        '[upstream_client_certificate]\nheader = "Client-Cert"\nformat = "pem"\n'
        'trusted_proxies = []',
        "gateway.toml:12:1: unknown key 'trusted_proxies' in [upstream_client_certificate]",
    ),
    "invalid header name": (
        '[upstream_client_certificate]\nheader = "Client Cert"\nformat = "pem"',
        "gateway.toml:10:1: upstream_client_certificate.header: "
        "'Client Cert' is not a valid HTTP header name",
    ),
    "missing required key in a table": (
        '[forwarded_client_certificate]\nformat = "pem"',
        "gateway.toml:9:2: forwarded_client_certificate: missing required key 'header'",
    ),
    "api path without slash": (
        '[[api]]\nname = "a"\npath = "echo"\nbackend = "echo:"',
        "gateway.toml:11:1: api[0].path: 'echo' must start with \"/\" "
        "and hold no spaces, '?' or '#'",
    ),
    "https backend": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "https://example.com"',
        "gateway.toml:12:1: api[0].backend: https:// backends are not supported yet",
    ),
    "other backend scheme": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "ftp://example.com"',
        'gateway.toml:12:1: api[0].backend: expected "echo:" or "http://host[:port][/base]"',
    ),
    "backend without host": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "http:///base"',
        "gateway.toml:12:1: api[0].backend: the backend URL has no host",
    ),
    "backend with a bad port": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "http://example.com:99999/"',
        "gateway.toml:12:1: api[0].backend: the backend URL has an invalid port",
    ),
    "backend with credentials": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "http://user:pw1@example.com/"',
        "gateway.toml:12:1: api[0].backend: credentials in the backend URL are not supported",
    ),
    "api without backend": (
        '[[api]]\nname = "a"\npath = "/a"',
        "gateway.toml:9:3: api[0]: missing required key 'backend'",
    ),
    "policy file missing": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "echo:"\npolicy = "policies/nope.xml"',
        "gateway.toml:13:1: api[0].policy: file not found: {workdir}/policies/nope.xml",
    ),
    "global policy missing": (
        '[policies]\nglobal = "policies"',
        "gateway.toml:10:1: policies.global: is not a file: {workdir}/policies",
    ),
    "crl file missing": (
        '[revocation]\ncrl_files = ["pki/none.crl"]',
        "gateway.toml:10:14: revocation.crl_files[0]: file not found: {workdir}/pki/none.crl",
    ),
    "crl file not a crl": (
        '[revocation]\ncrl_files = ["pki/garbage.crl"]',
        "gateway.toml:10:14: revocation.crl_files[0]: not a CRL (neither PEM nor DER)",
    ),
    "crl issuer not trusted": (
        '[revocation]\ncrl_files = ["pki/intermediate.crl"]',
        "gateway.toml:10:14: revocation.crl_files[0]: the CRL's issuer "
        "'CN=Config Test Intermediate' is not in the CA store; add its certificate as a "
        "[[ca_certificate]] (root or intermediate)",
    ),
    "revocation mode": (
        '[revocation]\nmode = "strikt"',
        'gateway.toml:10:1: revocation.mode: "strikt" is not one of "strict", '
        '"ignore-unavailable", "skip" (did you mean \'strict\'?)',
    ),
    "admin listen": (
        '[admin]\nlisten = "9901"',
        "gateway.toml:10:1: admin.listen: invalid listen address '9901': "
        'expected "host:port" or "[::1]:port"',
    ),
    "ca store missing": (
        '[[ca_certificate]]\nid = "root"\nfile = "pki/root.pem"',
        "gateway.toml:9:3: ca_certificate[0]: missing required key 'store'",
    ),
    "ca file with a key": (
        '[[ca_certificate]]\nid = "root"\nfile = "pki/server.pem"\nstore = "root"',
        "gateway.toml:11:1: ca_certificate[0].file: cannot load pki/server.pem: "
        "the file contains a private key; a CA file should hold certificates only",
    ),
    "certificate id characters": (
        '[[certificate]]\nid = "my cert"\nfile = "pki/server.cer"',
        "gateway.toml:10:1: certificate[1].id: may only contain letters, digits, '.', '_' and '-'",
    ),
    "certificate without file": (
        '[[certificate]]\nid = "other"',
        "gateway.toml:9:3: certificate[1]: missing required key 'file' (or 'vault')",
    ),
    "certificate with file and vault": (
        '[[certificate]]\nid = "other"\nvault = "file:///v/x"\nfile = "pki/server.cer"',
        "gateway.toml:12:1: certificate[1].file: set either 'file' or 'vault', not both",
    ),
    "vault scheme": (
        '[[certificate]]\nid = "other"\nvault = "https://vault.example/x"',
        "gateway.toml:11:1: certificate[1].vault: only file:// vault references are supported",
    ),
    "zero refresh interval": (
        '[[certificate]]\nid = "other"\nvault = "file:///v/x"\nrefresh_interval = 0',
        "gateway.toml:12:1: certificate[1].refresh_interval: must be greater than 0, got 0",
    ),
    "duplicate certificate id": (
        '[[certificate]]\nid = "server"\nfile = "pki/server.cer"',
        "gateway.toml:10:1: certificate[1].id: certificate id 'server' is already defined "
        "(at line 2)",
    ),
    "key file with a mismatching key": (
        '[[certificate]]\nid = "other"\nfile = "pki/server-split.pem"\nkey_file = "pki/other.key"',
        "gateway.toml:12:1: certificate[1].key_file: cannot load pki/other.key: "
        "the private key does not match any certificate in the file",
    ),
    "hostname certificate unknown": (
        '[[hostname]]\nname = "api.test"\ncertificate = "servr"',
        "gateway.toml:11:1: hostname[1].certificate: no [[certificate]] has id 'servr' "
        "(did you mean 'server'?)",
    ),
    "hostname certificate without key": (
        '[[certificate]]\nid = "public"\nfile = "pki/server.cer"\n\n'
        '[[hostname]]\nname = "api.test"\ncertificate = "public"',
        "gateway.toml:15:1: hostname[1].certificate: "
        "certificate 'public' has no private key; a hostname needs one",
    ),
    "hostname certificate from a vault": (
        '[[certificate]]\nid = "v"\nvault = "file:///v/x"\n\n'
        '[[hostname]]\nname = "api.test"\ncertificate = "v"',
        "gateway.toml:15:1: hostname[1].certificate: certificate 'v' is a vault reference; "
        "vault certificates cannot serve a hostname yet (use 'file')",
    ),
    "required without negotiate": (
        '[[hostname]]\nname = "api.test"\ncertificate = "server"\n'
        "client_certificate_required = true",
        "gateway.toml:12:1: hostname[1].client_certificate_required: requires "
        "negotiate_client_certificate = true (a certificate can only be required when it is "
        "requested in the handshake)",
    ),
    "duplicate hostname (case-insensitive)": (
        '[[hostname]]\nname = "LocalHost"\ncertificate = "server"',
        "gateway.toml:10:1: hostname[1].name: hostname 'localhost' is already defined (at line 6)",
    ),
    "bad wildcard": (
        '[[hostname]]\nname = "api.*.test"\ncertificate = "server"',
        "gateway.toml:10:1: hostname[1].name: '*' is only allowed as the whole first label, "
        'as in "*.example.com"',
    ),
    "bad host name": (
        '[[hostname]]\nname = "bad_host-.test"\ncertificate = "server"',
        "gateway.toml:10:1: hostname[1].name: 'bad_host-.test' is not a valid host name "
        '(or "*.domain", or "default")',
    ),
    "on_demand_body": (
        '[[hostname]]\nname = "api.test"\ncertificate = "server"\non_demand_body = "queue"',
        'gateway.toml:12:1: hostname[1].on_demand_body: "queue" is not one of "spool", '
        '"buffer", "stall"',
    ),
    "duplicate api name": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "echo:"\n\n'
        '[[api]]\nname = "a"\npath = "/b"\nbackend = "echo:"',
        "gateway.toml:15:1: api[1].name: api name 'a' is already defined (at line 10)",
    ),
    "duplicate api path": (
        '[[api]]\nname = "a"\npath = "/a"\nbackend = "echo:"\n\n'
        '[[api]]\nname = "b"\npath = "/a"\nbackend = "echo:"',
        "gateway.toml:16:1: api[1].path: api path '/a' is already defined (at line 11)",
    ),
}


@pytest.mark.parametrize("snippet, expected", ERRORS.values(), ids=ERRORS.keys())
def test_error_position(workdir, snippet, expected):
    write(workdir / "pki" / "other.key", key_pem(new_key()))
    assert problems(with_base(snippet)) == [expected.format(workdir=workdir)]


def test_unknown_top_level_key(workdir):
    assert problems("log_level = 'debug'\n" + BASE) == [
        "gateway.toml:1:1: unknown key 'log_level' at the top level"
    ]


def test_section_of_the_wrong_kind(workdir):
    assert problems("gateway = 5\n" + BASE) == [
        "gateway.toml:1:1: gateway: expected a table [gateway], got integer"
    ]


def test_inline_array_of_tables(workdir):
    text = (
        'api = [{ name = "a", path = "/a", backend = "echo:" }, { name = "b", path = "b", '
        'backend = "echo:" }]\n' + BASE
    )
    assert problems(text) == [
        "gateway.toml:1:70: api[1].path: 'b' must start with \"/\" and hold no spaces, '?' or '#'"
    ]


def test_hostname_as_a_single_table(workdir):
    text = BASE.replace("[[hostname]]", "[hostname]")
    assert problems(text) == [
        "gateway.toml:5:2: hostname: expected [[hostname]] (an array of tables), got table"
    ]


def test_no_hostname(workdir):
    assert problems('[gateway]\nworkers = 1\n') == [
        "gateway.toml: hostname: at least one [[hostname]] is required"
    ]


def test_certificate_load_error_points_at_file(workdir):
    garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    write(workdir / "pki" / "garbage.pem", garbage)
    text = BASE.replace("pki/server.pem", "pki/garbage.pem")
    assert problems(text) == [
        "gateway.toml:3:1: certificate[0].file: cannot load pki/garbage.pem: "
        "PEM block #1 is not a valid certificate"
    ]


def test_certificate_file_missing(workdir):
    text = BASE.replace("pki/server.pem", "pki/missing.pem")
    assert problems(text) == [
        f"gateway.toml:3:1: certificate[0].file: file not found: {workdir}/pki/missing.pem"
    ]


def test_pem_file_holding_der(workdir, certs):
    _, _, leaf = certs
    write(workdir / "pki" / "actually-der.pem", cert_der(leaf.cert))
    text = with_base('[[certificate]]\nid = "der"\nfile = "pki/actually-der.pem"')
    assert load_config(write_config(text)).certificates["der"].loaded.certificate == leaf.cert


def test_several_errors_at_once_in_file_order(workdir):
    text = with_base("""\
        [gateway]
        workers = "two"
        listen = ["nowhere"]
        bogus = true

        [[hostname]]
        name = "localhost"
        certificate = "missing"

        [[api]]
        name = "x"
        path = "x"
        backend = "https://x"
        """)
    assert problems(text) == [
        "gateway.toml:10:1: gateway.workers: expected an integer, got string",
        "gateway.toml:11:11: gateway.listen[0]: invalid listen address 'nowhere': "
        'expected "host:port" or "[::1]:port"',
        "gateway.toml:12:1: unknown key 'bogus' in [gateway]",
        "gateway.toml:15:1: hostname[1].name: hostname 'localhost' is already defined (at line 6)",
        "gateway.toml:16:1: hostname[1].certificate: no [[certificate]] has id 'missing'",
        "gateway.toml:20:1: api[0].path: 'x' must start with \"/\" and hold no spaces, '?' or '#'",
        "gateway.toml:21:1: api[0].backend: https:// backends are not supported yet",
    ]
    assert check_config(Path("gateway.toml")) == problems(text)


# -- syntax and file errors ---------------------------------------------------------------------


def test_toml_syntax_error(workdir):
    assert problems(with_base("[gateway]\nworkers = 1 2\n")) == [
        "gateway.toml:10:13: invalid TOML: Expected newline or end of document after a statement"
    ]


def test_toml_error_at_end_of_document(workdir):
    assert problems(with_base('[gateway]\ndata_dir = "x')) == [
        "gateway.toml:10:14: invalid TOML: Unterminated string"
    ]


def test_duplicate_key_is_a_syntax_error(workdir):
    (line,) = problems(with_base("[gateway]\nworkers = 1\nworkers = 2\n"))
    assert line.startswith("gateway.toml:") and "invalid TOML" in line


def test_missing_config_file(workdir):
    assert check_config(Path("nope.toml")) == ["nope.toml: config file not found"]


def test_not_utf8(workdir):
    Path("gateway.toml").write_bytes(b"[gateway]\nworkers = 1 # caf\xe9\n")
    assert check_config(Path("gateway.toml")) == [
        "gateway.toml:2:18: invalid TOML: the file is not valid UTF-8"
    ]


def test_byte_order_mark_is_accepted(workdir):
    Path("gateway.toml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_config(Path("gateway.toml")).hostnames[0].name == "localhost"


# -- the pieces ---------------------------------------------------------------------------------


def test_problem_str():
    assert str(Problem(Path("gateway.toml"), 3, 7, "x: bad")) == "gateway.toml:3:7: x: bad"
    assert str(Problem(Path("gateway.toml"), None, None, "hostname[1].name: bad")) == (
        "gateway.toml: hostname[1].name: bad"
    )


def test_locator_positions():
    text = textwrap.dedent('''\
        # comment with [brackets] and "quotes"
        title = """
        [not.a.table]
        key = "no"
        """
        [gateway]
        listen = [
          "a",   # first
          'b',
        ]
        'quoted.key' = 1

        [[hostname]]
        name = "a"
        [hostname.extra]
        x = { y = [1, { z = 2 }] }

        [[hostname]]
          name = 'b'
        [a . "b"]
        c.d = 1
        ''')
    locator = KeyLocator(text)
    assert locator.exact(("title",)) == (2, 1)
    assert locator.exact(("not",)) is None
    assert locator.exact(("gateway",)) == (6, 2)
    assert locator.exact(("gateway", "listen", 0)) == (8, 3)
    assert locator.exact(("gateway", "listen", 1)) == (9, 3)
    assert locator.exact(("gateway", "quoted.key")) == (11, 1)
    assert locator.exact(("hostname", 0)) == (13, 3)
    assert locator.exact(("hostname", 0, "extra")) == (15, 11)
    assert locator.exact(("hostname", 0, "extra", "x", "y", 1, "z")) == (16, 17)
    assert locator.exact(("hostname", 1)) == (18, 3)
    assert locator.exact(("hostname", 1, "name")) == (19, 3)
    assert locator.exact(("a", "b")) == (20, 6)
    assert locator.exact(("a", "b", "c", "d")) == (21, 3)
    assert locator.locate(("hostname", 1, "missing")) == (18, 3)
    assert locator.locate(("nothing",)) is None


# -- the locator against generated documents ----------------------------------------------------

_KEYS = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True) | st.sampled_from(
    ['"dotted.key"', "'literal key'", '"with = sign"', '"hash # key"']
)
_TEXT = st.text(alphabet='ab[]{}#="\'\\ ,\t', max_size=12)
_VALUES = st.one_of(
    st.integers(-5, 5).map(str),
    _TEXT.map(json.dumps),
    _TEXT.filter(lambda t: "'" not in t).map(lambda t: f"'{t}'"),
    _TEXT.map(lambda t: '"""\n' + t.replace("\\", "\\\\").replace('"', '\\"') + '\n[x]\n"""'),
    _TEXT.filter(lambda t: "'''" not in t and not t.endswith("'")).map(lambda t: f"'''{t}\n= #'''"),
    st.lists(_TEXT.map(json.dumps), max_size=3).map(
        lambda items: "[\n  " + ",  # c\n  ".join(items) + "\n]"
    ),
    st.just('{ a = 1, b = "}" }'),
)
_TABLES = st.lists(
    st.tuples(
        st.sampled_from(["alpha", "beta", "gamma"]),
        st.booleans(),  # array of tables?
        st.lists(
            st.tuples(_KEYS, _VALUES, st.integers(0, 3)),  # key, value, indentation
            max_size=4,
            unique_by=lambda pair: _unquote(pair[0]),
        ),
    ),
    max_size=5,
)


def _unquote(key: str) -> str:
    return tomllib.loads(f"k = {key}")["k"] if key[0] in "\"'" else key


@settings(max_examples=150, deadline=None)
@given(_TABLES)
def test_locator_finds_every_key_of_generated_documents(tables):
    lines = ["# generated", 'top = "[not a table]"']
    expected = {("top",): (2, 1)}
    seen_tables: dict[str, bool] = {}
    counts: dict[str, int] = {}
    for name, is_array, pairs in tables:
        if name in seen_tables and (not is_array or not seen_tables[name]):
            continue  # TOML forbids redefining a table; keep the document valid
        seen_tables[name] = is_array
        lines.append(f"[[{name}]]" if is_array else f"[{name}]")
        path: tuple = (name,)
        if is_array:
            path = (name, counts.get(name, 0))
            counts[name] = path[1] + 1
        expected[path] = (len(lines), 3 if is_array else 2)
        for key, value, indent in pairs:
            lines.append(" " * indent + f"{key} = {value}  # trailing [comment]")
            expected[path + (_unquote(key),)] = (len(lines), indent + 1)
            lines[-1:] = lines[-1].split("\n")  # multi-line values take several lines
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # the generated document must be valid TOML
    locator = KeyLocator(text)
    for path, position in expected.items():
        assert locator.exact(path) == position, (path, text)

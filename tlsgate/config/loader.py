"""Loading ``gateway.toml`` into a :class:`~tlsgate.config.model.GatewayConfig`.

The loader reads the whole file and reports every problem at once, each with its line and
column, rather than stopping at the first one: fixing a configuration should take one round
trip, not one per mistake. Unknown keys are errors (a misspelt key silently ignored is a
security setting silently lost), and nothing that is accepted is silently ignored either:
sections whose features do not exist yet are reported by :func:`config_warnings`.

Secrets (``password``, ``token``) may be written as ``env:NAME``; their values never appear in
messages.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL

from tlsgate.certs.loading import (
    CertificateLoadError,
    attach_private_key,
    load_ca_file,
    load_certificate_file,
    load_private_key_file,
)
from tlsgate.certs.revocation import ca_certificates_of, load_crls
from tlsgate.config.errors import ConfigError, Problem
from tlsgate.config.model import (
    CA_STORES,
    CERT_HEADER_FORMATS,
    ON_DEMAND_BODY_MODES,
    ON_DEMAND_HTTP2_MODES,
    REVOCATION_MODES,
    TLS_VERSIONS,
    AdminSettings,
    ApiSettings,
    CACertificateEntry,
    CertificateEntry,
    CertificateHeaderSettings,
    GatewayConfig,
    GatewaySettings,
    HostnameSettings,
    LoadedCertificate,
    PoliciesSettings,
    RevocationSettings,
)
from tlsgate.config.positions import KeyLocator, KeyPath, syntax_error_problem
from tlsgate.tls import unbound

TABLE_SECTIONS = (
    "gateway",
    "admin",
    "revocation",
    "policies",
    "forwarded_client_certificate",
    "upstream_client_certificate",
)
ARRAY_SECTIONS = ("certificate", "ca_certificate", "hostname", "api")
NOT_IMPLEMENTED_SECTIONS = ("admin", "forwarded_client_certificate")

_MISSING = object()
_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_PREFIX = "env:"


# -- public API ---------------------------------------------------------------------------------


def load_config(path: Path) -> GatewayConfig:
    """Read, check and resolve a configuration file; raise :class:`ConfigError` listing every
    problem found."""
    file = Path(path)
    text = _read_text(file)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([syntax_error_problem(file, text, error)]) from None
    context = _Context(file, KeyLocator(text))
    config = _build(context, document)
    if context.problems:
        raise ConfigError(sorted(context.problems, key=Problem.sort_key))
    return config


def check_config(path: Path) -> list[str]:
    """Every problem of a configuration as a ``FILE:LINE:COL: message`` line; empty when valid."""
    try:
        load_config(path)
    except ConfigError as error:
        return [str(problem) for problem in error.problems]
    return []


def config_warnings(config: GatewayConfig) -> list[str]:
    """Settings that are accepted but have no effect yet, and other things worth a log line.

    The server logs these at startup, so that no written setting is ignored without a word.
    """
    warnings = [
        f"[{section}] is not implemented yet and is ignored"
        for section in NOT_IMPLEMENTED_SECTIONS
        if section in config.sections
    ]
    revocation = config.revocation
    if "revocation" in config.sections and revocation.fetch_distribution_points:
        warnings.append("revocation.fetch_distribution_points: fetching CRLs from distribution "
                        "points is not implemented yet; only crl_files are used")
    warnings += revocation.load_warnings
    for entry in config.certificates.values():
        if entry.vault is not None:
            warnings.append(
                f"certificate '{entry.id}': vault references are not implemented yet; "
                "the certificate is not loaded"
            )
    warnings += _validity_warnings(config)
    if unbound.load() is None:
        warnings.append("OpenSSL's hook for skipping its own chain check was not found in this "
                        "cryptography wheel (tlsgate/tls/unbound.py): client certificates also "
                        "go through that check, whose verdict is ignored (slower handshakes)")
    return warnings


def _validity_warnings(config: GatewayConfig) -> list[str]:
    """Server certificates that clients will reject because of their dates."""
    now = datetime.now(UTC)
    warnings = []
    for certificate_id in dict.fromkeys(host.certificate for host in config.hostnames):
        loaded = config.certificates[certificate_id].loaded
        if loaded is None:
            continue
        if loaded.certificate.not_valid_after_utc < now:
            warnings.append(f"certificate '{certificate_id}' expired on "
                            f"{loaded.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        elif loaded.certificate.not_valid_before_utc > now:
            warnings.append(f"certificate '{certificate_id}' is not valid before "
                            f"{loaded.certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return warnings


# -- reading ------------------------------------------------------------------------------------


def _read_text(file: Path) -> str:
    """The file's text; a UTF-8 byte order mark (as Windows editors write) is accepted."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, None, "config file not found")]) from None
    except OSError as error:
        message = f"cannot read the config file: {error.strerror or error}"
        raise ConfigError([Problem(file, None, None, message)]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        col = error.start - line_start + 1
        problem = Problem(file, line, col, "invalid TOML: the file is not valid UTF-8")
        raise ConfigError([problem]) from None


def _dotted(path: KeyPath) -> str:
    """``("hostname", 1, "name")`` -> ``hostname[1].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime):
        return "date-time"
    if isinstance(value, date):
        return "date"
    if isinstance(value, time):
        return "time"
    return type(value).__name__


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint for a near miss, such as a misspelt key or id."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Context:
    """What every section reader shares: the file, key positions, and the problems found."""

    def __init__(self, file: Path, locator: KeyLocator) -> None:
        self.file = file
        self.folder = file.absolute().parent
        self.locator = locator
        self.problems: list[Problem] = []

    def report(self, path: KeyPath, message: str) -> None:
        """A problem about ``path``, reported at its key (or its closest written ancestor)."""
        self.report_plain(path, f"{_dotted(path)}: {message}")

    def report_plain(self, path: KeyPath, message: str) -> None:
        """Like :meth:`report`, for messages that already say which key they are about."""
        position = self.locator.locate(path)
        line, col = position if position is not None else (None, None)
        self.problems.append(Problem(self.file, line, col, message))

    def resolve(self, value: str) -> Path:
        """A path from the file, made absolute against the config file's folder."""
        return Path(os.path.normpath(self.folder / Path(value).expanduser()))


# -- typed access to one table ------------------------------------------------------------------


class _Table:
    """One TOML table being read.

    Each getter checks the type and range of its key; on a problem it records it and returns
    the default, so reading goes on and every problem of the file is found. :meth:`finish`
    reports the keys no getter asked for as unknown.
    """

    def __init__(self, context: _Context, path: KeyPath, data: dict[str, Any], title: str):
        self.context = context
        self.path = path
        self.data = data
        self.title = title
        self.known: list[str] = []

    def present(self, key: str) -> bool:
        return key in self.data

    def report(self, key: str, message: str) -> None:
        self.context.report(self.path + (key,), message)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                self.context.report_plain(
                    self.path + (key,),
                    f"unknown key '{key}' in {self.title}{_did_you_mean(key, self.known)}",
                )

    def _get(self, key: str, expected: str, accepts, required: bool) -> Any:
        """The value of ``key`` if present and accepted by ``accepts``, else ``_MISSING``."""
        self.known.append(key)
        if key not in self.data:
            if required:
                self.context.report(self.path, f"missing required key '{key}'")
            return _MISSING
        value = self.data[key]
        if not accepts(value):
            self.report(key, f"expected {expected}, got {_type_name(value)}")
            return _MISSING
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, "a boolean", lambda v: isinstance(v, bool), False)
        return default if value is _MISSING else value

    def integer(self, key: str, default: int | None, *, minimum: int = 0,
                maximum: int | None = None) -> int | None:
        value = self._get(key, "an integer", _is_integer, False)
        if value is _MISSING:
            return default
        if value < minimum:
            self.report(key, f"must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.report(key, f"must be at most {maximum}, got {value}")
            return default
        return value

    def duration(self, key: str, default: float, *, positive: bool = False) -> float:
        """Seconds, as an integer or a float."""
        value = self._get(key, "a number of seconds", _is_number, False)
        if value is _MISSING:
            return default
        if not math.isfinite(value):
            self.report(key, "must be a finite number of seconds")
        elif positive and value <= 0:
            self.report(key, f"must be greater than 0, got {value}")
        elif value < 0:
            self.report(key, f"must be 0 or more, got {value}")
        else:
            return float(value)
        return default

    def string(self, key: str, default: str | None = None, *, required: bool = False):
        value = self._get(key, "a string", lambda v: isinstance(v, str), required)
        if value is _MISSING:
            return default
        if required and not value.strip():
            self.report(key, "must not be empty")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None, *,
               required: bool = False) -> str | None:
        self.known.append(key)
        value = self.data.get(key, _MISSING)
        if value is not _MISSING and not isinstance(value, str) and str(value) in choices:
            hint = f'(write "{value}" in quotes)'
            self.report(key, f"expected a string, got {_type_name(value)} {hint}")
            return default
        value = self.string(key, required=required)
        if value is None:
            return default
        if value not in choices:
            allowed = ", ".join(f'"{choice}"' for choice in choices)
            self.report(key, f'"{value}" is not one of {allowed}{_did_you_mean(value, choices)}')
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> list[tuple[KeyPath, str]]:
        """An array of strings, each with its own path so problems point at the element."""
        value = self._get(key, "an array of strings", lambda v: isinstance(v, list), False)
        if value is _MISSING:
            return [(self.path + (key, index), item) for index, item in enumerate(default)]
        items = []
        for index, item in enumerate(value):
            element = self.path + (key, index)
            if isinstance(item, str):
                items.append((element, item))
            else:
                self.context.report(element, f"expected a string, got {_type_name(item)}")
        return items

    def path_value(self, key: str, *, required: bool = False, must_exist: bool = False,
                   default: str | None = None) -> Path | None:
        value = self.string(key, default, required=required)
        if value is None:
            return None
        return _checked_path(self.context, self.path + (key,), value, must_exist)

    def secret(self, key: str) -> str | None:
        """A secret, literal or ``env:NAME``; its value is never part of a message."""
        value = self.string(key)
        if value is None or not value.startswith(_ENV_PREFIX):
            return value
        name = value[len(_ENV_PREFIX):]
        if not _ENV_NAME.match(name):
            self.report(key, f"'{_ENV_PREFIX}' must be followed by an environment variable name")
            return None
        if name not in os.environ:
            self.report(key, f"environment variable {name} is not set")
            return None
        return os.environ[name]

    def networks(self, key: str) -> tuple[str, ...]:
        """CIDRs such as ``10.0.0.0/8`` (a bare address is one host), normalised."""
        networks = []
        for element, text in self.strings(key):
            try:
                networks.append(str(ipaddress.ip_network(text, strict=True)))
            except ValueError as error:
                self.context.report(element, f"invalid CIDR '{text}': {error}")
        return tuple(networks)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_path(context: _Context, path: KeyPath, value: str, must_exist: bool) -> Path | None:
    if not value.strip():
        context.report(path, "must not be empty")
        return None
    resolved = context.resolve(value)
    if must_exist and not resolved.is_file():
        reason = "is not a file" if resolved.exists() else "file not found"
        context.report(path, f"{reason}: {resolved}")
        return None
    return resolved


class _Unique:
    """Finds values defined twice (ids, names, paths) and says where the first one is."""

    def __init__(self, context: _Context, what: str) -> None:
        self.context = context
        self.what = what
        self.first: dict[str, KeyPath] = {}

    def check(self, table: _Table, key: str, value: str | None) -> bool:
        """True when ``value`` is new (or None: nothing to compare); reports it otherwise."""
        if value is None:
            return True
        if value in self.first:
            position = self.context.locator.exact(self.first[value])
            where = f" (at line {position[0]})" if position else ""
            table.report(key, f"{self.what} '{value}' is already defined{where}")
            return False
        self.first[value] = table.path + (key,)
        return True


def _table(context: _Context, document: dict[str, Any], name: str) -> _Table:
    """The table ``[name]``; an empty one when the section is absent or not a table."""
    data = document.get(name, {})
    if not isinstance(data, dict):
        context.report((name,), f"expected a table [{name}], got {_type_name(data)}")
        data = {}
    return _Table(context, (name,), data, f"[{name}]")


def _array_of_tables(context: _Context, document: dict[str, Any], name: str) -> list[_Table]:
    """The tables of ``[[name]]``."""
    data = document.get(name, [])
    if not isinstance(data, list):
        context.report((name,), f"expected [[{name}]] (an array of tables), got {_type_name(data)}")
        return []
    tables = []
    for index, item in enumerate(data):
        if isinstance(item, dict):
            tables.append(_Table(context, (name, index), item, f"[[{name}]]"))
        else:
            context.report((name, index), f"expected a table, got {_type_name(item)}")
    return tables


# -- sections -----------------------------------------------------------------------------------


def _build(context: _Context, document: dict[str, Any]) -> GatewayConfig:
    _check_sections(context, document)
    certificates = _certificates(context, document)
    hostnames = _hostnames(context, document, certificates)
    ca_certificates = _ca_certificates(context, document)
    return GatewayConfig(
        path=context.file.absolute(),
        gateway=_gateway(context, document),
        admin=_admin(context, document) if "admin" in document else None,
        certificates=certificates,
        ca_certificates=ca_certificates,
        revocation=_revocation(context, document, ca_certificates),
        hostnames=hostnames,
        apis=_apis(context, document),
        policies=_policies(context, document),
        forwarded_client_certificate=_certificate_header(
            context, document, "forwarded_client_certificate", with_proxies=True
        ),
        upstream_client_certificate=_certificate_header(
            context, document, "upstream_client_certificate", with_proxies=False
        ),
        sections=frozenset(key for key in document if key in TABLE_SECTIONS + ARRAY_SECTIONS),
    )


def _check_sections(context: _Context, document: dict[str, Any]) -> None:
    known = TABLE_SECTIONS + ARRAY_SECTIONS
    for key, value in document.items():
        if key in known:
            continue
        hint = _did_you_mean(key, known)
        if _is_table(value):
            context.report_plain((key,), f"unknown section [{key}]{hint}")
        else:
            context.report_plain((key,), f"unknown key '{key}' at the top level{hint}")


def _is_table(value: Any) -> bool:
    """``[name]``, ``[[name]]`` (a non-empty array of tables) or an inline table."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, dict) for item in value)
    return isinstance(value, dict)


def _gateway(context: _Context, document: dict[str, Any]) -> GatewaySettings:
    table = _table(context, document, "gateway")
    defaults = GatewaySettings()
    settings = GatewaySettings(
        listen=_listen_addresses(table, defaults.listen),
        workers=table.integer("workers", defaults.workers, minimum=1),
        data_dir=table.path_value("data_dir", default=str(defaults.data_dir)),
        min_tls=table.choice("min_tls", TLS_VERSIONS, defaults.min_tls),
        max_tls=table.choice("max_tls", TLS_VERSIONS, defaults.max_tls),
        handshake_timeout=table.duration("handshake_timeout", defaults.handshake_timeout),
        idle_timeout=table.duration("idle_timeout", defaults.idle_timeout),
        proxy_protocol=table.networks("proxy_protocol"),
        max_header_size=table.integer("max_header_size", defaults.max_header_size, minimum=1),
        max_body_size=table.integer("max_body_size", defaults.max_body_size),
        http2_max_concurrent_streams=table.integer(
            "http2_max_concurrent_streams", defaults.http2_max_concurrent_streams, minimum=1
        ),
        session_tickets=table.boolean("session_tickets", defaults.session_tickets),
        session_ticket_count=table.integer(
            "session_ticket_count", defaults.session_ticket_count, maximum=16),
        session_cache_size=table.integer(
            "session_cache_size", defaults.session_cache_size, minimum=1, maximum=10_000_000),
    )
    _check_unbound_openssl(table, settings, defaults)
    if TLS_VERSIONS.index(settings.min_tls) > TLS_VERSIONS.index(settings.max_tls):
        table.report(
            "min_tls", f'"{settings.min_tls}" is newer than max_tls "{settings.max_tls}"'
        )
    table.finish()
    return settings


def _check_unbound_openssl(table: _Table, settings: GatewaySettings,
                          defaults: GatewaySettings) -> None:
    """Settings OpenSSL takes only through functions the bindings leave out
    (:mod:`tlsgate.tls.unbound`): refused, not ignored, where those cannot be found."""
    if unbound.load() is not None:
        return
    for key in ("session_ticket_count", "session_cache_size"):
        if getattr(settings, key) != getattr(defaults, key):
            table.report(key, "this cryptography wheel's OpenSSL offers no way to set it "
                              "(see tlsgate/tls/unbound.py); leave the default")


def _listen_addresses(table: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    addresses: list[str] = []
    for element, text in table.strings("listen", default):
        error = listen_address_error(text)
        if error:
            table.context.report(element, error)
        elif text in addresses:
            table.context.report(element, f"'{text}' is listed twice")
        else:
            addresses.append(text)
    if table.data.get("listen") == []:
        table.report("listen", "at least one listen address is required")
    return tuple(addresses)


def listen_address_error(text: str) -> str | None:
    """Why ``text`` is not a ``host:port`` / ``[v6]:port`` address, or None if it is one."""
    host, separator, port = text.rpartition(":")
    if not separator or not host:
        return f"invalid listen address '{text}': expected \"host:port\" or \"[::1]:port\""
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        return f"invalid listen address '{text}': port must be a number from 0 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"invalid listen address '{text}': '{host[1:-1]}' is not an IPv6 address"
        return None
    if ":" in host:
        return (
            f"invalid listen address '{text}': "
            'write IPv6 addresses in brackets, as "[::1]:8443"'
        )
    if not _is_host_name(host):
        return f"invalid listen address '{text}': '{host}' is not a host name or IPv4 address"
    return None


def _is_host_name(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def _admin(context: _Context, document: dict[str, Any]) -> AdminSettings:
    table = _table(context, document, "admin")
    listen = table.string("listen", AdminSettings.listen)
    error = listen_address_error(listen)
    if error:
        table.report("listen", error)
    token = table.secret("token")
    if token is not None and not token.strip():
        table.report("token", "must not be empty")
    table.finish()
    return AdminSettings(listen=listen, token=token)


def _certificates(context: _Context, document: dict[str, Any]) -> dict[str, CertificateEntry]:
    entries: dict[str, CertificateEntry] = {}
    ids = _Unique(context, "certificate id")
    for table in _array_of_tables(context, document, "certificate"):
        entry = _certificate(table)
        if entry is not None and ids.check(table, "id", entry.id):
            entries[entry.id] = entry
    return entries


def _certificate(table: _Table) -> CertificateEntry | None:
    certificate_id = _identifier(table)
    password = table.secret("password")
    vault = _vault(table)
    refresh_interval = table.duration("refresh_interval", 14400.0, positive=True)
    file = table.path_value("file", must_exist=True)
    key_file = table.path_value("key_file", must_exist=True)
    loaded = None
    # Without its password (an unset variable, already reported) the file cannot be opened.
    password_usable = password is not None or not table.present("password")
    if file is not None and vault is None and password_usable:
        loaded = _load_certificate(table, file, key_file, password)
    table.finish()
    if certificate_id is None:
        return None
    return CertificateEntry(id=certificate_id, file=file, loaded=loaded, password=password,
                            vault=vault, refresh_interval=refresh_interval, key_file=key_file)


def _vault(table: _Table) -> str | None:
    """The ``vault`` reference, which replaces ``file`` and ``key_file``."""
    vault = table.string("vault")
    if vault is None:
        if not table.present("file"):
            table.context.report(table.path, "missing required key 'file' (or 'vault')")
        return None
    parts = urlsplit(vault)
    if parts.scheme != "file":
        table.report("vault", "only file:// vault references are supported")
    elif parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        table.report("vault", 'expected an absolute reference such as "file:///srv/vault/gateway"')
    for key in ("file", "key_file"):
        if table.present(key):
            table.report(key, f"set either '{key}' or 'vault', not both")
    return vault


def _load_certificate(
    table: _Table, file: Path, key_file: Path | None, password: str | None
) -> LoadedCertificate | None:
    """The certificate of ``file`` with the key of ``key_file``; problems point at their key."""
    loaded = _load(table, "file", load_certificate_file, file, password)
    if loaded is None or key_file is None:
        return loaded
    key = _load(table, "key_file", load_private_key_file, key_file, password)
    if key is None:
        return None
    return _load(table, "key_file", attach_private_key, loaded, key)


def _identifier(table: _Table) -> str | None:
    value = table.string("id", required=True)
    if value is not None and not _ID.match(value):
        table.report("id", "may only contain letters, digits, '.', '_' and '-'")
        return None
    return value


def _load(table: _Table, key: str, loader: Callable[..., Any], *args: Any) -> Any:
    """``loader(*args)``, a certificate loader; its error becomes a problem at ``key``."""
    try:
        return loader(*args)
    except CertificateLoadError as error:
        table.report(key, f"cannot load {table.data[key]}: {error.message}")
        return None


def _ca_certificates(context: _Context, document: dict[str, Any]) -> dict[str, CACertificateEntry]:
    entries: dict[str, CACertificateEntry] = {}
    ids = _Unique(context, "ca_certificate id")
    for table in _array_of_tables(context, document, "ca_certificate"):
        certificate_id = _identifier(table)
        unique = ids.check(table, "id", certificate_id)
        file = table.path_value("file", required=True, must_exist=True)
        store = table.choice("store", CA_STORES, required=True)
        table.finish()
        certificates = _load(table, "file", load_ca_file, file) if file else None
        if unique and None not in (certificate_id, file, store, certificates):
            entries[certificate_id] = CACertificateEntry(certificate_id, file, store, certificates)
    return entries


def _revocation(context: _Context, document: dict[str, Any],
                ca_entries: dict[str, CACertificateEntry]) -> RevocationSettings:
    table = _table(context, document, "revocation")
    defaults = RevocationSettings()
    files = [
        (element, path)
        for element, text in table.strings("crl_files")
        if (path := _checked_path(context, element, text, must_exist=True)) is not None
    ]
    mode = table.choice("mode", REVOCATION_MODES, defaults.mode)
    fetch = table.boolean("fetch_distribution_points", defaults.fetch_distribution_points)
    fetch_timeout = table.duration("fetch_timeout", defaults.fetch_timeout)
    table.finish()
    crls, warnings = _load_crls(context, files, ca_entries)
    return RevocationSettings(
        mode=mode or defaults.mode,
        crl_files=tuple(path for _, path in files),
        fetch_distribution_points=fetch,
        fetch_timeout=fetch_timeout,
        crls=crls,
        load_warnings=warnings,
    )


def _load_crls(context: _Context, files: list[tuple[KeyPath, Path]],
               ca_entries: dict[str, CACertificateEntry]) -> tuple[tuple, tuple[str, ...]]:
    """Read and check every CRL (signature by a CA of the store); errors at their entry."""
    if not files:
        return (), ()
    result = load_crls([path for _, path in files], ca_certificates_of(ca_entries.values()))
    warnings = []
    for problem in result.problems:
        element = files[problem.index][0]
        if problem.severity == "error":
            context.report(element, problem.message)
        else:
            warnings.append(f"{_dotted(element)}: {problem.message}")
    return result.crls, tuple(warnings)


def _hostnames(
    context: _Context, document: dict[str, Any], certificates: dict[str, CertificateEntry]
) -> tuple[HostnameSettings, ...]:
    hostnames: list[HostnameSettings] = []
    names = _Unique(context, "hostname")
    tables = _array_of_tables(context, document, "hostname")
    if not tables and isinstance(document.get("hostname", []), list):
        context.report(("hostname",), "at least one [[hostname]] is required")
    for table in tables:
        settings = _hostname(table, names, certificates)
        if settings is not None:
            hostnames.append(settings)
    return tuple(hostnames)


def _hostname(
    table: _Table, names: _Unique, certificates: dict[str, CertificateEntry]
) -> HostnameSettings | None:
    name = _hostname_name(table, names)
    certificate = table.string("certificate", required=True)
    if certificate is not None and not _server_certificate_ok(table, certificate, certificates):
        certificate = None
    settings = _client_certificate_settings(table)
    table.finish()
    if name is None or certificate is None:
        return None
    return HostnameSettings(name=name, certificate=certificate, **settings)


def _hostname_name(table: _Table, names: _Unique) -> str | None:
    """The entry's name, lowercased: SNI and Host are case-insensitive."""
    name = table.string("name", required=True)
    if name is None:
        return None
    error = hostname_error(name)
    if error:
        table.report("name", error)
        return None
    name = name.lower()
    return name if names.check(table, "name", name) else None


def _client_certificate_settings(table: _Table) -> dict[str, Any]:
    """How a [[hostname]] obtains the client certificate (SPEC §3)."""
    defaults = HostnameSettings(name="", certificate="")
    negotiate = table.boolean("negotiate_client_certificate", defaults.negotiate_client_certificate)
    required = table.boolean("client_certificate_required", defaults.client_certificate_required)
    if required and not negotiate:
        table.report(
            "client_certificate_required",
            "requires negotiate_client_certificate = true "
            "(a certificate can only be required when it is requested in the handshake)",
        )
    return dict(
        negotiate_client_certificate=negotiate,
        client_certificate_required=required,
        http2=table.boolean("http2", defaults.http2),
        on_demand_body=table.choice(
            "on_demand_body", ON_DEMAND_BODY_MODES, defaults.on_demand_body
        ),
        on_demand_buffer_limit=table.integer(
            "on_demand_buffer_limit", defaults.on_demand_buffer_limit
        ),
        on_demand_spool_limit=table.integer(
            "on_demand_spool_limit", defaults.on_demand_spool_limit
        ),
        upload_read_ahead=table.integer("upload_read_ahead", defaults.upload_read_ahead),
        on_demand_timeout=table.duration("on_demand_timeout", defaults.on_demand_timeout),
        on_demand_http2=table.choice(
            "on_demand_http2", ON_DEMAND_HTTP2_MODES, defaults.on_demand_http2
        ),
    )


def hostname_error(name: str) -> str | None:
    """Why ``name`` cannot be a [[hostname]] name, or None: an exact name, ``*.domain`` or
    ``default``."""
    if name == "default":
        return None
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "a wildcard needs a domain, as in \"*.example.com\""
    if any("*" in label for label in labels):
        return "'*' is only allowed as the whole first label, as in \"*.example.com\""
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return f"'{name}' is not a valid host name (or \"*.domain\", or \"default\")"
    return None


def _server_certificate_ok(
    table: _Table, certificate_id: str, certificates: dict[str, CertificateEntry]
) -> bool:
    """A hostname needs a [[certificate]] that was loaded with its private key."""
    entry = certificates.get(certificate_id)
    if entry is None:
        hint = _did_you_mean(certificate_id, list(certificates))
        table.report("certificate", f"no [[certificate]] has id '{certificate_id}'{hint}")
        return False
    if entry.vault is not None:
        table.report(
            "certificate",
            f"certificate '{certificate_id}' is a vault reference; vault certificates cannot "
            "serve a hostname yet (use 'file')",
        )
        return False
    if entry.loaded is None:
        return False  # its loading problem is already reported
    if entry.loaded.private_key is None:
        table.report(
            "certificate",
            f"certificate '{certificate_id}' has no private key; a hostname needs one",
        )
        return False
    refusal = openssl_refusal(entry.loaded)
    if refusal is not None:
        table.report("certificate", f"OpenSSL refuses certificate '{certificate_id}': {refusal}")
        return False
    return True


def openssl_refusal(loaded: LoadedCertificate) -> str | None:
    """Why OpenSSL will not serve with this certificate and key, or None.

    The file can be well-formed and still refused, e.g. a key below OpenSSL's security level
    ("ee key too small"); found here, it is an error with a position instead of a failure when
    the TLS contexts are built.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate(loaded.certificate)
        for extra in loaded.chain:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(loaded.private_key)
        ctx.check_privatekey()
    except SSL.Error as error:
        return openssl_reason(error)
    return None


def openssl_reason(error: SSL.Error) -> str:
    """The reasons of an OpenSSL error queue, e.g. ``ee key too small``."""
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [item[2] for item in queue if isinstance(item, tuple) and len(item) == 3 and item[2]]
    return "; ".join(reasons) or str(error) or "unknown error"


def _apis(context: _Context, document: dict[str, Any]) -> tuple[ApiSettings, ...]:
    apis: list[ApiSettings] = []
    names = _Unique(context, "api name")
    paths = _Unique(context, "api path")
    for table in _array_of_tables(context, document, "api"):
        api = _api(table, names, paths)
        if api is not None:
            apis.append(api)
    return tuple(apis)


def _api(table: _Table, names: _Unique, paths: _Unique) -> ApiSettings | None:
    name = table.string("name", required=True)
    if not names.check(table, "name", name):
        name = None
    path = _api_path(table, paths)
    backend = table.string("backend", required=True)
    if backend is not None and (error := backend_error(backend)):
        table.report("backend", error)
        backend = None
    policy = table.path_value("policy", must_exist=True)
    timeout = table.duration("timeout", 30.0)
    max_body_size = table.integer("max_body_size", None)
    table.finish()
    if name is None or path is None or backend is None:
        return None
    return ApiSettings(name=name, path=path, backend=backend, policy=policy, timeout=timeout,
                       max_body_size=max_body_size)


def _api_path(table: _Table, paths: _Unique) -> str | None:
    """The path prefix the API is routed by; two APIs cannot share one."""
    path = table.string("path", required=True)
    if path is None:
        return None
    if not path.startswith("/") or re.search(r"[\s?#]", path):
        table.report("path", f"'{path}' must start with \"/\" and hold no spaces, '?' or '#'")
        return None
    return path if paths.check(table, "path", path) else None


def backend_error(backend: str) -> str | None:
    """Why ``backend`` is not ``echo:`` or ``http://host[:port][/base]``, or None.

    The value itself is never repeated: a URL may carry credentials.
    """
    if backend == "echo:":
        return None
    parts = urlsplit(backend)
    if parts.scheme == "https":
        return "https:// backends are not supported yet"
    if parts.scheme != "http":
        return 'expected "echo:" or "http://host[:port][/base]"'
    if parts.username is not None or parts.password is not None:
        return "credentials in the backend URL are not supported"
    if not parts.hostname:
        return "the backend URL has no host"
    try:
        _ = parts.port  # urllib checks the port only when it is read
    except ValueError:
        return "the backend URL has an invalid port"
    if parts.query or parts.fragment or backend.endswith(("?", "#")):
        return "the backend URL may not have a query or a fragment"
    return None


def _policies(context: _Context, document: dict[str, Any]) -> PoliciesSettings:
    table = _table(context, document, "policies")
    settings = PoliciesSettings(global_policy=table.path_value("global", must_exist=True),
                                compile=table.boolean("compile", True))
    table.finish()
    return settings


def _certificate_header(
    context: _Context, document: dict[str, Any], name: str, *, with_proxies: bool
) -> CertificateHeaderSettings | None:
    if name not in document:
        return None
    table = _table(context, document, name)
    header = table.string("header", required=True)
    if header is not None and not _HEADER_NAME.match(header):
        table.report("header", f"'{header}' is not a valid HTTP header name")
        header = None
    header_format = table.choice("format", CERT_HEADER_FORMATS, required=True)
    trusted_proxies = table.networks("trusted_proxies") if with_proxies else ()
    table.finish()
    if header is None or header_format is None:
        return None
    return CertificateHeaderSettings(header, header_format, trusted_proxies)

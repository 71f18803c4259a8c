"""validate-client-certificate over real TLS with curl and the dev PKI certificates.

The gateways negotiate the client certificate in the handshake, trust the dev root (with the
intermediate in the intermediate store) and load the dev CRL in ``strict`` mode, unless a test
says otherwise. Every switch (validate-trust, validate-not-before, validate-not-after,
validate-revocation, ignore-error) is tried alone against every kind of certificate, each
identity attribute matching and not matching, AND within an identity and OR across
identities, and on-error with ``context.LastError``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from policy_support import (
    INTERMEDIATE_ISSUER,
    STRICT_WITH_CRL,
    access_log,
    policy_gateway,
    request,
    unique,
)

from tlsgate.certs.identity import thumbprint
from tlsgate.certs.loading import load_certificate_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "policies"


def policy(inbound: str, on_error: str = "") -> str:
    on_error = f"<on-error>{on_error}</on-error>" if on_error else ""
    return f"<policies><inbound>{inbound}</inbound>{on_error}</policies>"


def validate(attributes: str = "", identities: str = "") -> str:
    inner = f"<identities>{identities}</identities>" if identities else ""
    return policy(f"<validate-client-certificate {attributes}>{inner}"
                  "</validate-client-certificate>")


def self_signed_expired(directory: Path) -> Path:
    """A self-signed clientAuth certificate that expired 10 days ago (+ its key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-selfsigned-expired")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=40)).not_valid_after(now - timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = directory / "selfsigned-expired.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return pem


# -- every switch alone against every certificate ----------------------------------------------

SWITCHES = {
    "default": "",
    "no-trust": 'validate-trust="false"',
    "no-trust-no-revocation": 'validate-trust="false" validate-revocation="false"',
    "no-dates": 'validate-not-before="false" validate-not-after="false"',
    "no-not-after": 'validate-not-after="false"',
    "no-not-before": 'validate-not-before="false"',
    "no-revocation": 'validate-revocation="false"',
    "nothing": 'validate-trust="false" validate-revocation="false" '
               'validate-not-before="false" validate-not-after="false"',
    "explicit-defaults": 'validate-revocation="true" validate-trust="true" '
                         'validate-not-before="true" validate-not-after="true" '
                         'ignore-error="false"',
}
OK = None
MISSING, NOT_TRUSTED = "ClientCertificateMissing", "ClientCertificateNotTrusted"
EXPIRED, NOT_YET = "ClientCertificateExpired", "ClientCertificateNotYetValid"
REVOKED, UNKNOWN = "ClientCertificateRevoked", "ClientCertificateRevocationUnknown"
MISMATCH = "ClientCertificateIdentityMismatch"

CERTS = ("client", "client-expired", "client-notyet", "client-revoked", "client-selfsigned",
         "client-foreign", "selfsigned-expired", None)
# switch set -> outcome per certificate, in CERTS order (None = 200).
EXPECTED = {
    "default": (OK, EXPIRED, NOT_YET, REVOKED, NOT_TRUSTED, NOT_TRUSTED, NOT_TRUSTED, MISSING),
    # Untrusted certificates are still dated; the foreign client's issuer (the foreign root,
    # sent in its chain) has no CRL here: unknown in strict mode. A self-signed certificate,
    # like any trust anchor, has no CRL to be in.
    "no-trust": (OK, EXPIRED, NOT_YET, REVOKED, OK, UNKNOWN, EXPIRED, MISSING),
    "no-trust-no-revocation": (OK, EXPIRED, NOT_YET, OK, OK, OK, EXPIRED, MISSING),
    # Trust first: an expired certificate from nowhere is "not trusted", whatever the dates.
    "no-dates": (OK, OK, OK, REVOKED, NOT_TRUSTED, NOT_TRUSTED, NOT_TRUSTED, MISSING),
    "no-not-after": (OK, OK, NOT_YET, REVOKED, NOT_TRUSTED, NOT_TRUSTED, NOT_TRUSTED, MISSING),
    "no-not-before": (OK, EXPIRED, OK, REVOKED, NOT_TRUSTED, NOT_TRUSTED, NOT_TRUSTED, MISSING),
    "no-revocation": (OK, EXPIRED, NOT_YET, OK, NOT_TRUSTED, NOT_TRUSTED, NOT_TRUSTED, MISSING),
    "nothing": (OK, OK, OK, OK, OK, OK, OK, MISSING),
}
EXPECTED["explicit-defaults"] = EXPECTED["default"]
MESSAGES = {
    MISSING: "Client certificate is missing.",
    NOT_TRUSTED: "Client certificate is not trusted: ",
    EXPIRED: "Client certificate has expired: ",
    NOT_YET: "Client certificate is not valid yet: ",
    REVOKED: "Client certificate is revoked: ",
    UNKNOWN: "Client certificate revocation status is unknown: ",
    MISMATCH: "Client certificate does not match any allowed identity: ",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate")


@pytest.fixture(scope="module")
def expired_selfsigned(workdir) -> Path:
    return self_signed_expired(workdir)


def identity_values(pki: Path, thumbprints: dict) -> dict[str, tuple[str, str]]:
    """identity attribute -> (a value the dev client matches, one it does not)."""
    client, revoked = thumbprints["client.pem"], thumbprints["client-revoked.pem"]
    intermediate = load_certificate_file(pki / "intermediate.pem").certificate
    root = load_certificate_file(pki / "root.pem").certificate
    colons = ":".join(client["thumbprint"][i:i + 2] for i in range(0, 40, 2)).lower()
    return {
        "thumbprint": (colons, revoked["thumbprint"]),
        "serial-number": ("00" + client["serial_number"].lower(), revoked["serial_number"]),
        "common-name": ("CLIENT-VALID", "client-revoked"),
        "subject": (client["subject"].replace(", ", ",").upper(), revoked["subject"]),
        "dns-name": ("client-valid.tlsgate.test", "client-revoked.tlsgate.test"),
        "issuer-subject": (INTERMEDIATE_ISSUER, root.subject.rfc4514_string()),
        "issuer-thumbprint": (thumbprint(intermediate), thumbprint(root)),
        "issuer-certificate-id": ("intermediate-ca", "root-ca"),
    }


STORE = """
[[certificate]]
id = "intermediate-ca"
file = "{pki}/intermediate.pem"

[[certificate]]
id = "root-ca"
file = "{pki}/root.pem"
"""

LAST_ERROR = policy(
    '<choose><when condition="@(context.Request.Method != &quot;DELETE&quot;)">'
    '<validate-client-certificate id="mtls-check" /></when></choose>',
    on_error="""
        <return-response>
            <set-status code="495" reason="@(context.LastError.Reason)" />
            <set-header name="X-Source"><value>@(context.LastError.Source)</value></set-header>
            <set-header name="X-Section"><value>@(context.LastError.Section)</value></set-header>
            <set-header name="X-Path"><value>@(context.LastError.Path)</value></set-header>
            <set-header name="X-Policy-Id">
                <value>@(context.LastError.PolicyId)</value>
            </set-header>
            <set-header name="X-Scope"><value>@(context.LastError.Scope)</value></set-header>
            <set-body>@(context.LastError.Message)</set-body>
        </return-response>""")

ON_ERROR_STATUS_ONLY = policy(
    "<validate-client-certificate />",
    on_error='<set-status code="401" reason="Unauthorized" />')


@pytest.fixture(scope="module")
def gateway(workdir, pki, thumbprints):
    apis = {name: validate(attributes) for name, attributes in SWITCHES.items()}
    apis["ignore"] = validate('ignore-error="true"')
    apis["ignore-identity"] = validate('ignore-error="true"',
                                       '<identity common-name="nobody" />')
    for attribute, (match, miss) in identity_values(pki, thumbprints).items():
        apis[f"id-{attribute}-match"] = validate(identities=f'<identity {attribute}="{match}" />')
        apis[f"id-{attribute}-miss"] = validate(identities=f'<identity {attribute}="{miss}" />')
    client = thumbprints["client.pem"]
    apis["id-and"] = validate(identities=(
        f'<identity common-name="client-valid" serial-number="{client["serial_number"]}" '
        f'subject="{client["subject"]}" issuer-subject="{INTERMEDIATE_ISSUER}" />'))
    apis["id-and-one-wrong"] = validate(identities=(
        f'<identity common-name="client-valid" serial-number="{client["serial_number"]}" '
        f'subject="{client["subject"]}" issuer-subject="CN=someone else" />'))
    apis["id-or"] = validate(identities=(
        '<identity common-name="nobody" />'
        '<identity thumbprint="0000000000000000000000000000000000000000" />'
        f'<identity thumbprint="{client["thumbprint"]}" />'))
    apis["id-or-none"] = validate(identities=(
        '<identity common-name="nobody" /><identity dns-name="nobody.example" />'))
    apis["id-ten"] = validate(identities="".join(
        f'<identity common-name="nobody-{i}" />' for i in range(9)) +
        '<identity common-name="client-valid" />')
    apis["last-error"] = LAST_ERROR
    apis["status-only"] = ON_ERROR_STATUS_ONLY
    apis["fixture"] = (FIXTURES / "validate.xml").read_text()
    apis["fixture-on-error"] = (FIXTURES / "validate-on-error.xml").read_text()
    with policy_gateway(workdir / "gw", pki, apis, certificates=STORE,
                        revocation=STRICT_WITH_CRL) as running:
        yield running


def check(reply, expected: str | None) -> None:
    if expected is None:
        assert reply.status == 200, (reply, reply.stderr)
        assert "client_certificate" in reply.json()
        return
    assert reply.status == 403, (reply, reply.stderr)
    assert reply.reason == "Forbidden"
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["statusCode"] == 403 and body["reason"] == expected, body
    assert body["message"].startswith(MESSAGES[expected]), body
    assert set(body) == {"statusCode", "message", "reason"}


@pytest.mark.parametrize("switches", list(SWITCHES))
def test_switches(gateway, pki, expired_selfsigned, switches):
    """Each switch honoured on its own, for every kind of certificate."""
    for cert, expected in zip(CERTS, EXPECTED[switches], strict=True):
        client = expired_selfsigned if cert == "selfsigned-expired" else cert
        reply = request(gateway.port, pki, f"/{switches}", cert=client)
        try:
            check(reply, expected)
        except AssertionError as error:
            raise AssertionError(f"{switches} / {cert}: {error}") from None


def test_failure_reason_and_origin_in_the_access_log(gateway, pki):
    with access_log() as log:
        cases = {"client-revoked": REVOKED, "client-expired": EXPIRED, None: MISSING}
        for cert, reason in cases.items():
            path = unique("/default")
            assert request(gateway.port, pki, path, cert=cert).status == 403
            line = log.find(path)
            assert (line["status"], line["reason"]) == (403, reason)
            assert line["certificate_origin"] == ("none" if cert is None else "handshake")
        path = unique("/default")
        assert request(gateway.port, pki, path, cert="client").status == 200
        assert log.find(path)["reason"] is None


def test_http2_gets_the_same_answer(gateway, pki):
    reply = request(gateway.port, pki, "/default", cert="client-revoked", http="2")
    assert reply.status == 403 and reply.json()["reason"] == REVOKED
    assert request(gateway.port, pki, "/default", cert="client", http="2").status == 200


@pytest.mark.parametrize("attribute", ["thumbprint", "serial-number", "common-name", "subject",
                                       "dns-name", "issuer-subject", "issuer-thumbprint",
                                       "issuer-certificate-id"])
def test_identity_attribute(gateway, pki, attribute):
    check(request(gateway.port, pki, f"/id-{attribute}-match"), None)
    check(request(gateway.port, pki, f"/id-{attribute}-miss"), MISMATCH)
    # Validation comes first: a revoked certificate is revoked, matching or not.
    check(request(gateway.port, pki, f"/id-{attribute}-match", cert="client-revoked"), REVOKED)


def test_identities_and_within_or_across(gateway, pki):
    check(request(gateway.port, pki, "/id-and"), None)
    check(request(gateway.port, pki, "/id-and-one-wrong"), MISMATCH)
    check(request(gateway.port, pki, "/id-or"), None)
    check(request(gateway.port, pki, "/id-or-none"), MISMATCH)
    check(request(gateway.port, pki, "/id-ten"), None)
    reply = request(gateway.port, pki, "/id-or-none")
    assert "matches none of the 2 identities" in reply.json()["message"]


def test_ignore_error_lets_the_request_through_and_records_the_reason(gateway, pki):
    with access_log() as log:
        for cert, reason in (("client-expired", EXPIRED), ("client-revoked", REVOKED),
                             (None, MISSING), ("client", None)):
            path = unique("/ignore")
            reply = request(gateway.port, pki, path, cert=cert)
            assert reply.status == 200, reply
            line = log.find(path)
            assert line["reason"] == (f"{reason} (ignored)" if reason else None)
        path = unique("/ignore-identity")
        assert request(gateway.port, pki, path).status == 200
        assert log.find(path)["reason"] == f"{MISMATCH} (ignored)"


def test_on_error_sees_last_error(gateway, pki):
    reply = request(gateway.port, pki, "/last-error", cert="client-expired")
    assert (reply.status, reply.reason) == (495, EXPIRED)
    assert reply.headers["x-source"] == "validate-client-certificate"
    assert reply.headers["x-section"] == "inbound"
    assert reply.headers["x-path"] == "choose[1]\\when[1]\\validate-client-certificate[1]"
    assert reply.headers["x-policy-id"] == "mtls-check"
    assert reply.headers["x-scope"] == "api"
    assert reply.body.decode().startswith("Client certificate has expired: the certificate "
                                          "'CN=client-expired")
    assert request(gateway.port, pki, "/last-error", cert="client").status == 200
    # The condition is false for DELETE: nothing is validated.
    assert request(gateway.port, pki, "/last-error", cert=None, method="DELETE").status == 200


def test_on_error_status_without_body_keeps_the_json_error(gateway, pki):
    reply = request(gateway.port, pki, "/status-only", cert="client-selfsigned")
    assert (reply.status, reply.reason) == (401, "Unauthorized")
    assert reply.json()["statusCode"] == 401
    assert reply.json()["reason"] == NOT_TRUSTED


def test_fixture_validate(gateway, pki):
    check(request(gateway.port, pki, "/fixture"), None)
    for cert, reason in (("client-revoked", REVOKED), ("client-foreign", NOT_TRUSTED),
                         (None, MISSING)):
        check(request(gateway.port, pki, "/fixture", cert=cert), reason)


def test_fixture_on_error_branches_on_the_reason(gateway, pki):
    check(request(gateway.port, pki, "/fixture-on-error"), None)
    reply = request(gateway.port, pki, "/fixture-on-error", cert=None)
    assert (reply.status, reply.reason) == (401, "Client certificate required")
    assert reply.headers["www-authenticate"] == "mutual-tls"
    assert reply.body == b"A client certificate is required."
    reply = request(gateway.port, pki, "/fixture-on-error", cert="client-selfsigned")
    assert reply.status == 403 and reply.json()["reason"] == NOT_TRUSTED
    assert reply.headers["x-policy-error"] == NOT_TRUSTED


def test_identity_mismatch_branch_reads_the_certificate(workdir, pki):
    """on-error reads context.Request.Certificate (the identity-mismatch branch)."""
    text = (FIXTURES / "validate-on-error.xml").read_text().replace(
        '"client-valid"', '"somebody-else"').replace("client-valid.tlsgate.test", "x.example")
    with policy_gateway(workdir / "mismatch", pki, {"api": text}) as running:
        reply = request(running.port, pki, "/api")
    assert (reply.status, reply.reason) == (403, "Unknown client")
    assert reply.headers["content-type"] == "text/plain"
    assert reply.body == b"Unknown client: CN=client-valid, OU=dev, O=tlsgate, C=US"


# -- revocation modes ------------------------------------------------------------------------

REVOCATION_APIS = {"default": validate(), "no-revocation": validate('validate-revocation="false"'),
                   "no-trust": validate('validate-trust="false"')}


@pytest.mark.parametrize("mode, crl, expected", [
    # No CRL for the intermediate: strict cannot vouch for anyone.
    ("strict", False, {("default", "client"): UNKNOWN, ("default", "client-revoked"): UNKNOWN,
                       ("no-revocation", "client"): OK, ("no-trust", "client"): UNKNOWN,
                       ("no-trust", "client-selfsigned"): OK}),
    ("ignore-unavailable", False, {("default", "client"): OK, ("default", "client-revoked"): OK,
                                   ("no-trust", "client-foreign"): OK}),
    ("ignore-unavailable", True, {("default", "client"): OK,
                                  ("default", "client-revoked"): REVOKED}),
    ("skip", True, {("default", "client"): OK, ("default", "client-revoked"): OK,
                    ("no-trust", "client-foreign"): OK}),
])
def test_revocation_modes(workdir, pki, mode, crl, expected):
    crls = '["{pki}/intermediate.crl"]' if crl else "[]"
    revocation = f'mode = "{mode}"\ncrl_files = {crls}'
    with policy_gateway(workdir / f"rev-{mode}-{crl}", pki, REVOCATION_APIS,
                        revocation=revocation) as running:
        for (api, cert), outcome in expected.items():
            try:
                check(request(running.port, pki, f"/{api}", cert=cert), outcome)
            except AssertionError as error:
                raise AssertionError(f"{mode}/{crl} {api} {cert}: {error}") from None

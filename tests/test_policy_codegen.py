"""Inbound sections compiled to Python (tlsgate.policy.codegen) against the engine.

Every policy below, and the seed's, runs twice per request variant — once through the
engine alone, once through the generated code — on the same kind of request, and everything
a client, a backend or an operator could see must be equal: status, reason phrase, headers,
body, the access log reason, the certificate the policies saw, what the backend received,
the order in which the certificate and the body were fetched and the backend called, and
the policy log. Requests vary the certificate (from the handshake, late, none, revoked), a
header that steers the policy, and the body.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from pathlib import Path

import pytest
from cryptography import x509
from policy_support import CONFIG as GATEWAY_CONFIG
from policy_support import STRICT_WITH_CRL

from tlsgate.backends.echo import EchoBackend
from tlsgate.config.errors import ConfigError
from tlsgate.config.loader import load_config
from tlsgate.http.messages import ConnectionInfo, Request, RequestBody
from tlsgate.policy.codegen import compile_pipeline
from tlsgate.policy.document import parse_policy
from tlsgate.policy.engine import Pipeline, compose
from tlsgate.server.runtime import Runtime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "policies"

# policy_support's gateway, with the dev client's certificate for context.Deployment.
CONFIG = (GATEWAY_CONFIG.replace("@GATEWAY@", "").replace("@APIS@", "")
          .replace("@REVOCATION@", STRICT_WITH_CRL)
          .replace("@CERTIFICATES@", '[[certificate]]\nid = "dev-client"\n'
                                     'file = "{pki}/client.pem"'))


def policies(*inbound: str, backend: str = "", outbound: str = "", on_error: str = "") -> str:
    sections = f"<inbound>{''.join(inbound)}</inbound>"
    for name, text in (("backend", backend), ("outbound", outbound), ("on-error", on_error)):
        if text:
            sections += f"<{name}>{text}</{name}>"
    return f"<policies>{sections}</policies>"


DENY = ('<return-response><set-status code="401" reason="Denied here" />'
        '<set-header name="X-Why" exists-action="override"><value>mode</value>'
        '<value>second</value></set-header><set-body>{"denied": true}</set-body>'
        '</return-response>')
MODE = '@(context.Request.Headers.GetValueOrDefault("X-Mode", "none"))'
BRANCHES = policies(
    f'<set-variable name="mode" value="{MODE}" />',
    '<choose>'
    '<when condition="@(context.Variables.GetValueOrDefault&lt;string&gt;(&quot;mode&quot;) '
    '== &quot;deny&quot;)">' + DENY + '</when>'
    '<when condition="@(context.Variables.GetValueOrDefault&lt;string&gt;(&quot;mode&quot;) '
    '== &quot;cert&quot;)">'
    '<choose><when condition="@(context.Request.Certificate == null)">'
    '<return-response><set-status code="403" /></return-response></when>'
    '<otherwise><set-variable name="tp" value="@(context.Request.Certificate.Thumbprint)" />'
    '</otherwise></choose></when>'
    '<when condition="@(context.Variables.GetValueOrDefault&lt;string&gt;(&quot;mode&quot;) '
    '== &quot;boom&quot;)">'
    '<set-variable name="tp" value="@(context.Request.Certificate.Thumbprint)" /></when>'
    '<otherwise><set-variable name="other" value="yes" /></otherwise>'
    '</choose>')
BODY_PRESERVED = policies(
    '<choose><when condition="@(context.Request.Body.As&lt;string&gt;(preserveContent: true)'
    '.Contains(&quot;deny&quot;))">' + DENY + '</when></choose>')
BODY_CONSUMED = policies(
    '<choose><when condition="@(context.Request.Headers.ContainsKey(&quot;X-Mode&quot;))">'
    '<set-variable name="length" value="@(context.Request.Body.As&lt;string&gt;().Length)" />'
    '</when></choose>')
ON_ERROR = policies(
    '<choose><when condition="@(context.Request.Headers.ContainsKey(&quot;X-Mode&quot;) '
    '&amp;&amp; context.Request.Certificate.Thumbprint != &quot;x&quot;)">'
    '<set-variable name="seen" value="1" /></when></choose>',
    on_error='<set-status code="418" reason="On error" />'
             '<set-header name="X-Error" exists-action="override">'
             '<value>@(context.LastError.Reason)</value></set-header>')
OUTBOUND = policies(
    '<choose><when condition="@(context.Request.Certificate == null)">'
    '<set-variable name="anonymous" value="yes" /></when></choose>',
    outbound='<set-header name="X-Anonymous" exists-action="override">'
             '<value>@(context.Variables.GetValueOrDefault&lt;string&gt;'
             '(&quot;anonymous&quot;, &quot;no&quot;))</value></set-header>')
TIMEOUTS = policies(
    '<choose><when condition="@(context.Request.Method == &quot;DELETE&quot;)">'
    '<return-response><set-status code="405" /></return-response></when></choose>',
    backend='<forward-request timeout="7" />')
DYNAMIC_TIMEOUT = policies(
    '<set-variable name="t" value="@(3)" />',
    backend='<forward-request timeout="@((int)context.Variables[&quot;t&quot;])" />')
HEADER_BEFORE_CERTIFICATE = policies(
    '<choose><when condition="@(!context.Request.Headers.ContainsKey(&quot;X-Mode&quot;))">'
    '<return-response><set-status code="400" reason="X-Mode, please" /></return-response>'
    '</when>'
    '<when condition="@(context.Request.Certificate == null || '
    '!context.Request.Certificate.VerifyNoRevocation())">'
    '<return-response><set-status code="403" /></return-response></when>'
    '<otherwise><set-variable name="ok" value="@(true)" /></otherwise></choose>')
CONSTANT_CONDITION = policies(
    '<choose><when condition="@(1 &gt; 2)"><return-response><set-status code="500" />'
    '</return-response></when><otherwise /></choose>')
GLOBAL = policies(
    '<choose><when condition="@(context.Request.Headers.GetValueOrDefault(&quot;X-Mode&quot;, '
    '&quot;&quot;) == &quot;deny&quot;)">' + DENY + '</when></choose>')
WITH_BASE = policies('<set-variable name="api" value="1" />', '<base />')
VALIDATE_IGNORED = policies(
    # Two failures let through with different reasons for a revoked client (identity, then
    # revocation): the first names the access log's reason. Then an expression failure when
    # X-Mode is "boom" without a certificate (its reason replaces it), and an outbound
    # section the engine runs (the reason must reach it).
    '<validate-client-certificate ignore-error="true" validate-revocation="false">'
    '<identities><identity common-name="someone-else" /></identities>'
    '</validate-client-certificate>',
    '<validate-client-certificate ignore-error="true" validate-revocation="true" />',
    '<choose><when condition="@(context.Request.Headers.GetValueOrDefault(&quot;X-Mode&quot;, '
    '&quot;&quot;) == &quot;boom&quot;)">'
    '<set-variable name="tp" value="@(context.Request.Certificate.Thumbprint)" /></when>'
    '</choose>',
    outbound='<set-header name="X-Seen" exists-action="override"><value>1</value></set-header>')
VALIDATE_THEN_BRANCH = policies(
    '<choose><when condition="@(context.Request.Headers.GetValueOrDefault(&quot;X-Mode&quot;, '
    '&quot;&quot;) == &quot;deny&quot;)">' + DENY + '</when></choose>',
    '<validate-client-certificate validate-revocation="false" validate-not-after="false">'
    '<identities><identity issuer-subject="CN=tlsgate dev intermediate CA, OU=dev, '
    'O=tlsgate, C=US" /></identities></validate-client-certificate>',
    on_error='<set-header name="X-Reason" exists-action="override">'
             '<value>@(context.LastError.Reason)</value></set-header>')
#: Statements the generator does not write: these policies run on the engine alone.
ENGINE_ONLY = {
    "set-header-inbound": policies('<set-header name="X-Added" exists-action="append">'
                                   '<value>1</value></set-header>'),
    "check-header": policies('<check-header name="X-Mode" failed-check-httpcode="401" '
                             'failed-check-error-message="no mode" ignore-case="true" />'),
}

#: name -> (api policy, global policy or None)
HAND_WRITTEN = {
    "branches": (BRANCHES, None),
    "body-preserved": (BODY_PRESERVED, None),
    "body-consumed": (BODY_CONSUMED, None),
    "on-error": (ON_ERROR, None),
    "outbound": (OUTBOUND, None),
    "timeouts": (TIMEOUTS, None),
    "dynamic-timeout": (DYNAMIC_TIMEOUT, None),
    "header-before-certificate": (HEADER_BEFORE_CERTIFICATE, None),
    "constant-condition": (CONSTANT_CONDITION, None),
    "global-base": (WITH_BASE, GLOBAL),
    "validate-ignored": (VALIDATE_IGNORED, None),
    # the same, the backend called by the generated code itself
    "validate-ignored-direct": (VALIDATE_IGNORED.replace(
        '<outbound><set-header name="X-Seen" exists-action="override"><value>1</value>'
        '</set-header></outbound>', ""), None),
    "validate-then-branch": (VALIDATE_THEN_BRANCH, None),
}
#: fixtures/policies/: the seed's three, and validate-client-certificate as documented.
FIXTURE_POLICIES = ("seed-thumbprint", "seed-issuer-subject", "seed-deployment-thumbprint",
                    "validate", "validate-on-error")


@pytest.fixture(scope="module")
def setup(pki: Path, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("codegen")
    config = directory / "gateway.toml"
    config.write_text(CONFIG.format(pki=pki))
    runtime = Runtime.build(load_config(config))
    client = json.loads((pki / "thumbprints.json").read_text())["client.pem"]
    return runtime.policies.env, client


def corpus(client: dict) -> dict[str, tuple[str, str | None]]:
    texts = dict(HAND_WRITTEN)
    for name, text in ENGINE_ONLY.items():
        texts[name] = (text, None)
    for name in FIXTURE_POLICIES:
        text = (FIXTURES / f"{name}.xml").read_text()
        text = (text.replace("trusted-issuer", client["issuer"])
                .replace("expected-subject-name", client["subject"])
                .replace("DESIRED-THUMBPRINT-IN-UPPER-CASE", client["thumbprint"]))
        texts[name] = (text, None)
    return texts


def build(env, text: str, global_text: str | None) -> Pipeline:
    document, problems = parse_policy(text, "api.xml", scope="api",
                                      certificate_ids={"dev-client", "gateway"})
    assert not problems, [str(p) for p in problems]
    global_doc = None
    if global_text is not None:
        global_doc, problems = parse_policy(global_text, "global.xml", scope="global")
        assert not problems, [str(p) for p in problems]
    return Pipeline(compose(global_doc, document), env)


def load_chain(pki: Path, name: str) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    leaf, *chain = x509.load_pem_x509_certificates((pki / f"{name}.pem").read_bytes())
    return leaf, tuple(chain)


CERTIFICATES = ("handshake", "late", "late-none", "none", "revoked")
MODES = (None, "deny", "cert", "boom")
BODIES = (b"", b"please deny this", b"hello")


def make_request(pki: Path, certificate: str, mode: str | None, body: bytes,
                 events: list) -> Request:
    leaf, chain = load_chain(pki, "client-revoked" if certificate == "revoked" else "client")
    in_handshake = certificate in ("handshake", "revoked")
    connection = ConnectionInfo(("192.0.2.10", 50000),
                                handshake_certificate=leaf if in_handshake else None,
                                handshake_chain=chain if in_handshake else ())
    request_body = RequestBody(len(body))
    request_body.on_first_read = lambda: events.append("body")
    if body:
        request_body.feed(body)
    request_body.finish()
    headers = [(b"host", b"api.example"), (b"content-length", str(len(body)).encode())]
    if mode is not None:
        headers.append((b"x-mode", mode.encode()))
    method = "DELETE" if mode == "deny" else "POST"
    source = None
    if certificate.startswith("late"):
        async def source(request: Request) -> x509.Certificate | None:
            events.append("certificate")
            if certificate == "late-none":
                return None
            request.connection.late_chain = chain
            return leaf
    return Request(method=method, path="/api/items", query="", headers=headers,
                   body=request_body, connection=connection, authority="api.example",
                   request_id="req-1", certificate_source=source)


class PolicyLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("API "):     # codegen's own debug line
            self.lines.append(f"{record.levelname} {record.getMessage()}")


async def observe(pipeline: Pipeline, request: Request, events: list) -> dict:
    """Everything visible of one run: the client's response, the access log, the backend."""
    async def forward(_request, timeout, dynamic):
        events.append(("forward", timeout, dynamic))
        return await EchoBackend().handle(request)

    handler = PolicyLog()
    logger = logging.getLogger("tlsgate.policy")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        outcome = await pipeline.run(request, forward, body_limit=1 << 20)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    response = outcome.response
    body = response.body
    if not isinstance(body, bytes):
        body = b"".join([chunk async for chunk in body])
    if response.headers and dict(response.headers).get(b"content-type") == b"application/json":
        body = json.loads(body) if body else body
        if isinstance(body, dict):
            body.pop("request_id", None)
    return {"status": response.status, "reason": response.reason,
            "headers": response.headers, "content_length": response.content_length,
            "body": body, "access_log_reason": outcome.reason,
            "certificate": outcome.certificate.serial_number
            if outcome.certificate is not None else None,
            "events": events, "log": handler.lines,
            "request_headers": request.headers}


def both(env, pki: Path, text: str, global_text: str | None, variant: tuple) -> tuple:
    pipeline = build(env, text, global_text)
    compiled = compile_pipeline(pipeline)
    results = []
    for run in (None, compiled):
        pipeline.compiled = run
        events: list = []
        request = make_request(pki, *variant, events)
        results.append(asyncio.run(observe(pipeline, request, events)))
    return compiled, results[0], results[1]


@pytest.mark.parametrize("name", [*HAND_WRITTEN, *FIXTURE_POLICIES])
def test_the_generated_code_does_what_the_engine_does(setup, pki, name):
    env, client = setup
    text, global_text = corpus(client)[name]
    outcomes = set()
    for certificate in CERTIFICATES:
        for mode in MODES:
            for body in BODIES:
                variant = (certificate, mode, body)
                compiled, engine, generated = both(env, pki, text, global_text, variant)
                assert compiled is not None, f"{name} is not compiled"
                assert generated == engine, variant
                outcomes.add(repr((engine["status"], engine["body"])))
    # The variants reach more than one outcome for every policy (the test is not vacuous).
    assert len(outcomes) > 1, outcomes


@pytest.mark.parametrize("name", ENGINE_ONLY)
def test_policies_outside_the_subset_stay_on_the_engine(setup, name):
    env, client = setup
    text, global_text = corpus(client)[name]
    assert compile_pipeline(build(env, text, global_text)) is None


def test_the_seed_policy_compiles_to_one_choose_and_a_direct_forward(setup):
    env, client = setup
    text, _ = corpus(client)["seed-thumbprint"]
    source = compile_pipeline(build(env, text, None)).source
    assert "reason, failure)" in source         # an inbound failure goes to the engine
    assert "await forward(request, None, False)" in source
    assert source.count("evaluate(ctx)") == 1


@pytest.mark.parametrize("setting, compiled", [("", True), ("compile = true", True),
                                               ("compile = false", False)])
def test_policies_compile_setting(pki, tmp_path, setting, compiled):
    (tmp_path / "seed.xml").write_text((FIXTURES / "seed-thumbprint.xml").read_text())
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(pki=pki) + f"\n[policies]\n{setting}\n\n"
                      '[[api]]\nname = "echo"\npath = "/echo"\nbackend = "echo:"\n'
                      'policy = "seed.xml"\n')
    pipeline = Runtime.build(load_config(config)).policies.pipeline("echo")
    assert (pipeline.compiled is not None) is compiled
    # compile = false keeps the expressions' closures too (no generated code at all)
    condition = pipeline.inbound[0].branches[0][0]
    inlined = condition._fn.__code__.co_filename == "<policy expression>"
    assert inlined is compiled


def test_policies_compile_must_be_a_boolean(pki, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(pki=pki) + '\n[policies]\ncompile = "yes"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "policies.compile" in str(caught.value)


def test_a_choose_too_deep_for_python_stays_on_the_engine(setup, pki):
    # Each <when> nests the next one level deeper; CPython refuses 100 levels of indentation.
    env, _ = setup
    whens = [
        f'<when condition="@(context.Request.Headers.GetValueOrDefault(&quot;X-Mode&quot;, '
        f'&quot;&quot;) == &quot;m{n}&quot;)"><set-variable name="v" value="{n}" /></when>'
        for n in range(100)]
    text = policies(f'<choose>{"".join(whens)}<otherwise><return-response><set-status code="403" />'
                    '</return-response></otherwise></choose>')
    pipeline = build(env, text, None)
    assert compile_pipeline(pipeline) is None
    events: list = []
    answer = asyncio.run(observe(pipeline, make_request(pki, "none", "m99", b"", events), events))
    assert answer["status"] == 200
    shallow = policies(f'<choose>{"".join(whens[:25])}</choose>')
    assert compile_pipeline(build(env, shallow, None)) is not None


def test_compiled_policies_leave_no_reference_cycle(setup):
    env, client = setup
    text, _ = corpus(client)["seed-thumbprint"]
    gc.collect()
    gc.disable()
    try:
        pipeline = build(env, text, None)
        baseline = gc.collect()         # whatever building a pipeline leaves on its own
        pipeline = build(env, text, None)
        pipeline.compiled = compile_pipeline(pipeline)
        assert pipeline.compiled is not None
        del pipeline
        assert gc.collect() == baseline
    finally:
        gc.enable()

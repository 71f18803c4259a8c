"""Loading policy documents: composition of the global and API scopes, and every kind of load
error with its exact FILE:LINE:COL (also through ``tlsgate check-config``), all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gatewayd import write_config
from policy_support import CONFIG, STRICT_WITH_CRL

from tlsgate.config.errors import ConfigError
from tlsgate.config.loader import config_warnings, load_config
from tlsgate.policy import statements as s
from tlsgate.policy.document import parse_policy, protect_expressions
from tlsgate.policy.engine import PolicyEngine
from tlsgate.server.runtime import Runtime


def problems_of(text: str, *, scope: str = "api", ids=("ca",)) -> list[str]:
    document, problems = parse_policy(text, "p.xml", scope=scope, certificate_ids=set(ids))
    assert (document is None) == bool(problems)
    return [str(problem) for problem in problems]


# -- load errors, one kind at a time ------------------------------------------------------------

ERRORS = {
    "expression nested past Python's recursion limit": (
        '<policies><inbound>\n  <set-variable name="v" value="@(' + '&quot;a&quot;.Insert(0, '
        * 120 + '&quot;b&quot;' + ")" * 120 + ')" />\n</inbound></policies>',
        ["p.xml:2:33: set-variable value: expression is nested too deeply"]),
    "malformed XML": (
        "<policies>\n  <inbound>\n</policies>\n",
        ["p.xml:3:3: malformed XML: mismatched tag"]),
    "unknown element": (
        '<policies>\n  <inbound>\n    <rate-limt calls="5" />\n  </inbound>\n</policies>',
        ["p.xml:3:5: unknown policy <rate-limt>; tlsgate supports check-header, choose, "
         "forward-request, return-response, set-body, set-header, set-status, set-variable, "
         "validate-client-certificate"]),
    "unknown attribute": (
        '<policies><inbound>\n  <set-status code="403" reson="x" />\n</inbound></policies>',
        ["p.xml:2:26: unknown attribute 'reson' on <set-status> (did you mean 'reason'?) "
         "(allowed: code, id, reason)"]),
    "missing attribute": (
        '<policies><inbound>\n  <set-variable value="1" />\n</inbound></policies>',
        ["p.xml:2:3: <set-variable> needs the attribute 'name'"]),
    "missing condition": (
        '<policies><inbound>\n  <choose>\n    <when><set-status code="200" /></when>\n'
        "  </choose>\n</inbound></policies>",
        ["p.xml:3:5: <when> needs the attribute 'condition'"]),
    "bad exists-action": (
        '<policies><inbound>\n  <set-header name="x" exists-action="merge"><value>1</value>'
        "</set-header>\n</inbound></policies>",
        ["p.xml:2:39: set-header exists-action: 'merge' is not one of override, skip, append, "
         "delete"]),
    "expression in an attribute": (
        '<policies><inbound>\n  <set-header name="x"><value>v</value></set-header>\n'
        '  <set-variable name="v" value="@(context.Request.Methd)" />\n</inbound></policies>',
        ["p.xml:3:51: set-variable value: unknown member 'Methd' on IRequest"]),
    "expression on the third line of an attribute": (
        '<policies><inbound>\n  <set-variable name="v" value="@{\n      var a = 1;\n'
        '      return a +;\n  }" />\n</inbound></policies>',
        ["p.xml:4:17: set-variable value: expression expected, found ';'"]),
    "expression after entities": (
        '<policies><inbound>\n  <set-variable name="v" value="@(&quot;a&quot; + context.Nope)"'
        " />\n</inbound></policies>",
        ["p.xml:2:59: set-variable value: unknown member 'Nope' on IProxyRequestContext"]),
    "expression in element text": (
        "<policies><inbound>\n  <set-body>\n    @{\n"
        "      return context.Request.Body.As&lt;int&gt;();\n    }\n  </set-body>\n"
        "</inbound></policies>",
        ["p.xml:4:35: <set-body>: As<int>() is not supported by tlsgate; use As<string>()"]),
    "expression with unescaped quotes": (
        '<policies><inbound>\n  <choose>\n    <when condition="@(context.Request.Method == "GET"'
        ' && context.Request.Url.Pth == "/")">\n      <set-status code="200" />\n    </when>\n'
        "  </choose>\n</inbound></policies>",
        ["p.xml:3:79: when condition: unknown member 'Pth' on IUrl"]),
    "condition not bool": (
        '<policies><inbound>\n  <choose>\n    <when condition="@(context.Request.Method)" />\n'
        "  </choose>\n</inbound></policies>",
        ["p.xml:3:22: when condition must be of type bool, not string"]),
    "condition not an expression": (
        '<policies><inbound>\n  <choose>\n    <when condition="true" />\n'
        "  </choose>\n</inbound></policies>",
        ["p.xml:3:22: when condition must be a policy expression, @(...) or @{...}, of type "
         "bool"]),
    "root element": (
        "<policy />",
        ["p.xml:1:1: the root element must be <policies>, not <policy>"]),
    "sections": (
        "<policies>\n  <inbound />\n  <inbound />\n  <outbund />\n</policies>",
        ["p.xml:3:3: <inbound> appears twice",
         "p.xml:4:3: unknown section <outbund> (did you mean 'outbound'?); a policy document "
         "has <inbound>, <backend>, <outbound> and <on-error>"]),
    "statement in the wrong section": (
        "<policies>\n  <outbound>\n    <validate-client-certificate />\n  </outbound>\n"
        "</policies>",
        ["p.xml:3:5: <validate-client-certificate> is not allowed in <outbound> (only in "
         "<inbound>)"]),
    "base twice and nested": (
        "<policies><inbound>\n  <base />\n  <base />\n  <choose><when condition=\"@(true)\">"
        "<base /></when></choose>\n</inbound></policies>",
        ["p.xml:3:3: <base /> appears more than once in <inbound>",
         "p.xml:4:37: <base /> must be a direct child of <inbound>"]),
    "eleven identities": (
        "<policies><inbound><validate-client-certificate><identities>\n"
        + "".join(f'<identity common-name="c{i}" />\n' for i in range(11))
        + "</identities></validate-client-certificate></inbound></policies>",
        ["p.xml:12:1: at most 10 <identity> elements are allowed in <identities>"]),
    "identity values": (
        "<policies><inbound><validate-client-certificate><identities>\n"
        '  <identity thumbprint="abc" serial-number="xyz" />\n'
        '  <identity issuer-certificate-id="nope" />\n'
        '  <identity issuer-certificate-id="ca" issuer-subject="CN=x" />\n'
        '  <identity subject="no-equals" />\n  <identity />\n'
        "</identities></validate-client-certificate></inbound></policies>",
        ["p.xml:2:25: identity thumbprint: 'abc' is not a SHA-1 thumbprint (40 hexadecimal "
         "digits)",
         "p.xml:2:45: identity serial-number: 'xyz' is not a hexadecimal serial number",
         "p.xml:3:36: identity issuer-certificate-id: no [[certificate]] has the id 'nope' "
         "(known: ca)",
         "p.xml:4:13: identity issuer-certificate-id cannot be combined with issuer-subject or "
         "issuer-thumbprint",
         "p.xml:5:22: identity subject: 'no-equals' is not a distinguished name such as "
         "\"CN=client, O=example, C=US\"",
         "p.xml:6:3: <identity> needs at least one of thumbprint, serial-number, common-name, "
         "subject, dns-name, issuer-subject, issuer-thumbprint, issuer-certificate-id"]),
    "bad booleans": (
        '<policies><inbound>\n  <validate-client-certificate validate-trust="yes" '
        'ignore-error="1" />\n</inbound></policies>',
        ["p.xml:2:48: validate-client-certificate validate-trust: expected \"true\" or "
         "\"false\", not 'yes'",
         "p.xml:2:67: validate-client-certificate ignore-error: expected \"true\" or \"false\", "
         "not '1'"]),
    "reserved header": (
        '<policies><inbound>\n  <set-header name="Content-Length"><value>1</value></set-header>'
        "\n</inbound></policies>",
        ["p.xml:2:21: set-header name: 'Content-Length' is managed by the gateway and cannot "
         "be set by a policy"]),
    "unsupported attribute": (
        '<policies><inbound>\n  <return-response response-variable-name="r" />\n'
        "</inbound></policies>",
        ["p.xml:2:20: <return-response> attribute 'response-variable-name' is not supported: "
         "tlsgate has no send-request, so there are no response variables"]),
    "unexpected text": (
        '<policies><inbound>\n  <choose>oops<when condition="@(true)" /></choose>\n'
        "</inbound></policies>",
        ["p.xml:2:11: unexpected text in <choose>"]),
    "bad timeout": (
        '<policies><backend>\n  <forward-request timeout="soon" />\n</backend></policies>',
        ["p.xml:2:29: forward-request timeout: 'soon' is not a number of seconds (1-3600)"]),
    "check-header": (
        '<policies><inbound>\n  <check-header name="x" failed-check-httpcode="99" />\n'
        "</inbound></policies>",
        ["p.xml:2:3: <check-header> needs the attribute 'failed-check-error-message'",
         "p.xml:2:49: check-header failed-check-httpcode: '99' is not an HTTP status code "
         "for a response (200-599)"]),
    "set-status superscript digit": (
        '<policies><inbound>\n  <return-response><set-status code="²" /></return-response>'
        "\n</inbound></policies>",
        ["p.xml:2:38: set-status code: '²' is not an HTTP status code for a response "
         "(200-599)"]),
    "set-status 1xx": (
        '<policies><inbound>\n  <return-response><set-status code="103" /></return-response>'
        "\n</inbound></policies>",
        ["p.xml:2:38: set-status code: '103' is not an HTTP status code for a response "
         "(200-599)"]),
    "set-header without values": (
        '<policies><inbound>\n  <set-header name="x" />\n</inbound></policies>',
        ["p.xml:2:3: <set-header> needs at least one <value> (or exists-action=\"delete\")"]),
    "return-response children": (
        "<policies><inbound>\n  <return-response>\n    <set-variable name=\"a\" value=\"b\" />\n"
        '    <set-status code="200" />\n    <set-status code="201" />\n  </return-response>\n'
        "</inbound></policies>",
        ["p.xml:3:5: <return-response> takes only <set-status>, <set-header> and <set-body> "
         "(found <set-variable>)",
         "p.xml:5:5: <return-response> has more than one <set-status>"]),
    "header value with a control character": (
        '<policies><inbound>\n  <set-header name="x"><value>a&#10;b</value></set-header>\n'
        "</inbound></policies>",
        ["p.xml:2:31: a header value cannot contain control characters (CR, LF, NUL...)"]),
    "doctype": (
        '<!DOCTYPE policies [<!ENTITY x "y">]>\n<policies />',
        ["p.xml:1:1: DOCTYPE and entity declarations are not allowed in policy documents"]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_load_error(name):
    text, expected = ERRORS[name]
    assert problems_of(text) == expected


def test_base_is_refused_in_the_global_scope():
    assert problems_of("<policies>\n  <inbound>\n    <base />\n  </inbound>\n</policies>",
                       scope="global") == [
        "p.xml:3:5: <base /> is not allowed in the global scope: there is no parent scope to "
        "include"]


def test_many_errors_are_all_reported_in_file_order():
    text = "\n".join([
        "<policies>",
        "  <inbound>",
        '    <set-status code="700" />',
        '    <set-header name="x" exists-action="merge"><value>1</value></set-header>',
        '    <choose><when condition="@(1)" /></choose>',
        '    <set-variable name="v" value="@(nope)" />',
        "    <unknown-policy />",
        "  </inbound>",
        "  <outbound>",
        "    <check-header />",
        "  </outbound>",
        "</policies>",
    ])
    problems = problems_of(text)
    assert [p.split(": ")[0] for p in problems] == [
        "p.xml:3:23", "p.xml:4:41", "p.xml:5:30", "p.xml:6:37", "p.xml:7:5", "p.xml:10:5"]
    assert "'nope'" in problems[3]


# -- the XML dialect ---------------------------------------------------------------------------


def test_quotes_in_expressions_unescaped_and_escaped_compile_alike():
    raw = ('<policies><inbound><choose><when condition="@(context.Request.Method == "GET" '
           '&& context.Request.Headers.GetValueOrDefault("a", "") != "<x>")">'
           '<set-status code="200" /></when></choose></inbound></policies>')
    escaped = ('<policies><inbound><choose><when condition="@(context.Request.Method == '
               '&quot;GET&quot; &amp;&amp; context.Request.Headers.GetValueOrDefault(&quot;a'
               '&quot;, &quot;&quot;) != &quot;&lt;x&gt;&quot;)"><set-status code="200" />'
               "</when></choose></inbound></policies>")
    sources = []
    for text in (raw, escaped):
        document, problems = parse_policy(text, "p.xml")
        assert not problems, problems
        (choose,) = document.sections["inbound"]
        sources.append(choose.branches[0][0].source)
    assert sources[0] == sources[1] == (
        '@(context.Request.Method == "GET" && context.Request.Headers.GetValueOrDefault("a", '
        '"") != "<x>")')


def test_protection_keeps_positions_and_leaves_plain_xml_alone():
    plain = '<policies><inbound><set-header name="a"><value>x &amp; y</value></set-header>'
    assert protect_expressions(plain) == (plain, None)
    text = ("<a b='@(\"it's\" + 'c' + $\"{(1 < 2 ? \"}\" : \"x\")}\")' c=\"d\">"
            "@{ // a comment with ) and \"\n return 1 < 2; }</a>")
    protected, doctype = protect_expressions(text)
    assert doctype is None and len(protected) == len(text)
    assert protected.count("<") == 2 and "c=\"d\"" in protected   # only the two real tags


def test_multiline_block_with_comment_in_an_attribute():
    text = ('<policies><inbound><set-variable name="v" value="@{\n'
            '    // a comment: the line break must survive\n'
            '    return "x";\n}" /></inbound></policies>')
    document, problems = parse_policy(text, "p.xml")
    assert not problems
    (statement,) = document.sections["inbound"]
    assert statement.value.evaluate(None) == "x"


def test_statement_paths_and_ids():
    text = ('<policies><inbound><set-status code="200" /><choose>'
            '<when condition="@(true)"><set-status code="201" id="a" /></when>'
            '<when condition="@(false)"><set-status code="202" /><set-status code="203" />'
            "</when></choose></inbound></policies>")
    document, _ = parse_policy(text, "p.xml")
    first, choose = document.sections["inbound"]
    assert first.path == "set-status[1]" and choose.path == "choose[1]"
    (a,), (b, c) = (body for _, body in choose.branches)
    assert (a.path, a.policy_id) == ("choose[1]\\when[1]\\set-status[1]", "a")
    assert c.path == "choose[1]\\when[2]\\set-status[2]" and c.policy_id == ""


# -- composition through the configuration -----------------------------------------------------

GLOBAL = """<policies>
  <inbound><set-header name="x-global"><value>1</value></set-header></inbound>
  <outbound><set-header name="x-global-out"><value>1</value></set-header></outbound>
  <on-error><set-header name="x-global-error"><value>1</value></set-header></on-error>
</policies>"""


def engine_for(directory: Path, pki: Path, apis: dict[str, str | None],
               global_policy: str | None) -> tuple[PolicyEngine, Path]:
    (directory / "policies").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, text in apis.items():
        entry = f'[[api]]\nname = "{name}"\npath = "/{name}"\nbackend = "echo:"\n'
        if text is not None:
            (directory / "policies" / f"{name}.xml").write_text(text)
            entry += f'policy = "policies/{name}.xml"\n'
        entries.append(entry)
    if global_policy is not None:
        (directory / "policies" / "global.xml").write_text(global_policy)
        entries.append('[policies]\nglobal = "policies/global.xml"\n')
    config_text = (CONFIG.replace("@CERTIFICATES@", "").replace("@GATEWAY@", "")
                   .replace("@REVOCATION@", STRICT_WITH_CRL)
                   .replace("@APIS@", "\n".join(entries)))
    path = write_config(directory, config_text, pki=pki)
    config = load_config(path)
    assert not any("polic" in warning for warning in config_warnings(config))
    return Runtime.build(config).policies, path


def names(statements) -> list[str]:
    return [f"{st.name}:{getattr(st, 'header', b'').decode()}" if isinstance(st, s.SetHeader)
            else st.name for st in statements]


def test_composition(tmp_path, pki):
    engine, _ = engine_for(tmp_path, pki, {
        "none": None,
        "empty": "<policies />",
        "base": """<policies>
            <inbound><set-header name="x-before"><value>1</value></set-header><base />
              <set-header name="x-after"><value>1</value></set-header></inbound>
            <backend><base /></backend>
            <outbound><base /></outbound></policies>""",
        "replace": """<policies>
            <inbound><set-header name="x-own"><value>1</value></set-header></inbound>
            <backend><forward-request timeout="5" /></backend>
            <on-error /></policies>""",
    }, GLOBAL)
    none, empty = engine.pipeline("none"), engine.pipeline("empty")
    # A missing API document, or one without sections: the global policies as they are.
    for pipeline in (none, empty):
        assert names(pipeline.inbound) == ["set-header:x-global"]
        assert names(pipeline.backend) == ["forward-request"]
        assert names(pipeline.outbound) == ["set-header:x-global-out"]
        assert names(pipeline.on_error) == ["set-header:x-global-error"]
    base = engine.pipeline("base")
    assert names(base.inbound) == ["set-header:x-before", "set-header:x-global",
                                   "set-header:x-after"]
    assert base.inbound[1].scope == "global" and base.inbound[0].scope == "api"
    assert names(base.backend) == ["forward-request"]
    assert names(base.outbound) == ["set-header:x-global-out"]
    assert names(base.on_error) == ["set-header:x-global-error"]     # missing: inherited
    replace = engine.pipeline("replace")
    assert names(replace.inbound) == ["set-header:x-own"]            # no <base />: replaced
    assert replace.backend[0].timeout == 5.0 and replace.forward_timeouts == {5.0}
    assert names(replace.outbound) == ["set-header:x-global-out"]
    assert replace.on_error == ()                                    # present and empty


def test_apis_without_policies_get_no_pipeline(tmp_path, pki):
    engine, _ = engine_for(tmp_path, pki, {
        "none": None, "empty": "<policies />",
        "explicit": "<policies><backend><forward-request /></backend></policies>",
        "some": "<policies><inbound><set-status code=\"200\" /></inbound></policies>"}, None)
    assert engine.pipeline("none") is None
    assert engine.pipeline("empty") is None
    assert engine.pipeline("explicit") is None
    assert engine.pipeline("some") is not None


def test_runtime_build_collects_problems_from_every_document(tmp_path, pki):
    with pytest.raises(ConfigError) as raised:
        engine_for(tmp_path, pki, {
            "a": '<policies><inbound>\n<set-status code="1" /></inbound></policies>',
            "b": "<policies><inbound><base />\n<nope /></inbound></policies>",
        }, "<policies><inbound>\n<base /></inbound></policies>")
    lines = [str(problem) for problem in raised.value.problems]
    policies = tmp_path / "policies"
    assert lines == [
        f"{policies / 'a.xml'}:2:19: set-status code: '1' is not an HTTP status code for a "
        "response (200-599)",
        f"{policies / 'b.xml'}:2:1: unknown policy <nope>; tlsgate supports check-header, "
        "choose, forward-request, return-response, set-body, set-header, set-status, "
        "set-variable, validate-client-certificate",
        f"{policies / 'global.xml'}:2:1: <base /> is not allowed in the global scope: there is "
        "no parent scope to include",
    ]


def test_check_config_prints_every_policy_problem(tmp_path, pki):
    broken = {
        "a": '<policies><inbound>\n  <set-header name="x" exists-action="merge">'
             "<value>1</value></set-header>\n"
             '  <choose><when condition="@(context.Request.Certificate.Thumbprnt == &quot;x&quot;)"'
             " /></choose>\n</inbound></policies>",
        "b": "<policies><inbound>\n<validate-client-certificate><identities>"
             + "".join(f'<identity common-name="{i}" />' for i in range(11))
             + "</identities></validate-client-certificate></inbound></policies>",
    }
    with pytest.raises(ConfigError):
        engine_for(tmp_path, pki, broken, "<policies><inbound><nope /></inbound></policies>")
    result = subprocess.run([sys.executable, "-m", "tlsgate", "check-config",
                             str(tmp_path / "gateway.toml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    policies = tmp_path / "policies"
    assert result.stdout.splitlines() == [
        f"{policies / 'a.xml'}:2:39: set-header exists-action: 'merge' is not one of "
        "override, skip, append, delete",
        f"{policies / 'a.xml'}:3:58: when condition: unknown member 'Thumbprnt' on "
        "X509Certificate2",
        f"{policies / 'b.xml'}:2:322: at most 10 <identity> elements are allowed in "
        "<identities>",
        f"{policies / 'global.xml'}:1:20: unknown policy <nope>; tlsgate supports "
        "check-header, choose, forward-request, return-response, set-body, set-header, "
        "set-status, set-variable, validate-client-certificate",
    ]


def test_check_config_accepts_the_fixtures(tmp_path, pki):
    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "policies"
    apis = {path.stem: path.read_text() for path in sorted(fixtures.glob("*.xml"))}
    _, config = engine_for(tmp_path, pki, apis, GLOBAL)
    result = subprocess.run([sys.executable, "-m", "tlsgate", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout.strip().endswith(": OK")


def test_reload_refuses_a_broken_policy_and_applies_a_fixed_one(tmp_path, pki):
    from policy_support import policy_gateway, request

    def tagging(value: str) -> str:
        return ('<policies><outbound><set-header name="X-Version"><value>'
                f"{value}</value></set-header></outbound></policies>")

    with policy_gateway(tmp_path / "gw", pki, {"api": tagging("1")}) as gateway:
        assert request(gateway.port, pki, "/api").headers["x-version"] == "1"
        policy = tmp_path / "gw" / "policies" / "api.xml"
        policy.write_text(tagging("2").replace("<value>", "<valu>"))
        assert gateway.reload() is False
        assert request(gateway.port, pki, "/api").headers["x-version"] == "1"
        policy.write_text(tagging("2"))
        assert gateway.reload() is True
        assert request(gateway.port, pki, "/api").headers["x-version"] == "2"

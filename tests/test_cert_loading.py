"""Certificate files: formats detected by content, leaf and chain, keys, passwords, errors."""

from __future__ import annotations

import pytest
from certgen import (
    cert_der,
    cert_pem,
    key_der,
    key_pem,
    make_ca,
    make_leaf,
    new_key,
    pfx,
    write,
)

from tlsgate.certs.loading import (
    CertificateLoadError,
    attach_private_key,
    detect_format,
    load_ca_file,
    load_certificate_file,
    load_private_key_file,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def pki():
    """A root, an intermediate and a server leaf under the intermediate."""
    root = make_ca("Test Root CA")
    intermediate = make_ca("Test Intermediate CA", issuer=root)
    leaf = make_leaf("server.test", intermediate)
    return root, intermediate, leaf


def public(key) -> bytes:
    return key_der(key)


# -- PEM ----------------------------------------------------------------------------------------


def test_pem_certificate_alone(tmp_path, pki):
    _, _, leaf = pki
    loaded = load_certificate_file(write(tmp_path / "server.crt", cert_pem(leaf.cert)))
    assert loaded.certificate == leaf.cert
    assert loaded.chain == ()
    assert loaded.private_key is None


def test_pem_key_first_then_chain_in_wrong_order(tmp_path, pki):
    root, intermediate, leaf = pki
    path = write(
        tmp_path / "bundle.pem",
        key_pem(leaf.key),
        cert_pem(root.cert),
        cert_pem(leaf.cert),
        cert_pem(intermediate.cert),
    )
    loaded = load_certificate_file(path)
    assert loaded.certificate == leaf.cert
    assert loaded.chain == (intermediate.cert, root.cert)  # issuer order, not file order
    assert public(loaded.private_key) == public(leaf.key)


def test_pem_without_key_takes_the_first_certificate_as_leaf(tmp_path, pki):
    root, intermediate, leaf = pki
    path = write(tmp_path / "chain.pem", cert_pem(intermediate.cert), cert_pem(leaf.cert))
    loaded = load_certificate_file(path)
    assert loaded.certificate == intermediate.cert
    assert loaded.chain == (leaf.cert,)


def test_pem_with_text_around_blocks_and_crlf(tmp_path, pki):
    _, _, leaf = pki
    attributes = b"Bag Attributes\r\n    friendlyName: test\r\n"
    text = attributes + cert_pem(leaf.cert).replace(b"\n", b"\r\n")
    loaded = load_certificate_file(write(tmp_path / "server.pem", text, key_pem(leaf.key)))
    assert loaded.certificate == leaf.cert
    assert loaded.private_key is not None


@pytest.mark.parametrize("traditional", [False, True], ids=["pkcs8", "openssl-legacy"])
def test_pem_encrypted_key_with_password(tmp_path, pki, traditional):
    _, _, leaf = pki
    path = write(
        tmp_path / "server.pem",
        cert_pem(leaf.cert),
        key_pem(leaf.key, PASSWORD, traditional=traditional),
    )
    loaded = load_certificate_file(path, PASSWORD)
    assert public(loaded.private_key) == public(leaf.key)


def test_pem_encrypted_key_wrong_password(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), key_pem(leaf.key, PASSWORD))
    with pytest.raises(CertificateLoadError) as caught:
        load_certificate_file(path, "not-the-password-xyz")
    assert caught.value.message == "wrong password or corrupt private key"
    assert "not-the-password-xyz" not in str(caught.value)


def test_pem_encrypted_key_without_password(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), key_pem(leaf.key, PASSWORD))
    with pytest.raises(CertificateLoadError, match="encrypted and no password was given"):
        load_certificate_file(path)


def test_password_for_a_plain_key_is_not_needed(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), key_pem(leaf.key))
    assert load_certificate_file(path, "unused").private_key is not None


def test_pem_ec_parameters_block_is_accepted(tmp_path, pki):
    _, _, leaf = pki
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    key = key_pem(leaf.key, traditional=True)
    path = write(tmp_path / "server.pem", params, key, cert_pem(leaf.cert))
    assert load_certificate_file(path).certificate == leaf.cert


def test_key_not_matching_the_certificate(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), key_pem(new_key()))
    with pytest.raises(CertificateLoadError) as caught:
        load_certificate_file(path)
    assert caught.value.message == "the private key does not match the certificate"


def test_key_not_matching_any_certificate_of_a_chain(tmp_path, pki):
    _, intermediate, leaf = pki
    path = write(
        tmp_path / "server.pem",
        cert_pem(leaf.cert),
        cert_pem(intermediate.cert),
        key_pem(new_key()),
    )
    with pytest.raises(CertificateLoadError, match="does not match any certificate"):
        load_certificate_file(path)


def test_pem_with_two_keys(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), key_pem(leaf.key), key_pem(leaf.key))
    with pytest.raises(CertificateLoadError, match="more than one private key"):
        load_certificate_file(path)


def test_pem_key_only(tmp_path, pki):
    _, _, leaf = pki
    with pytest.raises(CertificateLoadError, match="holds a private key but no certificate"):
        load_certificate_file(write(tmp_path / "server.key", key_pem(leaf.key)))


def test_certificate_written_twice_counts_once(tmp_path, pki):
    _, intermediate, leaf = pki
    path = write(
        tmp_path / "server.pem",
        cert_pem(leaf.cert), cert_pem(intermediate.cert), cert_pem(intermediate.cert),
    )
    assert load_certificate_file(path).chain == (intermediate.cert,)


def test_pem_unexpected_block(tmp_path, pki):
    _, _, leaf = pki
    block = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    path = write(tmp_path / "server.pem", cert_pem(leaf.cert), block)
    expected = "unexpected PEM block 'CERTIFICATE REQUEST' \\(#2\\)"
    with pytest.raises(CertificateLoadError, match=expected):
        load_certificate_file(path)


def test_pem_corrupt_certificate(tmp_path):
    block = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateLoadError, match="PEM block #1 is not a valid certificate"):
        load_certificate_file(write(tmp_path / "bad.pem", block))


def test_pem_truncated(tmp_path, pki):
    _, _, leaf = pki
    truncated = cert_pem(leaf.cert)[:-30]
    with pytest.raises(CertificateLoadError, match="no complete PEM block"):
        load_certificate_file(write(tmp_path / "bad.pem", truncated))


# -- DER ----------------------------------------------------------------------------------------


def test_der_certificate(tmp_path, pki):
    _, _, leaf = pki
    loaded = load_certificate_file(write(tmp_path / "server.cer", cert_der(leaf.cert)))
    assert loaded.certificate == leaf.cert
    assert loaded.private_key is None


def test_pem_extension_holding_der_is_detected_by_content(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "actually-der.pem", cert_der(leaf.cert))
    assert detect_format(path.read_bytes()) == "der"
    assert load_certificate_file(path).certificate == leaf.cert


def test_der_private_key_is_not_a_certificate(tmp_path, pki):
    _, _, leaf = pki
    with pytest.raises(CertificateLoadError, match="DER private key, not a certificate"):
        load_certificate_file(write(tmp_path / "server.der", key_der(leaf.key)))


def test_corrupt_der(tmp_path, pki):
    _, _, leaf = pki
    with pytest.raises(CertificateLoadError, match="not a valid DER certificate"):
        load_certificate_file(write(tmp_path / "server.cer", cert_der(leaf.cert)[:-20]))


# -- PKCS#12 ------------------------------------------------------------------------------------


def test_pfx_with_password(tmp_path, pki):
    root, intermediate, leaf = pki
    path = write(tmp_path / "server.cer", pfx(leaf, (root.cert, intermediate.cert), PASSWORD))
    assert detect_format(path.read_bytes()) == "pkcs12"
    loaded = load_certificate_file(path, PASSWORD)
    assert loaded.certificate == leaf.cert
    assert loaded.chain == (intermediate.cert, root.cert)
    assert public(loaded.private_key) == public(leaf.key)


def test_pfx_without_password(tmp_path, pki):
    _, _, leaf = pki
    loaded = load_certificate_file(write(tmp_path / "server.p12", pfx(leaf)))
    assert loaded.certificate == leaf.cert


def test_pfx_wrong_password(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pfx", pfx(leaf, password=PASSWORD))
    with pytest.raises(CertificateLoadError) as caught:
        load_certificate_file(path, "hunter2-wrong")
    assert caught.value.message == "wrong password or corrupt PKCS#12"
    assert "hunter2-wrong" not in str(caught.value)
    assert caught.value.__context__ is None  # no chained error carrying details


def test_pfx_password_missing(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "server.pfx", pfx(leaf, password=PASSWORD))
    with pytest.raises(CertificateLoadError, match=r"corrupt PKCS#12 \(no password was given\)"):
        load_certificate_file(path)


# -- separate key files -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_separate_key_file(tmp_path, pki, encoding):
    _, intermediate, leaf = pki
    cert = write(tmp_path / "server.pem", cert_pem(leaf.cert), cert_pem(intermediate.cert))
    key_bytes = key_pem(leaf.key) if encoding == "pem" else key_der(leaf.key)
    key = write(tmp_path / "server.key", key_bytes)
    loaded = load_certificate_file(cert, key_file=key)
    assert loaded.certificate == leaf.cert
    assert loaded.chain == (intermediate.cert,)
    assert public(loaded.private_key) == public(leaf.key)


def test_separate_encrypted_key_file(tmp_path, pki):
    _, _, leaf = pki
    key = write(tmp_path / "server.key", key_pem(leaf.key, PASSWORD))
    assert public(load_private_key_file(key, PASSWORD)) == public(leaf.key)
    with pytest.raises(CertificateLoadError, match="wrong password"):
        load_private_key_file(key, "nope")


def test_separate_key_file_not_matching(tmp_path, pki):
    _, _, leaf = pki
    cert = write(tmp_path / "server.pem", cert_pem(leaf.cert))
    key = write(tmp_path / "other.key", key_pem(new_key()))
    with pytest.raises(CertificateLoadError, match="does not match the certificate"):
        load_certificate_file(cert, key_file=key)


def test_attach_key_to_a_file_that_has_one(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "s.pem", cert_pem(leaf.cert), key_pem(leaf.key))
    loaded = load_certificate_file(path)
    with pytest.raises(CertificateLoadError, match="already holds a private key"):
        attach_private_key(loaded, leaf.key)


# -- CA files -----------------------------------------------------------------------------------


def test_ca_bundle_pem(tmp_path, pki):
    root, intermediate, _ = pki
    path = write(tmp_path / "cas.pem", cert_pem(intermediate.cert), cert_pem(root.cert))
    assert load_ca_file(path) == (intermediate.cert, root.cert)


def test_ca_der(tmp_path, pki):
    root, _, _ = pki
    assert load_ca_file(write(tmp_path / "root.cer", cert_der(root.cert))) == (root.cert,)


def test_ca_file_with_a_private_key_is_refused(tmp_path, pki):
    root, _, _ = pki
    path = write(tmp_path / "root.pem", cert_pem(root.cert), key_pem(root.key, PASSWORD))
    with pytest.raises(CertificateLoadError, match="a CA file should hold certificates only"):
        load_ca_file(path)


def test_ca_file_pfx_is_refused(tmp_path, pki):
    root, _, _ = pki
    with pytest.raises(CertificateLoadError, match="PKCS#12 is not supported"):
        load_ca_file(write(tmp_path / "root.pfx", pfx(root)))


# -- unreadable and foreign files ---------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CertificateLoadError, match="file not found"):
        load_certificate_file(tmp_path / "nope.pem")


def test_directory(tmp_path):
    with pytest.raises(CertificateLoadError, match="is a directory"):
        load_certificate_file(tmp_path)


def test_empty_file(tmp_path):
    with pytest.raises(CertificateLoadError, match="the file is empty"):
        load_certificate_file(write(tmp_path / "empty.pem", b"\n"))


def test_random_bytes(tmp_path):
    with pytest.raises(CertificateLoadError, match="neither PEM, DER nor PKCS#12"):
        load_certificate_file(write(tmp_path / "noise.pem", b"\x00\x01 not a certificate" * 4))


def test_loaded_certificate_repr_hides_the_key(tmp_path, pki):
    _, _, leaf = pki
    path = write(tmp_path / "s.pem", cert_pem(leaf.cert), key_pem(leaf.key))
    loaded = load_certificate_file(path)
    assert "private_key" not in repr(loaded)
    assert "PRIVATE" not in repr(loaded)

"""The lab's TLS: a private certificate authority and the server certificates it signs.

The geo lab's tools serve HTTPS with certificates from a CA of the lab's own (`make_ca`), named
in the site file as the tool's ``ca_file``; each server certificate (`issue_cert`) names the
DNS names and addresses it is valid for in its subjectAltName. Keys are EC P-256, written with
mode 0600 from their first byte.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the CA's validity
CA_DAYS = 3650
#: a server certificate's validity
CERT_DAYS = 365
#: a certificate is valid from this long before it was made (clocks of the lab's hosts differ)
BACKDATE = datetime.timedelta(minutes=5)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write `key` as unencrypted PKCS#8 PEM to `path`, mode 0600 from its creation."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write `cert` as PEM to `path` (replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def make_ca(directory: Path, name: str = "handover lab CA") -> tuple[Path, Path]:
    """The lab's CA: ``ca.pem`` and ``ca-key.pem`` in `directory`, made once and reused.

    Args:
        directory: where the pair is (created if missing).
        name: the CA's common name (used only when the pair is made).

    Returns:
        The paths of the CA certificate and of its key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def issue_cert(
    ca_cert: Path,
    ca_key: Path,
    names: list[str],
    addresses: list[str],
    out_dir: Path,
    stem: str,
) -> tuple[Path, Path]:
    """A server certificate signed by the CA, valid for `names` and `addresses` for a year.

    Args:
        ca_cert: the CA's certificate (PEM).
        ca_key: the CA's key (PEM, unencrypted).
        names: the DNS names of its subjectAltName (``*.zone`` wildcards allowed); the first,
            or else the first address, is its common name.
        addresses: the IP addresses of its subjectAltName.
        out_dir: where ``<stem>.pem`` and ``<stem>-key.pem`` are written (created if missing).
        stem: the files' name.

    Returns:
        The paths of the certificate and of its key.

    Raises:
        ValueError: neither a name nor an address, an address that is not an IP address, or a
            CA key that is not an EC or RSA key.
    """
    if not names and not addresses:
        raise ValueError("a certificate needs at least one DNS name or IP address")
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{ca_key}: the CA key is neither an EC nor an RSA key")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    common = (names or addresses)[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}-key.pem"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path

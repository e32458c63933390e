"""RSA key pairs and TLS certificates for tests and examples (Go's ``testkeys``).

Nothing here is a fixed key: every process generates its own pairs on first use
(about 60 ms per 2048-bit pair), so no private key ever ships with the package
and no test key can be mistaken for a production one.

* :func:`key_pair` - the process-wide "test Kontrol" pair (:func:`private_pem`,
  :func:`public_pem`); :func:`other_key_pair` - a second, unrelated pair, handy
  for "signed by a foreign key" tests; :func:`generate_key_pair` - a fresh one.
* :func:`tls_cert_pem` / :func:`tls_key_pem` - a self-signed certificate for
  ``localhost``, ``127.0.0.1`` and ``::1``.
* ``python -m kite.testkeys DIR`` writes all of them into ``DIR``.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import sys
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

#: Key size of generated pairs: what Kontrol deployments use, and quick to generate.
KEY_BITS = 2048
#: Validity of the test TLS certificate (backdated by the same amount for clock skew).
CERT_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class KeyPair:
    """An RSA key pair as PEM text, with the parsed private key kept for signing."""

    private_pem: str
    public_pem: str
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey) -> KeyPair:
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        public_pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
        return cls(private_pem, public_pem, key)

    @classmethod
    def from_pem(cls, private_pem: str) -> KeyPair:
        """A pair from a private key PEM (parsing it costs ~35 ms: keep the result)."""
        key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return cls.from_private_key(key)


def generate_key_pair(bits: int = KEY_BITS) -> KeyPair:
    """A new RSA key pair."""
    return KeyPair.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=bits))


@functools.lru_cache(maxsize=1)
def key_pair() -> KeyPair:
    """The process-wide test Kontrol key pair (generated on first use)."""
    return generate_key_pair()


@functools.lru_cache(maxsize=1)
def other_key_pair() -> KeyPair:
    """A second pair, unrelated to :func:`key_pair` (a "foreign" Kontrol)."""
    return generate_key_pair()


def private_pem() -> str:
    """PEM of the test Kontrol private key (Go's ``testkeys.Private``)."""
    return key_pair().private_pem


def public_pem() -> str:
    """PEM of the test Kontrol public key (Go's ``testkeys.Public``)."""
    return key_pair().public_pem


@functools.lru_cache(maxsize=1)
def _tls() -> tuple[str, str]:
    pair = generate_key_pair()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pair.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_VALIDITY)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pair.private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), pair.private_pem


def tls_cert_pem() -> str:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1 (also its own CA)."""
    return _tls()[0]


def tls_key_pem() -> str:
    """The private key of :func:`tls_cert_pem`."""
    return _tls()[1]


def write(directory: str) -> dict[str, str]:
    """Write the test keys into ``directory`` (mode 0600); returns ``{name: path}``."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files = {
        "kontrol.pem": private_pem(),
        "kontrol_pub.pem": public_pem(),
        "tls_cert.pem": tls_cert_pem(),
        "tls_key.pem": tls_key_pem(),
    }
    paths = {}
    for name, text in files.items():
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kite.testkeys DIR", file=sys.stderr)
        return 2
    for path in write(args[0]).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The PEM certificates EMR's in-transit encryption needs, generated once per stack.

EMR's PEM provider reads a zip with `privateKey.pem`, `certificateChain.pem` and
`trustedCertificates.pem` from S3 when nodes boot. The certificate is self-signed for the
region's internal EC2 domain (the names nodes use to reach each other), so nothing outside the
cluster's private network can present it; the zip sits under code/, which only the cluster's
role (and the deployer) can read. A team with ACM Private CA can replace it with a custom
certificate provider instead.
"""
from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

VALIDITY = timedelta(days=825)  # the longest validity TLS clients commonly accept


def internal_domain(region: str) -> str:
    """The private DNS domain of EC2 instances in `region` (us-east-1 is the historical exception).

    Examples
    --------
    >>> internal_domain("eu-west-3"), internal_domain("us-east-1")
    ('eu-west-3.compute.internal', 'ec2.internal')
    """
    return "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"


def certificates_zip(region: str, now: datetime | None = None) -> bytes:
    """A zip of a fresh 2048-bit RSA key and a self-signed wildcard certificate for the region."""
    now = now or datetime.now(timezone.utc)
    wildcard = f"*.{internal_domain(region)}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wildcard),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Verger EMR cluster")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(wildcard)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("privateKey.pem", key_pem)
        archive.writestr("certificateChain.pem", certificate_pem)
        archive.writestr("trustedCertificates.pem", certificate_pem)
    return buffer.getvalue()

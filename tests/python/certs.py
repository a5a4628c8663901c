"""Certificates for the X.509 tests (test_x509.py, test_dps_x509.py), made with `cryptography`:
device certificates, CAs that sign them, written as PEM files for the SDKs."""

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import unique_id


class DeviceCert:
    """A certificate and its key, written as PEM files for the SDK.

    `issuer` is the signer's (name, key), or another `DeviceCert` (a CA); none: self-signed.
    `ca` makes a CA certificate (basic constraints, no client-auth usage). `expired` ends the
    validity a day ago. `chain` (certificates, leaf side first) is appended to the certificate
    file after this one, as a device sends its intermediates."""

    def __init__(self, tmp_path, cn, issuer=None, expired=False, ca=False, chain=()):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        if isinstance(issuer, DeviceCert):
            issuer = issuer.signer
        signer_name, signer_key = (self.name, self.key) if issuer is None else issuer
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2 if expired else 0)
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(signer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        self.cert = builder.sign(signer_key, hashes.SHA256())
        der = self.cert.public_bytes(serialization.Encoding.DER)
        self.sha1 = hashlib.sha1(der).hexdigest().upper()
        self.sha256 = hashlib.sha256(der).hexdigest().upper()
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        stem = tmp_path / unique_id("cert")
        self.cert_file = f"{stem}.pem"
        self.key_file = f"{stem}.key.pem"
        with open(self.cert_file, "w") as f:
            f.write(self.pem + "".join(c.pem for c in chain))
        with open(self.key_file, "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    @property
    def signer(self):
        """(name, key), to sign other certificates with."""
        return self.name, self.key

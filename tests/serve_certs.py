"""x509 certificates for the `serve --tls` tests, made with openssl as docs/access.md shows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from helpers import tool

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _sign(base: Path, name: str, folder: Path, prefix: str, subject: str, ext: str) -> None:
    ssl = tool("openssl")
    key, csr = folder / f"{prefix}-key.pem", base / f"{name}.csr"
    subprocess.run([ssl, "req", *EC, "-keyout", str(key), "-out", str(csr), "-subj", subject],
                   check=True, capture_output=True)
    (base / f"{name}.ext").write_text(ext)
    subprocess.run([ssl, "x509", "-req", "-in", str(csr), "-CA", str(base / "ca-cert.pem"), "-CAkey",
                    str(base / "ca-key.pem"), "-CAcreateserial", "-days", "2", "-out", str(folder / f"{prefix}-cert.pem"),
                    "-extfile", str(base / f"{name}.ext")], check=True, capture_output=True)


def make_certs(base: Path) -> dict[str, Path]:
    """A test CA and three folders under ``base``: ``server`` (ca-cert.pem, server-cert.pem for
    127.0.0.1/localhost, server-key.pem), ``client`` (ca-cert.pem only) and ``client-cert``
    (ca-cert.pem, client-cert.pem, client-key.pem signed by the CA)."""
    base.mkdir(parents=True, exist_ok=True)
    dirs = {k: base / k for k in ("server", "client", "client-cert")}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    subprocess.run([tool("openssl"), "req", "-x509", *EC, "-keyout", str(base / "ca-key.pem"), "-out",
                    str(base / "ca-cert.pem"), "-days", "2", "-subj", "/CN=diskvault test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    for d in dirs.values():
        shutil.copy(base / "ca-cert.pem", d / "ca-cert.pem")
    _sign(base, "server", dirs["server"], "server", "/CN=localhost",
          "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _sign(base, "client", dirs["client-cert"], "client", "/CN=diskvault test client", "extendedKeyUsage=clientAuth\n")
    return dirs

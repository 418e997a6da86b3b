"""Test certificates: a CA, server and client certificates for 127.0.0.1, and a rogue pair.

Made with the openssl CLI (the venv has no ``cryptography``); shared by the auth tests of the
services, the clients, the local cluster and Redis.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA with a server and a client certificate for 127.0.0.1, plus a client certificate
    from an unrelated CA (openssl CLI). Keys by file name: ``ca.pem``, ``server.pem``,
    ``server.key``, ``client.pem``, ``client.key``, ``rogue.pem``, ``rogue.key`` ...

    The certificates name no extended key usage, so each may serve as a server or a client
    certificate (``llamafleet up`` uses one pair for both)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")  # fmt: skip
    return {p.name: p for p in directory.iterdir()}

"""Throwaway TLS for the sandbox: a CA made on the spot and a certificate for the loopback names.

Why: the real Logis is HTTPS, and the path a first real run takes (trust, certificates, a
company proxy) is where it goes wrong. `batch-toggle sandbox --tls` lets anyone rehearse that
path: the CA exists only in the files written here (nothing is installed anywhere), the client
trusts it with `--ca-bundle` (or SSL_CERT_FILE), and it is thrown away with the files.

`trustme` makes the certificates (the python-trio project's library for exactly this).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """The files a TLS server needs (`cert` chain and `key`) and the one a client trusts (`ca`)."""

    ca: Path
    cert: Path
    key: Path


def throwaway_tls(directory: Path, names: Sequence[str] = LOOPBACK_NAMES) -> TlsFiles:
    """Make a CA and a server certificate for `names` in `directory`: sandbox-ca.pem (to trust),
    sandbox-cert.pem (the chain) and sandbox-key.pem (0600)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="batch-toggle sandbox (throwaway)")
    leaf = ca.issue_cert(*names)
    files = TlsFiles(directory / "sandbox-ca.pem", directory / "sandbox-cert.pem",
                     directory / "sandbox-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(leaf.private_key_pem.bytes())
    return files


__all__ = ["LOOPBACK_NAMES", "TlsFiles", "throwaway_tls"]

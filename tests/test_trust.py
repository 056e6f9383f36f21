"""Which CAs a run trusts (trust.py): the system store by default, certifi, --ca-bundle, and
SSL_CERT_FILE / SSL_CERT_DIR; verification always on."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from batch_toggle.errors import UsageError
from batch_toggle.send.trust import Trust, resolve_trust


def test_the_default_is_the_system_store_and_the_environment_is_recorded(tmp_path: Path,
                                                                         tls_kit: Any) -> None:
    trust = resolve_trust(None, None, {"SSL_CERT_FILE": str(tls_kit.ca),
                                       "SSL_CERT_DIR": str(tmp_path / "missing")})
    assert trust.source == "system"
    assert trust.env == (("SSL_CERT_FILE", str(tls_kit.ca)),)  # a missing path is not in force
    assert trust.describe() == f"the system trust store and SSL_CERT_FILE={tls_kit.ca}"


def test_a_ca_bundle_wins_and_is_recorded_absolute(tls_kit: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tls_kit.ca.parent)
    trust = resolve_trust("certifi", tls_kit.ca.name, {"SSL_CERT_FILE": "/etc/hosts"})
    assert (trust.source, trust.ca_bundle, trust.env) == ("ca_bundle", str(tls_kit.ca), ())
    assert trust.describe() == f"--ca-bundle {tls_kit.ca}"


@pytest.mark.parametrize("trust", [
    Trust("system"), Trust("certifi"), Trust("ca_bundle", "CA"),
    Trust("certifi", None, (("SSL_CERT_DIR", "DIR"),)),
], ids=["system", "certifi", "ca-bundle", "certifi-env"])
def test_every_context_verifies_certificates_and_names(trust: Trust, tls_kit: Any) -> None:
    paths = {"CA": str(tls_kit.ca), "DIR": str(tls_kit.ca_dir)}
    trust = Trust(trust.source, paths.get(trust.ca_bundle or ""),
                  tuple((k, paths[v]) for k, v in trust.env))
    context = trust.context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_ca_bundle_that_is_missing_or_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        resolve_trust(None, tmp_path / "nope.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(UsageError, match="not a readable PEM file"):
        resolve_trust(None, junk).context()


def test_an_unknown_trust_choice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--trust 'insecure'"):
        resolve_trust("insecure")

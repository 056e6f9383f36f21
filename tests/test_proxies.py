"""Which proxy a run goes through (proxies.py): the option, the environment, NO_PROXY, and
credentials that never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_toggle.errors import UsageError
from batch_toggle.send.proxies import (
    choose_proxy,
    has_credentials,
    read_proxy_auth_file,
    redact,
    with_credentials,
)

HTTPS = "https://app.logisapp.ca"


@pytest.mark.parametrize(("env", "url", "source"), [
    pytest.param({}, None, None, id="none"),
    pytest.param({"HTTPS_PROXY": "http://p:3128"}, "http://p:3128", "HTTPS_PROXY", id="upper"),
    pytest.param({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"}, "http://a:1",
                 "https_proxy", id="lower-case-first"),
    pytest.param({"HTTP_PROXY": "http://p:3128"}, None, None, id="http-proxy-not-for-https"),
    pytest.param({"ALL_PROXY": "p:3128"}, "http://p:3128", "ALL_PROXY", id="all-no-scheme"),
])
def test_the_environment_names_the_proxy_for_the_base_urls_scheme(
        env: dict[str, str], url: str | None, source: str | None) -> None:
    choice = choose_proxy(HTTPS, None, env)
    assert (choice.url, choice.source) == (url, source)


def test_the_option_wins_over_the_environment() -> None:
    choice = choose_proxy(HTTPS, "http://opt:8080", {"HTTPS_PROXY": "http://env:3128"})
    assert (choice.url, choice.source) == ("http://opt:8080", "--proxy")


@pytest.mark.parametrize(("no_proxy", "bypassed"), [
    ("*", True), ("app.logisapp.ca", True), ("logisapp.ca", True), (".logisapp.ca", True),
    ("*.logisapp.ca", True), ("other.ca,logisapp.ca", True), ("app.logisapp.ca:443", True),
    ("app.logisapp.ca:8443", False), ("isapp.ca", False), ("example.com", False),
])
def test_no_proxy_sends_named_hosts_direct(no_proxy: str, bypassed: bool) -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": no_proxy}
    choice = choose_proxy(HTTPS, None, env)
    assert (choice.url is None) is bypassed
    assert choice.bypassed_by == ("NO_PROXY" if bypassed else None)


def test_no_proxy_takes_addresses_and_ranges() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "no_proxy": "10.0.0.0/8,::1"}
    assert choose_proxy("https://10.2.3.4", None, env).url is None
    assert choose_proxy("https://[::1]:8443", None, env).url is None
    assert choose_proxy("https://11.2.3.4", None, env).url == "http://p:3128"


def test_credentials_are_masked_wherever_the_proxy_is_shown() -> None:
    choice = choose_proxy(HTTPS, None, {"HTTPS_PROXY": "http://bob:s3cr%3At@p:3128"})
    assert choice.has_credentials
    assert choice.shown == "http://bob:***@p:3128"
    assert "s3cr" not in choice.describe() + repr(choice) + str(choice.as_dict())


def test_a_credentials_file_replaces_the_urls_and_is_percent_encoded(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("\n  alice:pa:ss@word \n", encoding="utf-8")
    user, password = read_proxy_auth_file(path)
    assert (user, password) == ("alice", "pa:ss@word")
    choice = choose_proxy(HTTPS, "http://old:x@p:3128", {}, (user, password))
    assert choice.url == "http://alice:pa%3Ass%40word@p:3128"
    assert with_credentials("http://[::1]:3128", "u", "p") == "http://u:p@[::1]:3128"


@pytest.mark.parametrize("content", ["", "no-colon", ":password-only"])
def test_a_bad_credentials_file_is_a_usage_error_that_does_not_quote_it(
        tmp_path: Path, content: str) -> None:
    path = tmp_path / "auth"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match="USER:PASSWORD") as info:
        read_proxy_auth_file(path)
    assert not content or content not in str(info.value)


@pytest.mark.parametrize("url", ["socks5://p:1080", "ftp://p", "http://", "http://p:99999"])
def test_a_proxy_that_cannot_work_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="proxy"):
        choose_proxy(HTTPS, url, {})


def test_redact_and_has_credentials() -> None:
    assert redact("http://p:3128") == "http://p:3128"
    assert redact("http://u:pw@p") == "http://u:***@p"
    assert has_credentials("u:pw@p:3128") and not has_credentials("p:3128")

"""Faults for access (SPEC §8): Host, Origin, tokens and sessions, each broken on purpose."""

from __future__ import annotations

from tests.faults import Fault

_T = "tests/test_access.py::"

FAULTS: list[Fault] = [
    Fault(
        name="host-check-disabled",
        path="pipeline/access.py",
        find="        if not allowed:\n            raise Problem(421,",
        replace="        if False:\n            raise Problem(421,",
        tests=(_T + "test_rebinding_host_is_refused_on_every_route", _T + "test_allowed_hosts_setting"),
        guarantee="A request whose Host is not allowed is refused before anything else (DNS rebinding)",
    ),
    Fault(
        name="origin-check-on-writes-disabled",
        path="pipeline/access.py",
        find="        policy.check_origin(seen, host, write_or_stream=write or stream)",
        replace="        if not write:\n            policy.check_origin(seen, host, write_or_stream=stream)",
        tests=(
            _T + "test_cross_site_writes_are_refused_and_store_nothing",
            _T + "test_cross_site_without_origin_is_refused_for_writes_and_streams",
        ),
        guarantee="A write from another site's page is 403 and stores nothing",
    ),
    Fault(
        name="own-origin-ignores-port",
        path="pipeline/access.py",
        find="if name == host[0] and port == (host[1] or default_port):",
        replace="if name == host[0]:",
        tests=(_T + "test_cross_site_writes_are_refused_and_store_nothing",),
        guarantee="Only the page's own origin (scheme host and port) is allowed by default",
    ),
    Fault(
        name="sec-fetch-site-ignored",
        path="pipeline/access.py",
        find='elif write_or_stream and seen.fetch_site == "cross-site":',
        replace="elif False:",
        tests=(_T + "test_cross_site_without_origin_is_refused_for_writes_and_streams",),
        guarantee="A cross-site write or stream without Origin is refused",
    ),
    Fault(
        name="session-mac-not-verified",
        path="pipeline/access.py",
        find="if valid and now < int(expiry)",
        replace="if now < int(expiry)",
        tests=(_T + "test_session_cookie_signs_the_page_in_everywhere",),
        guarantee="Only a session cookie this service signed, with a read token still configured, reads",
    ),
    Fault(
        name="read-token-accepted-for-writes",
        path="pipeline/access.py",
        find="return not self.write or self.write.index(seen.bearer) is not None",
        replace=(
            "return not self.write or self.write.index(seen.bearer) is not None "
            "or self.read.index(seen.bearer) is not None"
        ),
        tests=(_T + "test_a_read_token_does_not_write_and_a_write_token_does",),
        guarantee="A read token does not write",
    ),
    Fault(
        name="token-comparison-skipped-for-streams",
        path="pipeline/access.py",
        find="if not write and not policy.may_read(seen, time.time()):",
        replace="if not write and not stream and not policy.may_read(seen, time.time()):",
        tests=(_T + "test_reads_need_a_read_token",),
        guarantee="With READ_TOKEN set, /ws and /events are 401 without a read token, before they open",
    ),
    Fault(
        name="two-authorization-headers-last-wins",
        path="pipeline/access.py",
        find="        if len(seen.authorizations) > 1:\n            raise Problem(400,",
        replace=(
            "        seen.authorizations = seen.authorizations[-1:]\n"
            "        if False:\n            raise Problem(400,"
        ),
        tests=(_T + "test_two_authorization_headers_are_refused_never_last_wins",),
        guarantee="Two Authorization headers are 400, never 'the last one wins'",
    ),
    Fault(
        name="secure-cookie-ignores-proxy",
        path="pipeline/access.py",
        find='or seen.forwarded_proto == "https"',
        replace="or False",
        tests=(_T + "test_session_cookie_signs_the_page_in_everywhere",),
        guarantee="Behind an HTTPS proxy (X-Forwarded-Proto: https) the session cookie is Secure",
    ),
    Fault(
        name="quart-app-unguarded",
        path="pipeline/app.py",
        find="    app.asgi_app = Access(",
        replace="    _unused = (",
        tests=(_T + "test_quart_app_used_directly_applies_the_same_checks",),
        guarantee="The Quart app served directly applies the same access checks",
    ),
]

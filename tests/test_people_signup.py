"""Open self-registration (off by default, on by the operator), email verification and who owns an
unverified account, and the rate limits on the doors anyone may knock on without a credential:
registration, password-reset mail and invitation acceptance."""

from __future__ import annotations

import secrets
from typing import Any

from tests.helpers import PASSWORD, bearer, error_of, mailed_token, new_org, people_api, sign_in


def _email(tag: str = "s") -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def test_registration_is_refused_unless_the_operator_opens_it(client, settings):
    assert settings.people.open_signup is False  # the default
    error_of(client.post("/v1/auth/register", json={"email": _email(), "password": PASSWORD}), 403, "SIGNUP_DISABLED")


def test_registration_makes_an_account_and_an_org_it_owns(settings):
    email = _email("Reg")
    with people_api(settings, open_signup=True) as c:
        r = c.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Ann",
                                              "org_name": f"Ann's {secrets.token_hex(3)}"})
        assert r.status_code == 201, r.text
        tokens: dict[str, Any] = r.json()
        assert tokens["role"] == "owner" and tokens["user"]["email"] == email.lower()
        assert tokens["user"]["email_verified"] is False
        me = c.get("/v1/me", headers=bearer(tokens)).json()
        assert [o["role"] for o in me["orgs"]] == ["owner"] and me["org_name"].startswith("Ann's")
        # The owner acts in the new org at once, and sees only themselves in it.
        members = c.get("/v1/members", headers=bearer(tokens)).json()["data"]
        assert [m["email"] for m in members] == [email.lower()]
        assert c.post("/v1/agents", json={"name": "a", "instructions": "x"}, headers=bearer(tokens)).status_code == 201
        # The same email again: taken. A weak password: the same rules as everywhere.
        assert error_of(c.post("/v1/auth/register", json={"email": email, "password": PASSWORD}), 409,
                        "CONFLICT")["details"]["reason"] == "email_taken"
        error_of(c.post("/v1/auth/register", json={"email": _email(), "password": "password1234"}), 422,
                 "PASSWORD_REJECTED")
        # The mailed link verifies the address, once.
        token = mailed_token(c, email.lower(), "aosv_")
        assert c.post("/v1/auth/verify-email", json={"token": token}).status_code == 204
        error_of(c.post("/v1/auth/verify-email", json={"token": token}), 404, "NOT_FOUND")
        assert c.get("/v1/me", headers=bearer(tokens)).json()["user"]["email_verified"] is True
        # A verification token is no reset token.
        error_of(c.post("/v1/auth/password-reset/confirm", json={"token": token, "password": PASSWORD}),
                 404, "NOT_FOUND")
        # Without org_name the org is named after the email.
        other = _email()
        r = c.post("/v1/auth/register", json={"email": other, "password": PASSWORD})
        assert r.status_code == 201 and c.get("/v1/me", headers=bearer(r.json())).json()["org_name"] == other


def test_whoever_proves_the_mailbox_takes_over_an_unverified_registration(settings):
    victim = _email("victim")
    with people_api(settings, open_signup=True) as c:
        squatter = c.post("/v1/auth/register", json={"email": victim, "password": PASSWORD})
        assert squatter.status_code == 201
        # The real owner of the address is invited elsewhere and accepts with their own password.
        org = new_org(c, "claim")
        c.post("/v1/invitations", json={"email": victim, "role": "member"}, headers=org.headers)
        own = "the mailbox owner's phrase"
        r = c.post("/v1/invitations/accept", json={"token": mailed_token(c, victim, "aosi_"), "password": own})
        assert r.status_code == 200 and r.json()["user"]["email_verified"] is True
        # The registrant's password and sign-ins are gone; the owner's work.
        error_of(c.get("/v1/me", headers=bearer(squatter.json())), 401, "UNAUTHENTICATED")
        error_of(c.post("/v1/auth/login", json={"email": victim, "password": PASSWORD}), 401, "UNAUTHENTICATED")
        assert sign_in(c, victim, own, org.id)["role"] == "member"


def test_registrations_are_limited_per_ip(settings):
    with people_api(settings, open_signup=True, signups_per_ip=2) as c:
        codes = [c.post("/v1/auth/register", json={"email": _email(), "password": PASSWORD}).status_code
                 for _ in range(3)]
        assert codes == [201, 201, 429]
        refused = c.post("/v1/auth/register", json={"email": _email(), "password": PASSWORD})
        assert error_of(refused, 429, "RATE_LIMITED")["details"]["scope"] == "ip"
        assert int(refused.headers["Retry-After"]) >= 1


def test_reset_mail_is_limited_per_email_and_per_ip(settings):
    with people_api(settings, reset_mails_per_email=2, reset_requests_per_ip=4) as c:
        email = _email()  # no account: counted all the same, so a 429 says nothing about one
        codes = [c.post("/v1/auth/password-reset", json={"email": email}).status_code for _ in range(3)]
        assert codes == [204, 204, 429]
        refused = c.post("/v1/auth/password-reset", json={"email": email})
        assert error_of(refused, 429, "RATE_LIMITED")["details"]["scope"] == "email"
        assert "Retry-After" in refused.headers
        # Other emails from the same address, until the IP's count is spent too.
        codes = [c.post("/v1/auth/password-reset", json={"email": _email()}).status_code for _ in range(2)]
        assert codes == [429, 429]
        assert error_of(c.post("/v1/auth/password-reset", json={"email": _email()}), 429,
                        "RATE_LIMITED")["details"]["scope"] == "ip"


def test_invitation_accept_is_limited_per_ip_and_per_token(settings):
    with people_api(settings, accept_failures_per_ip=3, accept_attempts_per_token=2) as c:
        codes = [c.post("/v1/invitations/accept", json={"token": f"aosi_guess{i}"}).status_code for i in range(4)]
        assert codes == [404, 404, 404, 429]
        assert error_of(c.post("/v1/invitations/accept", json={"token": "aosi_another"}), 429,
                        "RATE_LIMITED")["details"]["scope"] == "ip"
    with people_api(settings, accept_failures_per_ip=3, accept_attempts_per_token=2) as c:
        org, email = new_org(c, "limits"), _email()
        c.post("/v1/invitations", json={"email": email}, headers=org.headers)
        token = mailed_token(c, email, "aosi_")
        # Weak passwords count against the token; a valid token is not a failure of the IP.
        error_of(c.post("/v1/invitations/accept", json={"token": token, "password": "short"}), 422,
                 "PASSWORD_REJECTED")
        assert c.post("/v1/invitations/accept", json={"token": token, "password": PASSWORD}).status_code == 200
        refused = c.post("/v1/invitations/accept", json={"token": token, "password": PASSWORD})
        assert error_of(refused, 429, "RATE_LIMITED")["details"]["scope"] == "token"


def test_no_password_or_token_of_a_registration_in_responses_logs_or_audit(settings, stack, caplog):
    import logging

    import psycopg

    caplog.set_level(logging.DEBUG)
    email = _email()
    with people_api(settings, open_signup=True) as c:
        tokens = c.post("/v1/auth/register", json={"email": email, "password": PASSWORD}).json()
        verify = mailed_token(c, email, "aosv_")
        secrets_ = [PASSWORD, verify, tokens["refresh_token"], tokens["access_token"]]
        bodies = [c.get(path, headers=bearer(tokens)).text for path in ("/v1/me", "/v1/members", "/v1/audit-logs")]
        cookie_body = c.post("/v1/auth/login", json={"email": email, "password": PASSWORD, "cookie": True}).text
    assert not any(s in body for body in bodies for s in secrets_)
    assert "aosr_" not in cookie_body and "eyJ" not in cookie_body  # a cookie session's body holds no token
    for record in caplog.records:
        if record.name != "agentos.mailer":
            assert not any(s in record.getMessage() for s in secrets_), record.name
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT details::text, actor, target_id FROM audit_logs WHERE org_id = %s",
                            (tokens["org_id"],)).fetchall()
    assert rows and not any(s in " ".join(map(str, row)) for row in rows for s in secrets_)

"""People: membership and role rules, invitations, password sign-in with rotating refresh tokens,
lockout, reset, removal taking effect at once, and no secret in responses, logs or audit."""

from __future__ import annotations

import logging
import secrets
import time

import jwt
import psycopg
import pytest

from tests.helpers import (
    JWT_SECRET,
    PASSWORD,
    bearer,
    error_of,
    join,
    mailed_token,
    new_org,
    sign_in,
)


def _email(tag: str = "p") -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def test_invitation_accept_sign_in_acts_in_that_org_only(client, org, other_org):
    email = _email()
    tokens = join(org, email, "member")
    assert tokens["org_id"] == org.id and tokens["role"] == "member"
    assert tokens["user"]["email"] == email and tokens["user"]["email_verified"] is True
    me = client.get("/v1/me", headers=bearer(tokens)).json()
    assert me["user_id"] == tokens["user"]["id"] and me["role"] == "member" and me["credential"] == "jwt"
    assert [o["org_id"] for o in me["orgs"]] == [org.id]
    agent = client.post("/v1/agents", json={"name": "mine", "instructions": "x"}, headers=bearer(tokens))
    assert agent.status_code == 201
    assert agent.json()["created_by"] == tokens["user"]["id"]  # attribution
    # Another org's data is never visible, and its org id is not a door.
    theirs = other_org.create_agent()
    error_of(client.get(f"/v1/agents/{theirs['id']}", headers=bearer(tokens)), 404, "NOT_FOUND")
    error_of(client.post("/v1/auth/login", json={"email": email, "password": PASSWORD, "org_id": other_org.id}),
             403, "FORBIDDEN")
    error_of(client.post("/v1/auth/switch-org", json={"org_id": other_org.id}, headers=bearer(tokens)),
             403, "FORBIDDEN")
    members = client.get("/v1/members", headers=org.headers).json()["data"]
    assert [(m["email"], m["role"]) for m in members] == [(email, "member")]
    assert client.get("/v1/members", headers=other_org.headers).json()["data"] == []
    # Viewers and members cannot invite.
    error_of(client.post("/v1/invitations", json={"email": _email(), "role": "viewer"}, headers=bearer(tokens)),
             403, "FORBIDDEN")


def test_a_user_in_two_orgs_switches_between_them(client, org, other_org):
    email = _email()
    first = join(org, email, "admin")
    r = client.post("/v1/invitations", json={"email": email, "role": "viewer"}, headers=other_org.headers)
    token = mailed_token(client, email, "aosi_")
    # An existing user is linked; no password needed.
    r = client.post("/v1/invitations/accept", json={"token": token})
    assert r.status_code == 200 and r.json()["user"]["id"] == first["user"]["id"]
    me = client.get("/v1/me", headers=bearer(first)).json()
    assert {o["org_id"]: o["role"] for o in me["orgs"]} == {org.id: "admin", other_org.id: "viewer"}
    switched = client.post("/v1/auth/switch-org", json={"org_id": other_org.id}, headers=bearer(first))
    assert switched.status_code == 200, switched.text
    assert switched.json()["org_id"] == other_org.id and switched.json()["role"] == "viewer"
    assert client.get("/v1/me", headers=bearer(switched.json())).json()["org_id"] == other_org.id
    error_of(client.post("/v1/agents", json={"name": "n", "instructions": "x"}, headers=bearer(switched.json())),
             403, "FORBIDDEN")


def test_invitation_is_single_use_and_resend_invalidates_the_old_link(client, org):
    email = _email()
    r = client.post("/v1/invitations", json={"email": email, "role": "member"}, headers=org.headers)
    assert r.status_code == 201 and r.json()["token"] is None  # the dev mailer sent it
    first = mailed_token(client, email, "aosi_")
    resent = client.post(f"/v1/invitations/{r.json()['id']}/resend", headers=org.headers)
    assert resent.status_code == 201, resent.text
    second = mailed_token(client, email, "aosi_")
    assert first != second
    error_of(client.post("/v1/invitations/accept", json={"token": first, "password": PASSWORD}), 404, "NOT_FOUND")
    error_of(client.post("/v1/invitations/accept", json={"token": second, "password": "short"}),
             422, "PASSWORD_REJECTED")
    error_of(client.post("/v1/invitations/accept", json={"token": second, "password": "password1234"}),
             422, "PASSWORD_REJECTED")
    assert client.post("/v1/invitations/accept", json={"token": second, "password": PASSWORD}).status_code == 200
    error_of(client.post("/v1/invitations/accept", json={"token": second, "password": PASSWORD}), 404, "NOT_FOUND")
    listed = client.get("/v1/invitations", headers=org.headers).json()["data"]
    assert [(i["accepted_at"] is not None, i["revoked_at"] is not None) for i in listed] == [(True, False),
                                                                                               (False, True)]


def test_expired_invitation_is_refused(client, org, stack):
    email = _email()
    inv = client.post("/v1/invitations", json={"email": email}, headers=org.headers).json()
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = %s", (inv["id"],))
    token = mailed_token(client, email, "aosi_")
    error_of(client.post("/v1/invitations/accept", json={"token": token, "password": PASSWORD}), 404, "NOT_FOUND")


def test_role_rules_nobody_above_their_own_and_the_last_owner_stays(client, org):
    owner = join(org, _email("owner"), "owner")
    admin = join(org, _email("admin"), "admin")
    member = join(org, _email("member"), "member")
    oid, aid, mid = owner["user"]["id"], admin["user"]["id"], member["user"]["id"]
    # An admin may neither grant owner nor invite one, nor touch the owner.
    error_of(client.patch(f"/v1/members/{mid}", json={"role": "owner"}, headers=bearer(admin)), 403, "FORBIDDEN")
    error_of(client.post("/v1/invitations", json={"email": _email(), "role": "owner"}, headers=bearer(admin)),
             403, "FORBIDDEN")
    error_of(client.patch(f"/v1/members/{oid}", json={"role": "viewer"}, headers=bearer(admin)), 403, "FORBIDDEN")
    error_of(client.delete(f"/v1/members/{oid}", headers=bearer(admin)), 403, "FORBIDDEN")
    error_of(client.patch(f"/v1/members/{mid}", json={"role": "admin"}, headers=bearer(member)), 403, "FORBIDDEN")
    r = client.patch(f"/v1/members/{mid}", json={"role": "viewer"}, headers=bearer(admin))
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    # The role takes effect on the member's next request, with the same token.
    assert client.get("/v1/me", headers=bearer(member)).json()["role"] == "viewer"
    # The last owner can be neither demoted nor removed, not even by themselves.
    assert error_of(client.patch(f"/v1/members/{oid}", json={"role": "admin"}, headers=bearer(owner)),
                    409, "CONFLICT")["details"]["reason"] == "last_owner"
    error_of(client.delete(f"/v1/members/{oid}", headers=bearer(owner)), 409, "CONFLICT")
    # With a second owner, the first may step down.
    assert client.patch(f"/v1/members/{aid}", json={"role": "owner"}, headers=bearer(owner)).status_code == 200
    assert client.patch(f"/v1/members/{oid}", json={"role": "admin"}, headers=bearer(owner)).status_code == 200
    error_of(client.patch(f"/v1/members/{aid}", json={"role": "admin"}, headers=bearer(admin)), 409, "CONFLICT")


def test_a_removed_member_is_locked_out_at_once(client, org):
    member = join(org, _email(), "admin")
    uid = member["user"]["id"]
    key = client.post("/v1/api-keys", json={"name": "mine", "role": "member"}, headers=bearer(member))
    assert key.status_code == 201 and key.json()["created_by"] == uid
    key_headers = {"Authorization": f"Bearer {key.json()['key']}"}
    assert client.get("/v1/agents", headers=key_headers).status_code == 200
    assert client.get("/v1/agents", headers=bearer(member)).status_code == 200
    removed = client.delete(f"/v1/members/{uid}", headers=org.headers)
    assert removed.status_code == 200, removed.text
    error_of(client.get("/v1/agents", headers=bearer(member)), 401, "UNAUTHENTICATED")
    error_of(client.get("/v1/agents", headers=key_headers), 401, "UNAUTHENTICATED")
    error_of(client.post("/v1/auth/refresh", json={"refresh_token": member["refresh_token"]}), 401, "UNAUTHENTICATED")
    error_of(client.post("/v1/auth/login", json={"email": member["user"]["email"], "password": PASSWORD}),
             403, "FORBIDDEN")
    assert client.get("/v1/members", headers=org.headers).json()["data"] == []
    audit = client.get("/v1/audit-logs", headers=org.headers).json()["data"]
    entry = next(a for a in audit if a["action"] == "member.remove")
    assert entry["details"]["revoked_api_keys"] == [key.json()["id"]]


def test_refresh_rotates_and_reuse_ends_the_sign_in(client, org):
    tokens = join(org, _email())
    r = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != tokens["refresh_token"]
    assert client.get("/v1/me", headers=bearer(second)).status_code == 200
    # The first refresh token again: a leak. The whole sign-in ends, the new tokens included.
    error_of(client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401, "UNAUTHENTICATED")
    error_of(client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}), 401, "UNAUTHENTICATED")
    error_of(client.get("/v1/me", headers=bearer(second)), 401, "UNAUTHENTICATED")
    error_of(client.get("/v1/me", headers=bearer(tokens)), 401, "UNAUTHENTICATED")


def test_logout_ends_the_sign_in(client, org):
    tokens = join(org, _email())
    other = sign_in(client, tokens["user"]["email"])
    error_of(client.post("/v1/auth/logout", headers=org.headers), 400, "BAD_REQUEST")  # an API key
    assert client.post("/v1/auth/logout", headers=bearer(tokens)).status_code == 204
    error_of(client.get("/v1/me", headers=bearer(tokens)), 401, "UNAUTHENTICATED")
    error_of(client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}), 401, "UNAUTHENTICATED")
    assert client.get("/v1/me", headers=bearer(other)).status_code == 200  # another sign-in is its own


def test_failed_sign_ins_lock_the_account_with_growing_backoff(client, org):
    tokens = join(org, _email())
    email = tokens["user"]["email"]
    answers = [client.post("/v1/auth/login", json={"email": email, "password": "wrong password!!"})
               for _ in range(6)]
    assert [a.status_code for a in answers] == [401, 401, 401, 401, 429, 429]
    assert answers[4].json()["error"]["details"] == {"retry_after_s": 1, "scope": "account"}
    assert answers[4].headers["Retry-After"] == "1"
    # Locked: even the right password is refused until the lock ends.
    error_of(client.post("/v1/auth/login", json={"email": email, "password": PASSWORD}), 429, "RATE_LIMITED")
    time.sleep(1.1)
    failed = client.post("/v1/auth/login", json={"email": email, "password": "wrong password!!"})
    assert failed.json()["error"]["details"]["retry_after_s"] == 2  # doubled
    # An unknown account answers like a wrong password.
    error_of(client.post("/v1/auth/login", json={"email": _email(), "password": PASSWORD}), 401, "UNAUTHENTICATED")


def test_failed_sign_ins_per_ip_are_capped(client, org, settings):
    from starlette.testclient import TestClient

    from api.app import create_app

    app = create_app(settings.model_copy(update={"people": settings.people.model_copy(
        update={"ip_failures_per_window": 3})}))
    with TestClient(app, client=("192.0.2.7", 50000)) as c:  # an IP of its own
        codes = [c.post("/v1/auth/login", json={"email": _email(), "password": "wrong password!!"}).status_code
                 for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_password_reset_works_once_and_ends_every_sign_in(client, org):
    tokens = join(org, _email())
    email = tokens["user"]["email"]
    assert client.post("/v1/auth/password-reset", json={"email": email}).status_code == 204
    assert client.post("/v1/auth/password-reset", json={"email": _email()}).status_code == 204  # same answer
    token = mailed_token(client, email, "aosp_")
    new = "another long pass phrase 7"
    error_of(client.post("/v1/auth/password-reset/confirm", json={"token": token, "password": email}),
             422, "PASSWORD_REJECTED")
    r = client.post("/v1/auth/password-reset/confirm", json={"token": token, "password": new})
    assert r.status_code == 204, r.text
    error_of(client.post("/v1/auth/password-reset/confirm", json={"token": token, "password": new}),
             404, "NOT_FOUND")
    error_of(client.get("/v1/me", headers=bearer(tokens)), 401, "UNAUTHENTICATED")
    error_of(client.post("/v1/auth/login", json={"email": email, "password": PASSWORD}), 401, "UNAUTHENTICATED")
    assert sign_in(client, email, new)["org_id"] == org.id


def test_an_external_jwt_subject_becomes_a_member_on_first_sight(client, org):
    sub = "idp|" + secrets.token_hex(4)
    token = jwt.encode({"sub": sub, "org_id": org.id, "role": "member", "aud": "agentos",
                        "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["user"]["id"] == sub and me["orgs"][0]["org_id"] == org.id
    members = client.get("/v1/members", headers=org.headers).json()["data"]
    assert [(m["user_id"], m["role"], m["email"]) for m in members] == [(sub, "member", None)]
    # Paging by user id works for any subject string.
    page = client.get("/v1/members?limit=1", headers=org.headers).json()
    assert page["next_cursor"] is None
    # The owner may remove them like anyone else.
    assert client.delete(f"/v1/members/{sub}", headers=org.headers).status_code == 200


def test_no_password_or_token_in_responses_logs_or_audit(client, org, stack, caplog):
    caplog.set_level(logging.DEBUG)
    email = _email()
    tokens = join(org, email, "admin")
    refreshed = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
    client.post("/v1/auth/password-reset", json={"email": email})
    reset = mailed_token(client, email, "aosp_")
    invite_token = mailed_token(client, email, "aosi_")
    secrets_ = [PASSWORD, tokens["refresh_token"], refreshed["refresh_token"], reset, invite_token,
                tokens["access_token"]]
    # Logs: only the dev mailer's own lines carry a link.
    for record in caplog.records:
        if record.name == "agentos.mailer":
            continue
        text = record.getMessage()
        assert not any(s in text for s in secrets_), (record.name, text)
    # Responses that are not the issuing one.
    for path in ("/v1/me", "/v1/members", "/v1/invitations", "/v1/audit-logs"):
        body = client.get(path, headers=bearer(refreshed)).text
        assert not any(s in body for s in secrets_), path
        assert "argon2" not in body and "password_hash" not in body and "token_hash" not in body
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT details::text, actor, target_id FROM audit_logs WHERE org_id = %s",
                            (org.id,)).fetchall()
        stored = conn.execute("SELECT password_hash FROM users WHERE email = %s", (email,)).fetchone()
    assert not any(s in " ".join(map(str, row)) for row in rows for s in secrets_)
    assert stored is not None and stored[0].startswith("$argon2id$") and PASSWORD not in stored[0]


@pytest.mark.parametrize("body", [{"token": "aosi_nope", "password": PASSWORD}, {"token": "x"}])
def test_unknown_invitation_tokens_are_refused(client, body):
    error_of(client.post("/v1/invitations/accept", json=body), 404, "NOT_FOUND")


def test_members_of_one_org_are_not_listed_in_another(client):
    a, b = new_org(client, "people a"), new_org(client, "people b")
    join(a, _email())
    assert client.get("/v1/members", headers=b.headers).json()["data"] == []


def test_what_a_signed_in_user_does_is_attributed_to_them(client, org, stack):
    tokens = join(org, _email(), "member")
    uid, h = tokens["user"]["id"], bearer(tokens)
    agent = client.post("/v1/agents", json={"name": "attrib", "instructions": "x"}, headers=h).json()
    session = client.post("/v1/sessions", json={"agent_id": agent["id"]}, headers=h).json()
    run = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=h)
    assert run.status_code == 202, run.text
    with psycopg.connect(stack.database_url) as conn:
        created_by = conn.execute("SELECT created_by FROM runs WHERE id = %s", (run.json()["id"],)).fetchone()
        actors = {r[0] for r in conn.execute(
            "SELECT actor FROM audit_logs WHERE org_id = %s AND action IN ('agent.create', 'auth.login')",
            (org.id,)).fetchall()}
    assert created_by == (f"user:{uid}",)
    assert actors == {f"user:{uid}"}


def test_the_migration_keeps_recorded_subjects_as_users_and_members(stack):
    import os

    from core.migrations import MIGRATIONS, _people, migrate

    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    database = f"people_{os.urandom(4).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = stack.database_url.rsplit("/", 1)[0] + "/" + database
    try:
        version = next(v for v, m in enumerate(MIGRATIONS, start=1) if m.apply is _people)
        migrate(url, "agentos_app", target=version - 1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO orgs (id, name) VALUES ('org_a', 'A'), ('org_b', 'B')")
            conn.execute("INSERT INTO users (org_id, id, role) VALUES ('org_a', 'sub-1', 'admin'), "
                         "('org_b', 'sub-1', 'viewer'), ('org_a', 'sub-2', 'member')")
        assert migrate(url, "agentos_app", target=version) == 1
        with psycopg.connect(url) as conn:
            members = sorted(conn.execute("SELECT org_id, user_id, role FROM memberships").fetchall())
            people = sorted(r[0] for r in conn.execute("SELECT id FROM users").fetchall())
            forced = conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'memberships'").fetchone()
        assert members == [("org_a", "sub-1", "admin"), ("org_a", "sub-2", "member"), ("org_b", "sub-1", "viewer")]
        assert people == ["sub-1", "sub-2"] and forced == (True,)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")

"""Owner keys: only an owner revokes one, and the org's last live owner key cannot be revoked,
so neither an admin nor a slip of the owner's own hand locks the org out."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.helpers import error_of


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _owner_key_id(client, org) -> str:
    keys = client.get("/v1/api-keys", headers=org.headers).json()["data"]
    return str(next(k["id"] for k in keys if k["role"] == "owner" and k["revoked_at"] is None))


def _new_key(client, org, role: str, **fields: Any) -> dict[str, Any]:
    r = client.post("/v1/api-keys", json={"name": f"{role} key", "role": role} | fields, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_an_admin_cannot_revoke_an_owner_key(client, org):
    admin = _new_key(client, org, "admin")
    owner_id = _owner_key_id(client, org)
    error = error_of(client.delete(f"/v1/api-keys/{owner_id}", headers=_bearer(admin["key"])), 403, "FORBIDDEN")
    assert "Only an owner" in error["message"]
    assert client.get("/v1/me", headers=org.headers).status_code == 200  # the owner is not locked out
    # Admins still manage the keys below owner.
    member = _new_key(client, org, "member")
    assert client.delete(f"/v1/api-keys/{member['id']}", headers=_bearer(admin["key"])).status_code == 200


def test_the_last_owner_key_cannot_be_revoked_even_by_its_owner(client, org):
    owner_id = _owner_key_id(client, org)
    error = error_of(client.delete(f"/v1/api-keys/{owner_id}", headers=org.headers), 409, "CONFLICT")
    assert "last active owner key" in error["message"] and error["details"] == {"reason": "last_owner_key"}
    assert client.get("/v1/me", headers=org.headers).status_code == 200


def test_with_a_second_owner_key_the_first_can_go_but_not_both(client, org):
    first = _owner_key_id(client, org)
    second = _new_key(client, org, "owner")
    assert client.delete(f"/v1/api-keys/{first}", headers=_bearer(second["key"])).status_code == 200
    error_of(client.delete(f"/v1/api-keys/{second['id']}", headers=_bearer(second["key"])), 409, "CONFLICT")


def test_an_expired_owner_key_does_not_count_as_a_live_owner(client, org, stack):
    first_id = _owner_key_id(client, org)
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    expiring = _new_key(client, org, "owner", expires_at=soon)
    with psycopg.connect(stack.database_url) as conn:  # the clock moves on: it expires
        conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", (expiring["id"],))
    error_of(client.delete(f"/v1/api-keys/{first_id}", headers=org.headers), 409, "CONFLICT")
    # Revoking the expired one is harmless and allowed.
    assert client.delete(f"/v1/api-keys/{expiring['id']}", headers=org.headers).status_code == 200


def test_two_owners_revoking_each_other_at_once_leave_one_owner(client, org, stack):
    first_id = _owner_key_id(client, org)
    second = _new_key(client, org, "owner")
    # Each owner revokes the other's key at the same moment: the locks queue them, and the one
    # that goes second finds it would remove the last owner.
    requests = [(first_id, _bearer(second["key"])), (second["id"], org.headers)]
    barrier = threading.Barrier(2)
    statuses: list[int] = [0, 0]

    def revoke(i: int) -> None:
        key_id, headers = requests[i]
        barrier.wait()
        statuses[i] = client.delete(f"/v1/api-keys/{key_id}", headers=headers).status_code

    threads = [threading.Thread(target=revoke, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # The loser gets 409, or 401 when its own key was already revoked before it authenticated.
    assert statuses.count(200) == 1 and set(statuses) <= {200, 401, 409}, statuses
    with psycopg.connect(stack.database_url) as conn:
        live = conn.execute("SELECT count(*) FROM api_keys WHERE org_id = %s AND role = 'owner' "
                            "AND revoked_at IS NULL", (org.id,)).fetchone()
    assert live is not None and live[0] == 1

"""The console's people pages in headless Chromium (Debian's `chromium`, never a downloaded browser)
against the API under uvicorn: sign in with email and password (a cookie session the page cannot
read), the members page (change a role), the invitations page (invite, resend, revoke), switching
org, a provider's button when one is configured, and signing out."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from agentos.stack.local import StackUrls
from api.app import create_app
from tests.console_page import WAIT_MS, console
from tests.helpers import PASSWORD, RsaKeys, join, make_settings, new_org, people_api, serving


@pytest.fixture
def people_url(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[str]:
    """The API serving the console, with GitHub sign-in configured (its button shows; never clicked)."""
    settings = make_settings(stack, rsa_keys, people={"github_client_id": "console-test"})
    with serving(create_app(settings)) as served:
        yield served.url


@pytest.mark.timeout(240)
def test_password_sign_in_members_and_invitations(settings, people_url: str):
    email, colleague = f"admin-{secrets.token_hex(4)}@example.com", f"col-{secrets.token_hex(4)}@example.com"
    invitee = f"new-{secrets.token_hex(4)}@example.com"
    with people_api(settings) as c:
        org, second = new_org(c, "console people"), new_org(c, "console second")
        join(org, email, "admin")
        member = join(org, colleague, "member")
        join(second, email, "viewer")
        member_id = member["user"]["id"]
        second_name = c.get(f"/v1/orgs/{second.id}", headers={"Authorization": f"Bearer {_admin()}"}).json()["name"]

        with console(people_url) as con:
            page = con.page
            page.goto(people_url + "/console")
            page.wait_for_selector("button[data-provider=github]")  # the server has a provider
            page.fill("input[name=email]", email)
            page.fill("input[name=password]", PASSWORD)
            page.click("#password-sign-in button[type=submit]")
            page.wait_for_selector("#top:not([hidden]) #role:not(:empty)", timeout=WAIT_MS)
            assert page.text_content("#role") == "admin"
            # The session is in cookies the page cannot read; only the CSRF token is visible.
            seen = page.evaluate("document.cookie")
            assert "agentos_csrf=" in seen and "agentos_access" not in seen
            assert page.evaluate("sessionStorage.length") == 0

            con.go("#/members")
            page.wait_for_selector(f"#members tr[data-user='{member_id}']")
            assert email in page.inner_text("#members") and colleague in page.inner_text("#members")
            # Roles above one's own are not offered.
            options = page.eval_on_selector_all(f"#members tr[data-user='{member_id}'] option",
                                                "os => os.map(o => o.value)")
            assert options == ["viewer", "member", "admin"]
            page.select_option(f"#members tr[data-user='{member_id}'] select", "viewer")
            page.wait_for_function(f"""() => document.querySelector("#members tr[data-user='{member_id}'] select")
                                       ?.value === 'viewer'""")
            _until(lambda: _role_of(c, org.headers, member_id) == "viewer")
            con.screenshot("members")

            con.go("#/invitations")
            page.fill("#invite input[name=email]", invitee)
            page.select_option("#invite select[name=role]", "member")
            page.click("#invite button[type=submit]")
            page.wait_for_selector("#invitations tr[data-state=open]")
            assert invitee in page.inner_text("#invitations")
            invited = c.get("/v1/invitations", headers=org.headers).json()["data"]
            assert [(i["role"], i["invited_by"]) for i in invited if i["email"] == invitee] == [
                ("member", _user_id(c, email))]
            page.click("#invitations tr[data-state=open] button:text('Resend')")
            page.wait_for_selector("#invitations tr[data-state=revoked]")
            page.click("#invitations tr[data-state=open] button:text('Revoke')")
            page.wait_for_function("() => !document.querySelector('#invitations tr[data-state=open]')")
            con.screenshot("invitations")

            # In two orgs: choose the other one; the header and the role follow.
            page.select_option("#org-switch", second.id)
            page.wait_for_function(f"() => document.getElementById('org-name').textContent === {second_name!r}")
            assert page.text_content("#role") == "viewer"
            page.click("#sign-out")
            page.wait_for_selector("#password-sign-in")
            assert "agentos_csrf" not in page.evaluate("document.cookie")
            con.assert_clean()


def _user_id(c, email: str) -> str:
    return str(c.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).json()["user"]["id"])


def _admin() -> str:
    from tests.helpers import ADMIN_TOKEN

    return ADMIN_TOKEN


def _role_of(c, headers: dict[str, str], user_id: str) -> str | None:
    members = c.get("/v1/members", headers=headers).json()["data"]
    return next((m["role"] for m in members if m["user_id"] == user_id), None)


def _until(check, limit_s: float = 20) -> None:
    from tests.helpers import until

    until(check, limit_s)
    assert check()

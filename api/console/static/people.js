// People: the org's members (change a role, remove someone) and its invitations (invite by email,
// resend, revoke). Admins see the controls; the API applies the same rules (nobody above their own
// role, the last owner stays) and its refusals show in place.
import {all, del, patch, post} from "./api.js";
import {errorBox, field, h, when} from "./dom.js";

const ROLES = ["viewer", "member", "admin", "owner"];
const RANK = Object.fromEntries(ROLES.map((r, i) => [r, i]));

function roleSelect(current, ctx, name) {
  // Only roles up to your own can be granted.
  return h("select", {name, "aria-label": "Role"}, ROLES.filter((r) => RANK[r] <= RANK[ctx.me.role] || r === current)
    .map((r) => h("option", {value: r, text: r, selected: r === current})));
}

export async function renderMembers(main, ctx) {
  const status = h("div", {role: "status"});
  const body = h("tbody");
  main.append(h("h1", {text: "Members"}), status,
    h("table", {id: "members"}, h("thead", {}, h("tr", {}, ["Email", "Name", "Role", "Joined", ""].map(
      (t) => h("th", {text: t})))), body));
  const load = async () => {
    const members = await all("/v1/members");
    body.replaceChildren(...members.map((m) => row(m)));
    if (!members.length) body.append(h("tr", {}, h("td", {colspan: 5, class: "muted", text: "No members yet."})));
  };
  const row = (m) => {
    const mine = m.user_id === ctx.me.user_id;
    const editable = ctx.can("admin") && RANK[m.role] <= RANK[ctx.me.role];
    let roleCell = h("span", {class: "badge", text: m.role});
    if (editable) {
      const select = roleSelect(m.role, ctx, "role");
      select.addEventListener("change", async () => {
        status.replaceChildren();
        try { await patch(`/v1/members/${encodeURIComponent(m.user_id)}`, {role: select.value}); await load(); }
        catch (error) { status.append(errorBox(error)); select.value = m.role; }
      });
      roleCell = select;
    }
    const remove = editable ? h("button", {type: "button", class: "danger", text: mine ? "Leave" : "Remove",
      onclick: async () => {
        status.replaceChildren();
        try { await del(`/v1/members/${encodeURIComponent(m.user_id)}`); await load(); }
        catch (error) { status.append(errorBox(error)); }
      }}) : null;
    return h("tr", {dataset: {user: m.user_id}}, h("td", {text: m.email || m.user_id}), h("td", {text: m.name || ""}),
      h("td", {}, roleCell), h("td", {text: when(m.created_at)}), h("td", {}, remove));
  };
  await load();
}

export async function renderInvitations(main, ctx) {
  main.append(h("h1", {text: "Invitations"}));
  if (!ctx.can("admin")) {
    main.append(h("p", {class: "muted", text: "Only admins and owners invite people and see invitations."}));
    return;
  }
  const status = h("div", {role: "status"});
  const email = h("input", {name: "email", type: "email", required: true, autocomplete: "off"});
  const role = roleSelect("member", ctx, "role");
  const body = h("tbody");
  const shown = (r, verb) => {
    status.replaceChildren(h("p", {class: "ok", text: `${verb} ${r.email} as ${r.role}.`}));
    // With mail off the server hands the token over once: pass it on yourself.
    if (r.token) status.append(h("p", {}, "Mail is off on this server; give them this token: ", h("code", {text: r.token})));
  };
  const form = h("form", {class: "card row", id: "invite", onsubmit: async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      shown(await post("/v1/invitations", {email: email.value.trim(), role: role.value}), "Invited");
      email.value = "";
      await load();
    } catch (error) { status.append(errorBox(error)); }
  }}, field("Email", email), field("Role", role), h("button", {type: "submit", text: "Invite"}));
  main.append(form, status, h("table", {id: "invitations"}, h("thead", {}, h("tr", {},
    ["Email", "Role", "Sent", "Expires", "State", ""].map((t) => h("th", {text: t})))), body));
  const state = (i) => i.accepted_at ? "accepted" : i.revoked_at ? "revoked"
    : new Date(i.expires_at) < new Date() ? "expired" : "open";
  const act = (label, cls, run) => h("button", {type: "button", class: cls, text: label, onclick: async () => {
    status.replaceChildren();
    try { await run(); await load(); } catch (error) { status.append(errorBox(error)); }
  }});
  const load = async () => {
    const rows = await all("/v1/invitations");
    body.replaceChildren(...rows.map((i) => h("tr", {dataset: {invitation: i.id, state: state(i)}},
      h("td", {text: i.email}), h("td", {text: i.role}), h("td", {text: when(i.created_at)}),
      h("td", {text: when(i.expires_at)}), h("td", {}, h("span", {class: "badge", text: state(i)})),
      h("td", {}, state(i) === "accepted" || state(i) === "revoked" ? null : h("span", {class: "actions"},
        act("Resend", "", async () => shown(await post(`/v1/invitations/${i.id}/resend`), "Sent again to")),
        act("Revoke", "danger", () => del(`/v1/invitations/${i.id}`)))))));
    if (!rows.length) body.append(h("tr", {}, h("td", {colspan: 6, class: "muted", text: "No invitations yet."})));
  };
  await load();
}

"""Org secrets: envelope encryption, reading by name, and key rotation. The one home of secret
values (provider keys, skill credentials, data-source URLs, webhook secrets).

Each secret has its own random AES-256-GCM data key. The value is sealed with the data key; the
data key is sealed ("wrapped") with a key-encryption key (KEK) from settings, which has a
version. Both seals bind the org id and the secret's name as associated data, so a row copied to
another org or renamed does not open. Rotating the KEK rewraps data keys only: a value's
ciphertext never changes, and a reader sees either the old or the new wrap, both of which open
while both KEK versions are configured.

A value leaves this module only as the return value of `read_secret`/`resolve_refs`: errors name
the secret, never its content.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.settings import SecretsSettings
from core.store import audit
from core.store import secrets as store
from core.store.secrets import NAME_RE, SecretRow
from core.tenancy import AsyncPool, secret_rotation_scan_tx, tenant_tx

_NONCE = 12


class SecretRef(TypedDict):
    """How configuration refers to a secret instead of holding its value."""

    secret: str


class SecretError(Exception):
    """A secret could not be used; the message names it, never its value."""


class SecretNotFound(SecretError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no secret named {name!r} in this organisation (store it with PUT /v1/secrets/{name})")
        self.name = name


class SecretUnreadable(SecretError):
    """The stored envelope does not open: tampered with, copied from another org or name, or
    sealed under a key version that is no longer configured."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"the secret {name!r} cannot be decrypted: {reason}")
        self.name = name


@dataclass(frozen=True)
class Sealed:
    """One secret's envelope: `wrapped_key` and `ciphertext` are each a 12-byte nonce followed by
    the AES-GCM output (ciphertext and tag)."""

    key_version: int
    wrapped_key: bytes
    ciphertext: bytes


def _aad(org_id: str, name: str) -> bytes:
    # NUL cannot occur in org ids or secret names, so the parts cannot be shifted into each other.
    return b"agentos-secret\x00" + org_id.encode() + b"\x00" + name.encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


@dataclass(frozen=True)
class Keyring:
    """The configured KEKs by version, and the one new seals use."""

    keys: dict[int, bytes] = field(repr=False)
    active_version: int

    @classmethod
    def from_settings(cls, settings: SecretsSettings) -> Keyring:
        keys = {version: base64.b64decode(key.get_secret_value()) for version, key in settings.keys.items()}
        return cls(keys, settings.active_key_version)

    def _kek(self, name: str, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise SecretUnreadable(name, f"it is sealed under key version {version}, which is not configured "
                                         f"(AGENTOS_SECRETS__KEYS has {sorted(self.keys)})") from None

    def _wrap_aad(self, org_id: str, name: str, version: int) -> bytes:
        return _aad(org_id, name) + f"\x00kek-v{version}".encode()

    def seal(self, org_id: str, name: str, value: str) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        version = self.active_version
        return Sealed(
            version,
            _seal(self._kek(name, version), data_key, self._wrap_aad(org_id, name, version)),
            _seal(data_key, value.encode(), _aad(org_id, name)),
        )

    def _data_key(self, org_id: str, name: str, sealed: Sealed) -> bytes:
        kek = self._kek(name, sealed.key_version)
        try:
            return _open(kek, sealed.wrapped_key, self._wrap_aad(org_id, name, sealed.key_version))
        except (InvalidTag, ValueError):
            raise SecretUnreadable(name, "its data key does not unwrap (altered, or copied from another "
                                         "organisation or name)") from None

    def open(self, org_id: str, name: str, sealed: Sealed) -> str:
        data_key = self._data_key(org_id, name, sealed)
        try:
            return _open(data_key, sealed.ciphertext, _aad(org_id, name)).decode()
        except (InvalidTag, ValueError):
            raise SecretUnreadable(name, "its value does not decrypt (altered, or copied from another "
                                         "organisation or name)") from None

    def rewrap(self, org_id: str, name: str, sealed: Sealed) -> Sealed:
        """The same data key and ciphertext, the data key wrapped under the active version."""
        data_key = self._data_key(org_id, name, sealed)
        version = self.active_version
        wrapped = _seal(self._kek(name, version), data_key, self._wrap_aad(org_id, name, version))
        return Sealed(version, wrapped, sealed.ciphertext)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError("a secret name is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    return name


async def store_secret(
    conn: AsyncConnection[DictRow], keyring: Keyring, org_id: str, name: str, value: str, created_by: str | None
) -> tuple[SecretRow, bool]:
    """Seal `value` and store it under `name` in the org of `conn`'s transaction (a `tenant_tx`
    for `org_id`); (the row, whether it was created rather than replaced)."""
    sealed = keyring.seal(org_id, check_name(name), value)
    return await store.upsert(conn, name, sealed.key_version, sealed.wrapped_key, sealed.ciphertext, created_by)


async def read_secret_in(conn: AsyncConnection[DictRow], keyring: Keyring, org_id: str, name: str) -> str:
    """The value of the org's secret `name`, inside the caller's `tenant_tx` for `org_id`."""
    row = await store.get_sealed(conn, name)
    if row is None:
        raise SecretNotFound(name)
    return keyring.open(org_id, name, Sealed(row["key_version"], row["wrapped_key"], row["ciphertext"]))


async def read_secret(pool: AsyncPool, keyring: Keyring, org_id: str, name: str) -> str:
    """The value of the org's secret `name` (SecretNotFound, SecretUnreadable)."""
    async with tenant_tx(pool, org_id) as conn:
        return await read_secret_in(conn, keyring, org_id, name)


def is_secret_ref(value: object) -> TypeGuard[SecretRef]:
    """Whether `value` is exactly `{"secret": "<name>"}`."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("secret"), str)


async def resolve_refs(pool: AsyncPool, keyring: Keyring, org_id: str, value: Any) -> Any:
    """`value` with every `{"secret": name}` inside it (dicts and lists, at any depth) replaced by
    that secret's value; everything else as it was. One transaction for all of them."""
    names: set[str] = set()

    def collect(node: Any) -> None:
        if is_secret_ref(node):
            names.add(node["secret"])
        elif isinstance(node, dict):
            for item in node.values():
                collect(item)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(value)
    if not names:
        return value
    async with tenant_tx(pool, org_id) as conn:
        values = {name: await read_secret_in(conn, keyring, org_id, name) for name in sorted(names)}

    def substitute(node: Any) -> Any:
        if is_secret_ref(node):
            return values[node["secret"]]
        if isinstance(node, dict):
            return {key: substitute(item) for key, item in node.items()}
        if isinstance(node, list):
            return [substitute(item) for item in node]
        return node

    return substitute(value)


@dataclass
class RotationReport:
    rewrapped: int = 0
    # Rewritten or rewrapped by someone else between the scan and the rewrap: nothing left to do.
    skipped: int = 0
    # (org id, name, reason) of envelopes that did not open; they keep their old wrap.
    failed: list[tuple[str, str, str]] = field(default_factory=list)


async def count_stale(pool: AsyncPool, keyring: Keyring) -> int:
    """How many secrets, across orgs, are not wrapped under the active key version."""
    async with secret_rotation_scan_tx(pool) as conn:
        return await store.count_stale(conn, keyring.active_version)


async def rotate(
    pool: AsyncPool, keyring: Keyring, *, batch: int = 100,
    progress: Callable[[RotationReport], None] = lambda _: None,
) -> RotationReport:
    """Rewrap every data key not under the active KEK version, one secret per transaction.

    Resumable: an interrupted rotation leaves each secret either fully rewrapped or untouched,
    and running it again picks up what is left. Safe while secrets are read and written: a
    rewrap locks its row and applies only if the row still has the version it read."""
    report = RotationReport()
    after = ("", "")
    while True:
        async with secret_rotation_scan_tx(pool) as conn:
            refs = await store.scan_stale(conn, keyring.active_version, after, batch)
        if not refs:
            return report
        for ref in refs:
            org_id, name = ref["org_id"], ref["name"]
            after = (org_id, name)
            async with tenant_tx(pool, org_id) as conn:
                row = await store.get_sealed(conn, name, lock=True)
                if row is None or row["key_version"] == keyring.active_version:
                    report.skipped += 1
                    continue
                sealed = Sealed(row["key_version"], row["wrapped_key"], row["ciphertext"])
                try:
                    fresh = keyring.rewrap(org_id, name, sealed)
                except SecretUnreadable as exc:
                    report.failed.append((org_id, name, str(exc)))
                    continue
                if await store.rewrap(conn, name, sealed.key_version, fresh.key_version, fresh.wrapped_key):
                    report.rewrapped += 1
                    await audit.record(conn, "operator", "secret.rotate", "secret", name,
                                       {"from_key_version": sealed.key_version, "key_version": fresh.key_version})
                else:
                    report.skipped += 1
        progress(report)

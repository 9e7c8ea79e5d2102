"""Standard Webhooks signatures (https://www.standardwebhooks.com): the secret format and the
three headers, so a receiver can verify a delivery with any existing verifier library.

A secret is `whsec_` + base64 of 24 to 64 random bytes; the HMAC key is the decoded bytes. A
signature is `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")). While a rotated
secret is still in its grace period both secrets sign, and `webhook-signature` carries both
signatures separated by a space: a receiver holding either secret accepts the delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


def new_secret() -> str:
    """A fresh secret of 32 random bytes, in the `whsec_` format."""
    return PREFIX + base64.b64encode(os.urandom(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret; ValueError (never quoting it) if it is not one."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a webhook secret encodes {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 signature>` of one message under one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given (current first)."""
    if not secrets:
        raise ValueError("at least one secret signs a delivery")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets),
    }

"""Client-credential login and HS256 JWT access tokens, with the standard library only."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

TOKEN_LIFETIME = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authority:
    """Checks Basic credentials, issues JWTs with a numeric ``exp`` and verifies Bearer tokens."""

    def __init__(self, client_id: str, client_secret: str, signing_key: bytes) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.signing_key = signing_key

    def check_basic(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, secret = decoded.partition(":")
        return hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(
            secret, self.client_secret
        )

    def issue(self, lifetime: int = TOKEN_LIFETIME) -> str:
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"sub": self.client_id, "iat": now, "exp": now + lifetime, "scope": "urn:canvas:dap"}
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        signature = hmac.new(self.signing_key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)

    def check_bearer(self, header: str | None) -> bool:
        """True for a Bearer token this authority signed that has not expired."""
        if not header or not header.startswith("Bearer "):
            return False
        parts = header[7:].split(".")
        if len(parts) != 3:
            return False
        signing_input = (parts[0] + "." + parts[1]).encode()
        expected = hmac.new(self.signing_key, signing_input, hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return False
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            return False
        return isinstance(claims.get("exp"), int) and claims["exp"] > time.time()

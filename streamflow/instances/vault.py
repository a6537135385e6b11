"""Encryption of instance secrets at rest (on the ``sf.instances`` topic).

The key comes from ``STREAMFLOW_SECRET_KEY``: a Fernet key (``streamflow instance key``
prints a new one), or any passphrase, from which a key is derived with SHA-256. Fernet
(AES-128-CBC + HMAC-SHA256, from the well-kept ``cryptography`` package) authenticates
what it decrypts, so a tampered or wrong-key value is refused, never misread.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken

from streamflow import exactjson
from streamflow.errors import ConfigError

ENV_KEY = "STREAMFLOW_SECRET_KEY"
MARK = "$secret"  # an encrypted value is stored as {"$secret": "<fernet token>"}


def new_key() -> str:
    return Fernet.generate_key().decode()


class Vault:
    def __init__(self, key: str) -> None:
        raw = key.encode()
        try:
            self.fernet = Fernet(raw)
        except ValueError:  # a passphrase: derive a key from it
            self.fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))

    @classmethod
    def from_env(cls, *, required: bool) -> Vault | None:
        key = os.environ.get(ENV_KEY, "")
        if not key:
            if required:
                raise ConfigError(
                    f"instance secrets are encrypted with {ENV_KEY}; it is not set "
                    "(`streamflow instance key` prints a new one)"
                )
            return None
        return cls(key)

    def encrypt(self, value: object) -> dict[str, str]:

        return {MARK: self.fernet.encrypt(exactjson.dumps(value)).decode()}

    def decrypt(self, sealed: dict[str, str]) -> object:

        try:
            return exactjson.loads(self.fernet.decrypt(sealed[MARK].encode()))
        except (InvalidToken, KeyError) as exc:
            raise ConfigError(f"cannot decrypt an instance secret: wrong {ENV_KEY}?") from exc


def is_sealed(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {MARK}

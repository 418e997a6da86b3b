"""How a caller proves itself to the services: the bearer token and TLS files (``Credentials``),
the environment variables that carry them, and ``redact_url`` for logging URLs that carry a
password. A leaf: imports nothing of the client, so the services' mechanics (``services.common``)
can use it without the client or the Redis launcher.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

ENV_TOKEN = "LLAMAFLEET_TOKEN"
ENV_TLS_CA = "LLAMAFLEET_TLS_CA"
ENV_TLS_CERT = "LLAMAFLEET_TLS_CERT"
ENV_TLS_KEY = "LLAMAFLEET_TLS_KEY"


class CredentialsError(ValueError):
    """The TLS settings do not fit together or name a file that cannot be read."""


@dataclass(frozen=True)
class Credentials:
    """How a caller proves itself to the services, and checks that it reached them.

    ``token`` goes in every call as ``authorization: Bearer <token>`` (the services'
    ``auth_token``). ``tls_ca`` (a PEM file) turns TLS on and is the CA the services'
    certificates must chain to; ``tls_cert``/``tls_key`` are this caller's certificate and key,
    for services that require one (``tls_client_ca``, mutual TLS). TLS with a certificate but no
    CA trusts the system's roots. Paths, not contents: the files are read (and must be PEM) when
    channel credentials are made.
    """

    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CredentialsError(
                f"TLS client certificate: set both {ENV_TLS_CERT} and {ENV_TLS_KEY} (certificate "
                "and key), or neither"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **defaults: str) -> Credentials:
        """``LLAMAFLEET_TOKEN`` / ``LLAMAFLEET_TLS_{CA,CERT,KEY}`` over ``defaults`` (for example
        what ``llamafleet up`` recorded); an empty variable counts as unset."""
        environ = os.environ if environ is None else environ
        values = {
            "token": environ.get(ENV_TOKEN) or defaults.get("token", ""),
            "tls_ca": environ.get(ENV_TLS_CA) or defaults.get("tls_ca", ""),
        }
        if environ.get(ENV_TLS_CERT) or environ.get(ENV_TLS_KEY):  # the pair, or an error
            values["tls_cert"] = environ.get(ENV_TLS_CERT, "")
            values["tls_key"] = environ.get(ENV_TLS_KEY, "")
        else:
            values["tls_cert"] = defaults.get("tls_cert", "")
            values["tls_key"] = defaults.get("tls_key", "")
        return cls(**values)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a channel, or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            _read(self.tls_ca, ENV_TLS_CA) if self.tls_ca else None,
            _read(self.tls_key, ENV_TLS_KEY) if self.tls_key else None,
            _read(self.tls_cert, ENV_TLS_CERT) if self.tls_cert else None,
        )

    def channel(self, address: str, options=None) -> grpc.Channel:
        creds = self.channel_credentials()
        if creds is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, creds, options=options)


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the TLS file {path} ({setting}): {exc.strerror or exc}"
        ) from None
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"the TLS file {path} ({setting}) is not in PEM format")
    return data


def redact_url(url: str) -> str:
    """``url`` with its password (and ``ssl_password``, ``sentinel_password``) shown as ``***``:
    Redis URLs carry credentials, logs must not."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at and "password=" not in parts.query:
        return url
    if at:
        user, colon, _secret = userinfo.partition(":")
        parts = parts._replace(netloc=f"{user}:***@{hostport}" if colon else f"***@{hostport}")
    query = "&".join(
        f"{item.partition('=')[0]}=***" if item.partition("=")[0].endswith("password") else item
        for item in parts.query.split("&")
    )
    return urllib.parse.urlunsplit(parts._replace(query=query))

"""The module's configuration: the ``config:`` mapping under its entry in Synapse's
``modules:`` list, parsed and checked (errors name the key).

```yaml
modules:
  - module: mxpolicy_synapse.MxpolicyModule
    config:
      service_url: "http://127.0.0.1:8480"          # `mxpolicy serve`, on loopback
      api_secret_file: /etc/matrix/mxpolicy/api-secret
      admin_token_file: /etc/matrix/mxpolicy/admin-token   # an admin's access token
      admin_api_url: "http://127.0.0.1:8008"        # Synapse's own client listener
      outbox_interval_ms: 2000
      callbacks:                                     # each optional; defaults below
        on_send: {failure: closed, timeout_ms: 2000}
        on_media_upload: {failure: closed, timeout_ms: 5000}
        on_deactivate: {failure: closed, timeout_ms: 5000}
        on_reactivate: {failure: open, timeout_ms: 5000}
        on_media_fetch: {failure: closed, timeout_ms: 5000}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

Failure = Literal["open", "closed"]

#: The callbacks whose failure behaviour and timeout can be set, with their defaults.
#: Consent (on_send) and media fail closed: a service that is down must never let an
#: unconsented event in, nor an erased user's media out. A deactivation is vetoed while the
#: service cannot hear of it (closed); a reactivation is let through (open), the service
#: hears of it from the retry queue.
CALLBACK_DEFAULTS: dict[str, tuple[Failure, int]] = {
    "on_send": ("closed", 2000),
    "on_media_upload": ("closed", 5000),
    "on_deactivate": ("closed", 5000),
    "on_reactivate": ("open", 5000),
    "on_media_fetch": ("closed", 5000),
}

#: Where the module's web resource is mounted in Synapse (the consent pages below it, the
#: facts endpoint at ``<prefix>/facts``). `/_synapse/client/` is what Synapse's reverse-proxy
#: documentation already forwards.
DEFAULT_WEB_PREFIX = "/_synapse/client/mxpolicy"

MIN_SECRET_BYTES = 16


class ConfigError(ValueError):
    """A bad module config: the message names the key."""


@dataclass(frozen=True)
class CallbackConfig:
    failure: Failure
    timeout_ms: int

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000.0

    @property
    def fail_closed(self) -> bool:
        return self.failure == "closed"


@dataclass(frozen=True)
class Config:
    service_url: str
    api_secret: str
    admin_token_file: Path | None
    admin_api_url: str | None
    outbox_interval_ms: int = 2000
    outbox_batch: int = 100
    web_prefix: str = DEFAULT_WEB_PREFIX
    server_notices_user: str | None = None
    log_unanswered: bool = True
    callbacks: dict[str, CallbackConfig] = field(default_factory=dict)

    def callback(self, name: str) -> CallbackConfig:
        return self.callbacks[name]


KNOWN_KEYS = {
    "service_url", "api_secret_file", "admin_token_file", "admin_api_url",
    "outbox_interval_ms", "outbox_batch", "web_prefix", "server_notices_user",
    "log_unanswered", "callbacks",
}


def _http_url(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"`{key}`: must be a string (an http(s) URL)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"`{key}`: {value!r} is not an http(s) URL without query")
    return value.rstrip("/")


def _int(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"`{key}`: must be an integer within {low}..={high}, not {value!r}")
    return value


def read_secret(path: Path, key: str = "api_secret_file") -> str:
    """The secret in `path` (surrounding whitespace ignored), at least 16 bytes."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"`{key}`: cannot read {path}: {e}") from e
    secret = text.strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"`{key}`: {path} holds {len(secret.encode())} bytes; a secret has "
                          f"at least {MIN_SECRET_BYTES}")
    return secret


def parse_config(raw: Mapping[str, Any] | None) -> Config:
    """Check the module's config; `ConfigError` names the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("the module config must be a mapping")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` (known: {', '.join(sorted(KNOWN_KEYS))})")
    for required in ("service_url", "api_secret_file"):
        if required not in raw:
            raise ConfigError(f"`{required}` is required")
    service_url = _http_url("service_url", raw["service_url"])
    secret_file = raw["api_secret_file"]
    if not isinstance(secret_file, str):
        raise ConfigError("`api_secret_file`: must be a path")
    api_secret = read_secret(Path(secret_file))
    admin_token_file = raw.get("admin_token_file")
    if admin_token_file is not None and not isinstance(admin_token_file, str):
        raise ConfigError("`admin_token_file`: must be a path")
    admin_api_url = raw.get("admin_api_url")
    if admin_api_url is not None:
        admin_api_url = _http_url("admin_api_url", admin_api_url)
    web_prefix = raw.get("web_prefix", DEFAULT_WEB_PREFIX)
    if (not isinstance(web_prefix, str) or not web_prefix.startswith("/")
            or web_prefix.endswith("/") or "?" in web_prefix or "//" in web_prefix):
        raise ConfigError("`web_prefix`: a path like /_synapse/client/mxpolicy (no trailing /)")
    notices = raw.get("server_notices_user")
    if notices is not None and (not isinstance(notices, str) or not notices.startswith("@")
                                or ":" not in notices):
        raise ConfigError("`server_notices_user`: a full user id (@server:example.org)")
    log_unanswered = raw.get("log_unanswered", True)
    if not isinstance(log_unanswered, bool):
        raise ConfigError("`log_unanswered`: must be true or false")

    callbacks: dict[str, CallbackConfig] = {}
    raw_callbacks = raw.get("callbacks", {}) or {}
    if not isinstance(raw_callbacks, Mapping):
        raise ConfigError("`callbacks`: must be a mapping of callback name to settings")
    unknown = sorted(set(raw_callbacks) - set(CALLBACK_DEFAULTS))
    if unknown:
        raise ConfigError(f"`callbacks.{unknown[0]}`: unknown callback (known: "
                          f"{', '.join(CALLBACK_DEFAULTS)})")
    for name, (failure, timeout_ms) in CALLBACK_DEFAULTS.items():
        settings = raw_callbacks.get(name, {}) or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"`callbacks.{name}`: must be a mapping")
        extra = sorted(set(settings) - {"failure", "timeout_ms"})
        if extra:
            raise ConfigError(f"`callbacks.{name}.{extra[0]}`: unknown key (failure, timeout_ms)")
        chosen = settings.get("failure", failure)
        if chosen not in ("open", "closed"):
            raise ConfigError(f"`callbacks.{name}.failure`: \"open\" or \"closed\", not {chosen!r}")
        timeout = _int(f"callbacks.{name}.timeout_ms", settings.get("timeout_ms", timeout_ms),
                       1, 600_000)
        callbacks[name] = CallbackConfig("closed" if chosen == "closed" else "open", timeout)

    return Config(
        service_url=service_url,
        api_secret=api_secret,
        admin_token_file=Path(admin_token_file) if admin_token_file is not None else None,
        admin_api_url=admin_api_url,
        outbox_interval_ms=_int("outbox_interval_ms", raw.get("outbox_interval_ms", 2000),
                                100, 3_600_000),
        outbox_batch=_int("outbox_batch", raw.get("outbox_batch", 100), 1, 1000),
        web_prefix=web_prefix,
        server_notices_user=notices,
        log_unanswered=log_unanswered,
        callbacks=callbacks,
    )

"""The consent policy's links and page, over HTTP (no browser): what a test needs to let a
user accept the policy named by a refusal's ``consent_uri``."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx

from .matrix import MatrixError, short

log = logging.getLogger("mxpolicy_e2e.consent")

CONSENT_NOT_GIVEN = "M_CONSENT_NOT_GIVEN"


@dataclass(frozen=True)
class ConsentLink:
    """A ``consent_uri``: the page (scheme, host, path) and its ``u``, ``h``, ``v``."""

    uri: str
    page: str
    query: str
    user: str
    hmac: str
    version: str

    @classmethod
    def parse(cls, uri: str) -> ConsentLink:
        parts = urlsplit(uri)
        fields = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
        try:
            (user,), (hmac,), (version,) = fields["u"], fields["h"], fields["v"]
        except (KeyError, ValueError) as e:
            raise ValueError(f"not a consent link (u, h and v once each): {uri!r}") from e
        return cls(uri, f"{parts.scheme}://{parts.netloc}{parts.path}", parts.query,
                   user, hmac, version)


def consent_link_of(error: MatrixError) -> ConsentLink:
    """The link of an ``M_CONSENT_NOT_GIVEN`` refusal (ValueError for any other error)."""
    uri = error.body.get("consent_uri")
    if error.errcode != CONSENT_NOT_GIVEN or not isinstance(uri, str):
        raise ValueError(f"not a consent refusal: {error}")
    return ConsentLink.parse(uri)


def page_status_text(html: str) -> str:
    """The text of the page's ``role="status"`` paragraph ("" without one), tags removed."""
    match = re.search(r'role="status"[^>]*>(.*?)</p>', html, re.DOTALL)
    return " ".join(re.sub(r"<[^>]+>", "", match.group(1)).split()) if match else ""


def accept_over_http(link: ConsentLink, timeout: float = 30.0) -> str:
    """POST the page's form (``u``, ``h``, ``v``) as a browser would: the success page's
    status text. Raises `AssertionError` unless the answer is 200."""
    response = httpx.post(link.page, content=link.query.encode(), timeout=timeout,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    text = page_status_text(response.text)
    log.info("> POST %s %s", link.page, short(link.query, 200))
    log.info("< %d %s", response.status_code, text or short(response.text, 200))
    if response.status_code != 200:
        raise AssertionError(f"accepting {link.uri}: {response.status_code} {short(response.text)}")
    return text

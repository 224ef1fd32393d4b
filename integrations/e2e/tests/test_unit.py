"""Unit tests of the helpers: no homeserver, no browser, no network."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import struct
import tomllib
import zlib
from pathlib import Path

import httpx
import pytest

from mxpolicy_e2e import images
from mxpolicy_e2e.conduit import config_toml, media_file_path
from mxpolicy_e2e.consent import ConsentLink, consent_link_of, page_status_text
from mxpolicy_e2e.matrix import MatrixClient, MatrixError, mxc_parts, timeline_events
from mxpolicy_e2e.policy_set import PolicySet, PolicySetError
from mxpolicy_e2e.process import port_in_use

SAMPLE = Path(__file__).parent / "data" / "sample-set"
URI = ("http://127.0.0.1:6167/_mxpolicy/consent/?u=%40alice%3Alocalhost&h=ab12&v=2.0")


# --- the client ---------------------------------------------------------------------------


def test_matrix_error_keeps_status_errcode_and_body() -> None:
    body = {"errcode": "M_CONSENT_NOT_GIVEN", "error": "no", "consent_uri": URI}
    error = MatrixError("POST", "/x", 403, json.dumps(body))
    assert (error.status, error.errcode, error.body) == (403, "M_CONSENT_NOT_GIVEN", body)
    assert "403" in str(error) and "/x" in str(error)
    link = consent_link_of(error)
    assert (link.user, link.hmac, link.version) == ("@alice:localhost", "ab12", "2.0")
    assert link.page == "http://127.0.0.1:6167/_mxpolicy/consent/"


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '"a string"'])
def test_matrix_error_without_a_json_object(text: str) -> None:
    error = MatrixError("GET", "/y", 502, text)
    assert (error.status, error.errcode, error.body, error.text) == (502, None, {}, text)
    with pytest.raises(ValueError):
        consent_link_of(error)


def test_consent_link_needs_u_h_and_v() -> None:
    with pytest.raises(ValueError):
        ConsentLink.parse("http://x/_mxpolicy/consent/?u=%40a%3Ax&v=1")
    with pytest.raises(ValueError):
        ConsentLink.parse("http://x/_mxpolicy/consent/?u=a&u=b&h=1&v=1")


def test_mxc_parts() -> None:
    assert mxc_parts("mxc://localhost/abc") == ("localhost", "abc")
    for bad in ("http://localhost/abc", "mxc://localhost", "mxc://a/b/c"):
        with pytest.raises(ValueError):
            mxc_parts(bad)


def fake_server(handler_log: list[httpx.Request]) -> httpx.MockTransport:
    """Registration, a refused createRoom, and user-interactive deactivation."""

    def handle(request: httpx.Request) -> httpx.Response:
        handler_log.append(request)
        path = request.url.path
        if path == "/_matrix/client/v3/register":
            return httpx.Response(200, json={"access_token": "t0k", "user_id": "@alice:hs",
                                             "device_id": "D"})
        if path == "/_matrix/client/v3/createRoom":
            return httpx.Response(403, json={"errcode": "M_CONSENT_NOT_GIVEN", "error": "no",
                                             "consent_uri": URI})
        if path == "/_matrix/client/v3/account/deactivate":
            body = json.loads(request.content)
            if "auth" not in body:
                return httpx.Response(401, json={"flows": [{"stages": ["m.login.password"]}],
                                                 "session": "S1"})
            auth = body["auth"]
            ok = (auth["session"], auth["password"], auth["identifier"]["user"]) == (
                "S1", "pw", "alice") and body["erase"] is True
            return httpx.Response(200 if ok else 403, json={} if ok else {"errcode": "M_FORBIDDEN"})
        return httpx.Response(404, json={"errcode": "M_UNRECOGNIZED", "error": "?"})

    return httpx.MockTransport(handle)


def test_client_register_refusal_and_uia_deactivation(caplog: pytest.LogCaptureFixture) -> None:
    requests: list[httpx.Request] = []
    with caplog.at_level(logging.INFO, logger="mxpolicy_e2e.matrix"):
        with MatrixClient("http://hs", transport=fake_server(requests)) as client:
            client.register("alice", "pw")
            assert (client.user_id, client.token) == ("@alice:hs", "t0k")
            with pytest.raises(MatrixError) as refused:
                client.create_room(name="r")
            assert refused.value.status == 403
            assert consent_link_of(refused.value).version == "2.0"
            assert client.deactivate(erase=True) == {}
    assert requests[1].headers["authorization"] == "Bearer t0k"
    assert "authorization" not in requests[0].headers
    assert [r.url.path for r in requests].count("/_matrix/client/v3/account/deactivate") == 2
    transcript = caplog.text
    assert "> POST /_matrix/client/v3/createRoom" in transcript
    assert "< 403" in transcript and "M_CONSENT_NOT_GIVEN" in transcript


def test_deactivate_without_a_401_first_is_an_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={}))
    client = MatrixClient("http://hs", token="t", transport=transport)
    with pytest.raises(MatrixError):
        client.deactivate(erase=True, password="pw")


def test_timeline_events() -> None:
    sync = {"rooms": {"join": {"!r": {"timeline": {"events": [{"type": "a"}, "junk"]}}}}}
    assert timeline_events(sync, "!r") == [{"type": "a"}]
    assert timeline_events(sync, "!other") == []
    assert timeline_events({}, "!r") == []


def test_page_status_text() -> None:
    html = ('<main><p class="status" role="status">You (@a:x) accepted the '
            "<b>Policy</b>\n (version 1) on 2026-01-01 00:00 UTC.</p></main>")
    assert page_status_text(html) == ("You (@a:x) accepted the Policy (version 1) on "
                                      "2026-01-01 00:00 UTC.")
    assert page_status_text("<p>nothing</p>") == ""


# --- the policy set -------------------------------------------------------------------------


@pytest.fixture
def sample(tmp_path: Path) -> PolicySet:
    shutil.copytree(SAMPLE, tmp_path / "set")
    return PolicySet(tmp_path / "set")


def test_grace_period_goes_to_erasure_and_media_only(sample: PolicySet) -> None:
    sample.set_grace_period(45000)
    plugins = {p["instance"]: p for p in sample.load()["plugin"]}
    assert plugins["erasure"]["config"] == {"grace_period_ms": 45000}
    assert plugins["media"]["config"] == {"grace_period_ms": 45000}
    assert "config" not in plugins["consent"]
    assert plugins["spam"]["config"] == {"keywords": ["buy now", "free crypto"]}
    with pytest.raises(PolicySetError):
        sample.set_grace_period(1)  # a second config for the same entry


def test_deadline_for_every_plugin(sample: PolicySet) -> None:
    sample.set_deadline(250)
    assert [p["deadline_ms"] for p in sample.load()["plugin"]] == [250, 250, 250, 250]
    with pytest.raises(PolicySetError):
        sample.set_deadline(300)


def test_server_notice_and_version_swap(sample: PolicySet) -> None:
    with pytest.raises(PolicySetError):
        sample.set_server_notice("no placeholder")
    sample.set_server_notice('Accept "the policy": {consent_uri}')
    consent = sample.load_consent()
    assert consent["server_notice_content"] == {"msgtype": "m.text",
                                                "body": 'Accept "the policy": {consent_uri}'}
    assert sample.consent_version() == "1.0"
    sample.set_consent_version("2.0")
    after = sample.load_consent()
    assert after["version"] == "2.0"
    assert after["server_notice_content"] == consent["server_notice_content"]
    assert {k: v for k, v in after.items() if k != "version"} == {
        k: v for k, v in consent.items() if k != "version"}
    assert sorted(p.name for p in sample.directory.iterdir()) == ["consent.toml",
                                                                   "policy-set.toml"]


# --- Conduit's files ---------------------------------------------------------------------------


def test_conduit_media_path_is_deep_2_by_2() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    path = media_file_path(Path("/db/media"), digest)
    assert path == Path("/db/media") / digest[:2] / digest[2:4] / digest[4:]


def test_conduit_config() -> None:
    config = tomllib.loads(config_toml(database_path=Path('/tmp/a "b"/db'), port=6181,
                                       policy_set=Path("/tmp/set/policy-set.toml")))["global"]
    assert config["database_path"] == '/tmp/a "b"/db'
    assert config["port"] == 6181 and config["address"] == "127.0.0.1"
    assert config["allow_federation"] is False and config["trusted_servers"] == []
    assert config["log"] == "warn,conduit::service::mxpolicy=info"
    assert config["mxpolicy_policy_set"] == "/tmp/set/policy-set.toml"


# --- images ---------------------------------------------------------------------------------


def test_png_is_valid_and_seeded() -> None:
    data = images.png(3, 2, seed=5)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    assert struct.unpack(">II", data[16:24]) == (3, 2)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_len])
    assert len(raw) == 2 * (1 + 3 * 3)
    assert images.png(3, 2, seed=6) != data


def test_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_set_toml_key_replaces_or_adds_in_the_right_table(tmp_path: Path) -> None:
    from mxpolicy_e2e.policy_set import set_toml_key

    path = tmp_path / "set.toml"
    path.write_text('top = 1\n\n[service]\nlisten = "a"\n\n[[plugin]]\npath = "x"\n')
    set_toml_key(path, "service", "facts_url", '"http://h/facts"')
    set_toml_key(path, "service", "listen", '"b"')
    set_toml_key(path, None, "top", "2")
    import tomllib

    value = tomllib.loads(path.read_text())
    assert value["top"] == 2
    assert value["service"] == {"listen": "b", "facts_url": "http://h/facts"}
    assert value["plugin"] == [{"path": "x"}]

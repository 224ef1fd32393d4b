"""The Synapse module: Synapse's callbacks forwarded to `mxpolicy serve`, its actions carried
out, its pages and the timer facts served from Synapse's own listener.

| Synapse | mxpolicy |
|---|---|
| `check_event_allowed` (third-party rules), local senders only | on-send; a deny raises `SynapseError(status, message, errcode, additional_fields)` |
| `check_can_deactivate_user` | on-deactivate (`erase: false`: Synapse does not say yet) as a veto |
| `on_user_deactivation_status_changed` | on-deactivate with `erase: true` when Synapse marked the user erased; on-reactivate |
| `check_media_file_for_spam` (local uploads) | on-media-upload |
| (no fetch callback) | on an erasure, each of the user's media that on-media-fetch refuses is quarantined |
| `register_web_resource(<web_prefix>)` | `<web_prefix>/_mxpolicy/<instance>/...` proxied to the service; `<web_prefix>/facts` answers the service's timer questions |
| `looping_background_call` | the service's outbox: claim, carry out, acknowledge |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.web.server import Request

from synapse.api.errors import SynapseError
from synapse.events import EventBase
from synapse.module_api import DirectServeJsonResource, ModuleApi
from synapse.types import StateMap

from .actions import ActionError, AdminApi, ActionRunner, run_retrying
from .config import Config, parse_config
from .facts import FactsRequestError, FactsSource, check_facts_request
from .http import HttpClient
from .service import Service, ServiceError
from .wire import Action, Decision, Deny, joined_members, mxc_parts, send_context, user_kind

log = logging.getLogger("mxpolicy_synapse")

#: Largest request body proxied to a plugin page (the service's own default limit).
MAX_WEB_BODY = 64 * 1024
#: Request headers passed on to a plugin page.
PAGE_HEADERS = {b"content-type", b"accept", b"accept-language", b"user-agent"}
#: Response headers not passed back (hop by hop, or set by Synapse's server).
HOP_HEADERS = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date",
               b"server", b"upgrade", b"proxy-connection", b"te", b"trailer"}


def policy_error(deny: Deny) -> SynapseError:
    """The policy's refusal as the SynapseError Synapse turns into the client's answer: the
    status from the errcode, the body ``errcode``, ``error`` and every extra field."""
    fields = {k: v for k, v in deny.fields.items() if k not in ("errcode", "error")}
    return SynapseError(deny.status, deny.message, deny.errcode, additional_fields=fields)


def unavailable(what: str) -> SynapseError:
    """What a client gets when a fail-closed callback cannot reach the service."""
    return SynapseError(503, f"The homeserver's policy service is unavailable ({what}); "
                             "try again later", "M_UNKNOWN")


class MxpolicyModule:
    """Loaded by Synapse from ``modules:`` (``module: mxpolicy_synapse.MxpolicyModule``)."""

    @staticmethod
    def parse_config(config: Mapping[str, Any] | None) -> Config:
        return parse_config(config)

    def __init__(self, config: Config, api: ModuleApi) -> None:
        self.config = config
        self.api = api
        self.server_name = api.server_name
        self.http = HttpClient()
        self.service = Service(self.http, config.service_url, config.api_secret)
        self.facts = FactsSource(api.run_db_interaction)
        admin_url = config.admin_api_url or api.public_baseurl
        self.admin = AdminApi(self.http, admin_url, config.admin_token_file)
        self.runner = ActionRunner(api, self.admin, self.server_name,
                                   rooms_of_user=self._rooms_of_user,
                                   is_deactivated=self._is_deactivated)
        self.notices_user = config.server_notices_user or self._synapse_notices_user()
        # Rooms a user was joined to when the deactivation was asked (Synapse's user parter
        # may have parted them by the time the deactivation callback runs).
        self._rooms_at_deactivation: dict[str, list[str]] = {}
        # Erasures the service has not heard of yet (it was down): retried with the outbox.
        self._pending_deactivations: dict[str, bool] = {}
        # The actions of a deactivation's veto call, carried out once it happened.
        self._veto_actions: dict[str, list[Action]] = {}

        api.register_third_party_rules_callbacks(
            check_event_allowed=self.check_event_allowed,
            check_can_deactivate_user=self.check_can_deactivate_user,
            on_user_deactivation_status_changed=self.on_user_deactivation_status_changed,
        )
        api.register_spam_checker_callbacks(check_media_file_for_spam=self.check_media_file)
        api.register_web_resource(config.web_prefix, MxpolicyResource(self))
        api.looping_background_call(self.drain_outbox, config.outbox_interval_ms,
                                    desc="mxpolicy_outbox")
        log.info("mxpolicy: service %s, pages and facts at %s, admin API at %s, notices user "
                 "%s", config.service_url, config.web_prefix, admin_url, self.notices_user)

    def _synapse_notices_user(self) -> str | None:
        # Private: `hs.config.servernotices.server_notices_mxid` (Synapse 1.163.2); the module
        # config's `server_notices_user` avoids it.
        hs = getattr(self.api, "_hs", None)
        servernotices = getattr(getattr(hs, "config", None), "servernotices", None)
        mxid = getattr(servernotices, "server_notices_mxid", None)
        return mxid if isinstance(mxid, str) else None

    # --- calls to the service ------------------------------------------------------------

    async def _hook(self, callback: str, hook: str, context: Mapping[str, Any],
                    facts: Mapping[str, Any] | None = None, *,
                    run_actions: bool = True) -> Decision | None:
        """The service's decision, or None when it failed (the caller applies the failure
        policy). The decision's actions are carried out in the background."""
        settings = self.config.callback(callback)
        started = time.monotonic()
        try:
            decision = await self.service.hook(hook, context, facts, timeout_s=settings.timeout_s)
        except ServiceError as e:
            log.error("mxpolicy: %s failed after %.0f ms (failure %s): %s", hook,
                      (time.monotonic() - started) * 1000, settings.failure, e)
            return None
        if decision.unanswered and self.config.log_unanswered:
            log.warning("mxpolicy: %s: questions the request's facts did not answer: %s", hook,
                        decision.unanswered)
        if decision.actions and run_actions:
            self.run_actions(decision.actions)
        return decision

    def run_actions(self, actions: list[Action]) -> None:
        """Carry `actions` out in the background (never inside the request that caused them)."""
        self.api.run_as_background_process("mxpolicy_actions", self._carry_out, actions)

    async def _rooms_of_user(self, user_id: str) -> list[str]:
        return await self.facts.answer("rooms_of_user", user_id)

    async def _is_deactivated(self, user_id: str) -> bool:
        info = await self.api.get_userinfo_by_id(user_id)
        return bool(info is not None and info.is_deactivated)

    # --- on-send ---------------------------------------------------------------------------

    async def check_event_allowed(self, event: EventBase,
                                  state_events: StateMap[EventBase]
                                  ) -> tuple[bool, dict[str, Any] | None]:
        if not self.api.is_mine(event.sender):
            # Federated events: the sender's own server applied its policies.
            return True, None
        create = state_events.get(("m.room.create", ""))
        is_notices_room = (self.notices_user is not None and create is not None
                           and create.sender == self.notices_user)
        context = send_context(
            sender=event.sender,
            sender_kind=user_kind(event.sender, server_notices_user=self.notices_user),
            room_id=event.room_id,
            room_version=event.room_version.identifier,
            event_type=event.type,
            state_key=event.get_state_key(),
            content=event.content,
            origin_server_ts=int(event.origin_server_ts),
            is_server_notices_room=is_notices_room,
        )
        members = joined_members((e.type, e.state_key or "", e.content)
                                 for e in state_events.values() if e.type == "m.room.member")
        decision = await self._hook("on_send", "on-send", context,
                                    {"members_of_room": {event.room_id: members}})
        if decision is None:
            if self.config.callback("on_send").fail_closed:
                raise unavailable("send")
            return True, None
        if decision.deny is not None:
            raise policy_error(decision.deny)
        return True, None

    # --- deactivation ------------------------------------------------------------------

    async def check_can_deactivate_user(self, user_id: str, by_admin: bool) -> bool:
        if not self.api.is_mine(user_id):
            return True
        rooms = await self._rooms_of_user(user_id)
        self._rooms_at_deactivation[user_id] = rooms
        # Synapse does not tell a module whether erasure is asked before it deactivates:
        # the veto is asked as a plain deactivation; the erasure is told afterwards.
        decision = await self._hook(
            "on_deactivate", "on-deactivate",
            {"user": user_id, "erase": False, "by_admin": by_admin, "second_factor": False},
            {"rooms_of_user": {user_id: rooms}}, run_actions=False)
        if decision is None:
            return not self.config.callback("on_deactivate").fail_closed
        # Its actions (leave the rooms, ...) wait for the deactivation to happen: Synapse
        # may still refuse it. Unacknowledged, they come back from the outbox after the
        # service's lease in any case.
        self._veto_actions[user_id] = decision.actions
        if decision.deny is not None:
            log.info("mxpolicy: deactivation of %s vetoed: %s %s", user_id,
                     decision.deny.errcode, decision.deny.message)
            return False
        return True

    async def on_user_deactivation_status_changed(self, user_id: str, deactivated: bool,
                                                  by_admin: bool) -> None:
        if not self.api.is_mine(user_id):
            return
        if deactivated:
            actions = self._veto_actions.pop(user_id, [])
            if actions:
                self.run_actions(actions)
            # Private schema: Synapse's erased mark (table erased_users), written by
            # DeactivateAccountHandler before this callback (Synapse 1.163.2).
            erase = await self.facts.is_erased(user_id)
            if erase:
                await self._tell_erasure(user_id, by_admin)
            self._rooms_at_deactivation.pop(user_id, None)
        else:
            decision = await self._hook("on_reactivate", "on-reactivate",
                                        {"user": user_id, "by_admin": by_admin})
            if decision is None:
                log.error("mxpolicy: the service did not hear of %s's reactivation", user_id)
            else:
                await self._release_media(user_id)

    async def _tell_erasure(self, user_id: str, by_admin: bool) -> bool:
        rooms = sorted(set(self._rooms_at_deactivation.get(user_id, []))
                       | set(await self._rooms_of_user(user_id)))
        decision = await self._hook(
            "on_deactivate", "on-deactivate",
            {"user": user_id, "erase": True, "by_admin": by_admin, "second_factor": False},
            {"rooms_of_user": {user_id: rooms}})
        if decision is None:
            # Synapse has deactivated and erased already: the service must hear of it later.
            self._pending_deactivations[user_id] = by_admin
        elif decision.deny is not None:
            log.error("mxpolicy: the erasure of %s was refused after Synapse carried it out: "
                      "%s %s", user_id, decision.deny.errcode, decision.deny.message)
        else:
            self._pending_deactivations.pop(user_id, None)
        await self._quarantine_refused_media(user_id, service_ok=decision is not None)
        return decision is not None

    async def _quarantine_refused_media(self, user_id: str, *, service_ok: bool) -> None:
        """Quarantine each local media of the user that on-media-fetch refuses to an
        anonymous requester (so every fetch gets Synapse's 404); without an answer from the
        service, all of them when media fails closed."""
        try:
            media = await self.admin.user_media(user_id)
        except ActionError as e:
            log.error("mxpolicy: cannot list %s's media to quarantine it: %s", user_id, e)
            return
        closed = self.config.callback("on_media_fetch").fail_closed
        count = 0
        for item in media:
            media_id = str(item.get("media_id", ""))
            if not media_id or item.get("quarantined_by"):
                continue
            mxc = f"mxc://{self.server_name}/{media_id}"
            refused = closed
            if service_ok:
                decision = await self._hook("on_media_fetch", "on-media-fetch",
                                            {"mxc": mxc, "requester": "anonymous"})
                refused = closed if decision is None else not decision.allowed
            if refused:
                try:
                    await self.admin.quarantine(self.server_name, media_id)
                    count += 1
                except ActionError as e:
                    log.error("mxpolicy: cannot quarantine %s: %s", mxc, e)
        log.info("mxpolicy: %s: %d of %d media quarantined", user_id, count, len(media))

    async def _release_media(self, user_id: str) -> None:
        """After a reactivation: lift the quarantine this module put on media the service
        serves again."""
        try:
            media = await self.admin.user_media(user_id)
            me = await self.admin.whoami()
        except ActionError as e:
            log.error("mxpolicy: cannot list %s's media: %s", user_id, e)
            return
        for item in media:
            if item.get("quarantined_by") != me:
                continue
            mxc = f"mxc://{self.server_name}/{item.get('media_id')}"
            decision = await self._hook("on_media_fetch", "on-media-fetch",
                                        {"mxc": mxc, "requester": "anonymous"})
            if decision is not None and decision.allowed:
                try:
                    await self.admin.unquarantine(self.server_name, str(item.get("media_id")))
                except ActionError as e:
                    log.error("mxpolicy: cannot lift the quarantine of %s: %s", mxc, e)

    # --- media ---------------------------------------------------------------------------

    async def check_media_file(self, file_wrapper: Any, file_info: Any) -> Any:
        """on-media-upload for local uploads (not thumbnails, remote copies or URL
        previews). Synapse does not pass the uploader: it is the authenticated requester of
        the request being served (Synapse's logcontext, private: `current_context().request
        .requester`, Synapse 1.163.2)."""
        from synapse.module_api import NOT_SPAM

        if (getattr(file_info, "server_name", None) is not None
                or getattr(file_info, "thumbnail", None) is not None
                or getattr(file_info, "url_cache", False)):
            return NOT_SPAM
        uploader = current_requester()
        closed = self.config.callback("on_media_upload").fail_closed
        if uploader is None or not self.api.is_mine(uploader):
            log.warning("mxpolicy: an upload without a local requester (media %s)",
                        file_info.file_id)
            if closed:
                raise SynapseError(403, "The upload's owner is unknown", "M_FORBIDDEN")
            return NOT_SPAM
        size = await file_size(file_wrapper)
        decision = await self._hook("on_media_upload", "on-media-upload", {
            "mxc": f"mxc://{self.server_name}/{file_info.file_id}",
            "uploader": uploader,
            "size": size,
        })
        if decision is None:
            if closed:
                raise unavailable("upload")
            return NOT_SPAM
        if decision.deny is not None:
            # Raised, not returned: a returned code would reach the client as Synapse's
            # generic spam refusal; a SynapseError passes through as the policy's error.
            raise policy_error(decision.deny)
        return NOT_SPAM

    # --- actions ---------------------------------------------------------------------------

    async def _carry_out(self, actions: Iterable[Action]) -> None:
        done: list[int] = []
        for action in actions:
            try:
                what = await run_retrying(self.runner.run, action, self.api.sleep)
            except (ActionError, KeyError, ValueError) as e:
                log.warning("mxpolicy: action %s (outbox %s) failed, to be retried: %s",
                            action.kind, action.outbox_id, e)
                continue
            log.info("mxpolicy: action %s (outbox %s): %s", action.kind, action.outbox_id, what)
            if action.outbox_id is not None:
                done.append(action.outbox_id)
        try:
            await self.service.ack(done)
        except ServiceError as e:
            log.warning("mxpolicy: acknowledging %s failed (they will be handed out again): %s",
                        done, e)

    async def drain_outbox(self) -> None:
        """One pass: tell the service of erasures it missed, then claim what is due (timer
        actions, and actions not acknowledged within the service's lease), carry it out,
        acknowledge."""
        for user_id, by_admin in list(self._pending_deactivations.items()):
            await self._tell_erasure(user_id, by_admin)
        try:
            actions = await self.service.claim(self.config.outbox_batch)
        except ServiceError as e:
            log.debug("mxpolicy: outbox claim failed: %s", e)
            return
        if actions:
            log.info("mxpolicy: %d actions claimed from the outbox", len(actions))
            await self._carry_out(actions)

    # --- the timer facts endpoint ------------------------------------------------------------

    async def answer_facts(self, authorization: str | None, question: str | None,
                           subject: str | None) -> tuple[int, dict[str, Any]]:
        try:
            q, s = check_facts_request(authorization, self.config.api_secret, question, subject)
        except FactsRequestError as e:
            return e.status, e.body
        return 200, {"answer": await self.facts.answer(q, s)}


def current_requester() -> str | None:
    """The user id of the request Synapse is serving (its logcontext), if authenticated."""
    from synapse.logging.context import current_context

    context = current_context()
    request = getattr(context, "request", None)
    requester = getattr(request, "requester", None)
    return requester if isinstance(requester, str) else None


async def file_size(file_wrapper: Any) -> int:
    """The size of an uploaded file (Synapse's `ReadableFileWrapper` has its path)."""
    import os

    path = getattr(file_wrapper, "path", None)
    if isinstance(path, str):
        try:
            return os.stat(path).st_size
        except OSError:
            pass
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    await file_wrapper.write_chunks_to(count)
    return total


class MxpolicyResource(DirectServeJsonResource):
    """``<web_prefix>/facts`` (the service's timer questions) and
    ``<web_prefix>/_mxpolicy/<instance>/...`` (the plugins' pages, proxied; never the
    service's ``/_mxpolicy/v1/`` API)."""

    isLeaf = True

    def __init__(self, module: MxpolicyModule) -> None:
        super().__init__()
        self.module = module
        self.prefix = module.config.web_prefix.encode()

    async def _async_render(self, request: Request) -> tuple[int, Any] | None:
        postpath = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if postpath == ["facts"]:
            if request.method not in (b"GET", b"HEAD"):
                return 405, {"errcode": "M_UNRECOGNIZED", "error": "GET only"}
            auth = request.getHeader("authorization")
            args = request.args or {}
            question = first_arg(args, b"question")
            subject = first_arg(args, b"subject")
            return await self.module.answer_facts(auth, question, subject)
        if len(postpath) >= 2 and postpath[0] == "_mxpolicy" and postpath[1] \
                and postpath[1] != "v1":
            await self._proxy(request)
            return None
        return 404, {"errcode": "M_NOT_FOUND", "error": "no such page"}

    async def _proxy(self, request: Request) -> None:
        uri = request.uri or b""
        path_and_query = uri[len(self.prefix):] if uri.startswith(self.prefix) else uri
        body = request.content.read(MAX_WEB_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_WEB_BODY:
            raise SynapseError(413, "The body is too large", "M_TOO_LARGE")
        headers = [(k.lower(), v) for k, vs in request.requestHeaders.getAllRawHeaders()
                   for v in vs if k.lower() in PAGE_HEADERS]
        method = (request.method or b"GET").decode()
        try:
            answer = await self.module.service.web(method, path_and_query.decode(), headers, body)
        except ServiceError as e:
            log.error("mxpolicy: page %s: %s", path_and_query[:200], e)
            raise SynapseError(502, "The policy service is unavailable", "M_UNKNOWN") from e
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            if name.lower() not in HOP_HEADERS:
                request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"Content-Length", str(len(answer.body)).encode())  # type: ignore[no-untyped-call]
        if method != "HEAD":
            request.write(answer.body)  # type: ignore[no-untyped-call]
        from synapse.http.server import finish_request

        finish_request(request)


def first_arg(args: Mapping[bytes, list[bytes]], name: bytes) -> str | None:
    values = args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


__all__ = ["MxpolicyModule"]

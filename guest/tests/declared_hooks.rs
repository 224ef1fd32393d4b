//! `#[policy]` derives the hooks a policy declares from the hook methods its `impl Policy`
//! block implements: exactly those, in the order of `Hook`, whatever the block's order.

use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, DeclaredHooks, Hook, HttpRequest,
    HttpResponse, MediaFetchContext, MediaUploadContext, Outcome, Policy, ReactivateContext,
    SendContext, ServeContext, ServeOutcome, TimerContext, policy, serde_json,
};

/// Implements `on_timer` before `on_send`, and a helper that is no hook.
struct SendAndTimer;

impl SendAndTimer {
    fn on_nothing(&self) {}
}

#[policy]
impl Policy for SendAndTimer {
    const NAME: &'static str = "send-and-timer";
    const VERSION: &'static str = "1.0.0";
    type Config = serde_json::Value;

    fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self)
    }

    fn on_timer(&self, _ctx: &TimerContext) -> Vec<Action> {
        self.on_nothing();
        Vec::new()
    }

    fn on_send(&self, _ctx: &SendContext) -> Outcome {
        Outcome::allow()
    }
}

/// Implements no hook.
struct Nothing;

#[policy]
impl Policy for Nothing {
    const NAME: &'static str = "nothing";
    const VERSION: &'static str = "1.0.0";
    type Config = serde_json::Value;

    fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self)
    }
}

/// Implements only the unreadable-content half of `on-send`.
struct Unreadable;

#[policy]
impl Policy for Unreadable {
    const NAME: &'static str = "unreadable";
    const VERSION: &'static str = "1.0.0";
    type Config = serde_json::Value;

    fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self)
    }

    fn on_unreadable_content(
        &self,
        _ctx: &SendContext,
        _error: &mxpolicy_guest::ContentError,
    ) -> Outcome {
        Outcome::allow()
    }
}

/// Implements every hook method, in reverse order.
struct Everything;

#[policy]
impl Policy for Everything {
    const NAME: &'static str = "everything";
    const VERSION: &'static str = "1.0.0";
    type Config = serde_json::Value;

    fn new(_: serde_json::Value) -> Result<Self, ConfigError> {
        Ok(Self)
    }

    fn on_admin(&self, _req: &AdminRequest) -> Result<serde_json::Value, String> {
        Ok(serde_json::Value::Null)
    }

    fn on_timer(&self, _ctx: &TimerContext) -> Vec<Action> {
        Vec::new()
    }

    fn on_http(&self, _req: &HttpRequest) -> HttpResponse {
        HttpResponse::not_found()
    }

    fn on_media_fetch(&self, _ctx: &MediaFetchContext) -> Outcome {
        Outcome::allow()
    }

    fn on_media_upload(&self, _ctx: &MediaUploadContext) -> Outcome {
        Outcome::allow()
    }

    fn on_reactivate(&self, _ctx: &ReactivateContext) -> Outcome {
        Outcome::allow()
    }

    fn on_deactivate(&self, _ctx: &DeactivateContext) -> Outcome {
        Outcome::allow()
    }

    fn on_federation_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        ServeOutcome::serve_all(ctx)
    }

    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        ServeOutcome::serve_all(ctx)
    }

    fn on_unreadable_content(
        &self,
        _ctx: &SendContext,
        _error: &mxpolicy_guest::ContentError,
    ) -> Outcome {
        Outcome::allow()
    }

    fn on_send(&self, _ctx: &SendContext) -> Outcome {
        Outcome::allow()
    }
}

mxpolicy_guest::export_policy!(Everything);

/// The position of a hook in the WIT's `hook` enum. Exhaustive: a new hook fails to compile
/// here, so the test below (and the attribute's table) are updated with it.
fn position(hook: Hook) -> usize {
    match hook {
        Hook::OnSend => 0,
        Hook::OnClientServe => 1,
        Hook::OnFederationServe => 2,
        Hook::OnDeactivate => 3,
        Hook::OnReactivate => 4,
        Hook::OnMediaUpload => 5,
        Hook::OnMediaFetch => 6,
        Hook::OnHttp => 7,
        Hook::OnTimer => 8,
        Hook::OnAdmin => 9,
    }
}

#[test]
fn implemented_hooks_are_declared_in_the_enums_order() {
    assert_eq!(SendAndTimer::HOOKS, &[Hook::OnSend, Hook::OnTimer]);
}

#[test]
fn a_policy_implementing_no_hook_declares_none() {
    assert_eq!(Nothing::HOOKS, &[] as &[Hook]);
}

#[test]
fn unreadable_content_is_part_of_on_send() {
    assert_eq!(Unreadable::HOOKS, &[Hook::OnSend]);
}

#[test]
fn every_hook_method_declares_its_hook() {
    let all = [
        Hook::OnSend,
        Hook::OnClientServe,
        Hook::OnFederationServe,
        Hook::OnDeactivate,
        Hook::OnReactivate,
        Hook::OnMediaUpload,
        Hook::OnMediaFetch,
        Hook::OnHttp,
        Hook::OnTimer,
        Hook::OnAdmin,
    ];
    assert!(all.iter().enumerate().all(|(i, h)| position(*h) == i));
    // `on_send` and `on_unreadable_content` give one `OnSend`.
    assert_eq!(Everything::HOOKS, &all);
}

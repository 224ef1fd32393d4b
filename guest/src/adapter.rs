//! Bridges a [`Policy`] to the raw WIT `Guest` trait: converts types, keeps the configured
//! policy for the instance, and reports panics through the log before the trap.

use std::{any::Any, cell::RefCell, marker::PhantomData};

use crate::{
    DeclaredHooks, Policy,
    types::ConfigError,
    wit::{self, mxpolicy::policy::types as t},
};

/// The type [`export_policy!`](crate::export_policy) exports. Not for direct use.
pub struct Adapter<P>(PhantomData<P>);

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_policy<P: Policy, R>(f: impl FnOnce(&P) -> R) -> R {
    INSTANCE.with(|cell| {
        let guard = cell.borrow();
        let policy = guard
            .as_ref()
            .and_then(|b| b.downcast_ref::<P>())
            .expect("mxpolicy: hook called before init (host bug)");
        f(policy)
    })
}

/// Parse the configuration; on error, name the key by its path (`serde_path_to_error`), so a
/// type error deep in the document names its key. A missing field is reported by serde at
/// the object that lacks it, with the field only in the message (serde's error has no
/// structured form for it), so that one message shape is read to append the field.
fn parse_config<P: Policy>(json: &str) -> Result<P::Config, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize::<_, P::Config>(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let mut key = if path == "." { String::new() } else { path };
        if let Some(field) = missing_field(&message) {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(field);
        }
        ConfigError::new(key, message)
    })
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

impl<P: Policy + DeclaredHooks> wit::Guest for Adapter<P> {
    fn describe() -> t::PluginInfo {
        t::PluginInfo {
            name: P::NAME.to_owned(),
            version: P::VERSION.to_owned(),
            hooks: <P as DeclaredHooks>::HOOKS.to_vec(),
        }
    }

    fn init(config_json: String) -> Result<(), t::ConfigError> {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("panic: {info}"));
        }));
        let policy = P::new(parse_config::<P>(&config_json)?)?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }

    fn on_send(ctx: t::SendContext) -> t::Outcome {
        let (ctx, content_error) = crate::types::send_context(ctx);
        with_policy::<P, _>(|p| match &content_error {
            None => p.on_send(&ctx).into(),
            Some(error) => p.on_unreadable_content(&ctx, error).into(),
        })
    }

    fn on_client_serve(ctx: t::ServeContext) -> t::ServeOutcome {
        with_policy::<P, _>(|p| p.on_client_serve(&ctx.into()).into())
    }

    fn on_federation_serve(ctx: t::ServeContext) -> t::ServeOutcome {
        with_policy::<P, _>(|p| p.on_federation_serve(&ctx.into()).into())
    }

    fn on_deactivate(ctx: t::DeactivateContext) -> t::Outcome {
        with_policy::<P, _>(|p| p.on_deactivate(&ctx.into()).into())
    }

    fn on_reactivate(ctx: t::ReactivateContext) -> t::Outcome {
        with_policy::<P, _>(|p| p.on_reactivate(&ctx.into()).into())
    }

    fn on_media_upload(ctx: t::MediaUploadContext) -> t::Outcome {
        with_policy::<P, _>(|p| p.on_media_upload(&ctx.into()).into())
    }

    fn on_media_fetch(ctx: t::MediaFetchContext) -> t::Outcome {
        with_policy::<P, _>(|p| p.on_media_fetch(&ctx.into()).into())
    }

    fn on_http(req: t::HttpRequest) -> t::HttpResponse {
        with_policy::<P, _>(|p| p.on_http(&req.into()).into())
    }

    fn on_timer(ctx: t::TimerContext) -> Vec<t::Action> {
        with_policy::<P, _>(|p| crate::types::actions_to_wit(p.on_timer(&ctx.into())))
    }

    fn on_admin(req: t::AdminRequest) -> Result<String, String> {
        let req = crate::types::AdminRequest::try_from(req)?;
        with_policy::<P, _>(|p| p.on_admin(&req).map(|v| v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        limit: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Config {
        words: Vec<String>,
        inner: Inner,
    }

    struct P;

    impl Policy for P {
        const NAME: &'static str = "p";
        const VERSION: &'static str = "1";
        type Config = Config;
        fn new(_: Config) -> Result<Self, ConfigError> {
            Ok(P)
        }
    }

    fn key(json: &str) -> String {
        parse_config::<P>(json).unwrap_err().key
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(key(r#"{"words": 5, "inner": {"limit": 1}}"#), "words");
        assert_eq!(
            key(r#"{"words": ["a", 5], "inner": {"limit": 1}}"#),
            "words[1]"
        );
        assert_eq!(
            key(r#"{"words": [], "inner": {"limit": "x"}}"#),
            "inner.limit"
        );
        assert_eq!(key(r#"{"inner": {"limit": 1}}"#), "words");
        assert_eq!(key(r#"{"words": [], "inner": {}}"#), "inner.limit");
    }
}

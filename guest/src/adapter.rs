//! Bridges a [`Policy`] to the raw WIT `Guest` trait: converts types, keeps the configured
//! policy for the instance, and reports panics through the log before the trap.

use std::{any::Any, cell::RefCell, marker::PhantomData};

use crate::{
    Policy,
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

/// Parse the configuration; on error, name the key serde reports (`missing field `x``).
fn parse_config<P: Policy>(json: &str) -> Result<P::Config, ConfigError> {
    serde_json::from_str::<P::Config>(json).map_err(|e| {
        let msg = e.to_string();
        let key = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or_default()
            .to_owned();
        ConfigError::new(key, msg)
    })
}

impl<P: Policy> wit::Guest for Adapter<P> {
    fn describe() -> t::PluginInfo {
        t::PluginInfo {
            name: P::NAME.to_owned(),
            version: P::VERSION.to_owned(),
            hooks: P::HOOKS.to_vec(),
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

//! The `#[policy]` attribute of the mxpolicy guest SDK. Use it as `mxpolicy_guest::policy`;
//! the SDK's crate documentation explains the design ("Hooks are declared once").

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::{ImplItem, ItemImpl, spanned::Spanned};

/// Every hook method of `mxpolicy_guest::Policy` and the `Hook` variant the host calls it
/// through, in the order of the `Hook` enum (the WIT's order), which is the order of the
/// derived list. `on_unreadable_content` is part of `OnSend`: the SDK calls it instead of
/// `on_send` for content it cannot parse, so it only ever runs if the host calls `on-send`.
///
/// Keep in step with the `Policy` trait and the WIT `hook` enum; the guest crate's test
/// `every_hook_method_declares_its_hook` fails when a variant is missing here.
const HOOK_METHODS: &[(&str, &str)] = &[
    ("on_send", "OnSend"),
    ("on_unreadable_content", "OnSend"),
    ("on_client_serve", "OnClientServe"),
    ("on_federation_serve", "OnFederationServe"),
    ("on_deactivate", "OnDeactivate"),
    ("on_reactivate", "OnReactivate"),
    ("on_media_upload", "OnMediaUpload"),
    ("on_media_fetch", "OnMediaFetch"),
    ("on_http", "OnHttp"),
    ("on_timer", "OnTimer"),
    ("on_admin", "OnAdmin"),
];

/// Derive a policy's hooks from the methods its `impl Policy for X` block implements.
///
/// Put it on the block: `#[mxpolicy_guest::policy] impl Policy for X { ... }`. The block is
/// emitted unchanged, together with a hidden `impl mxpolicy_guest::DeclaredHooks for X` that
/// lists, in the `Hook` enum's order, the hook of every hook method the block defines
/// (`on_send` and `on_unreadable_content` give `Hook::OnSend`, `on_timer` gives
/// `Hook::OnTimer`, ...). Other items (`NAME`, `Config`, `new`) are ignored. The host calls
/// exactly those hooks, so a hook cannot be implemented and forgotten, or declared and left
/// at its default.
///
/// Errors, each at the offending tokens: arguments to the attribute; an item that is not an
/// `impl Policy for X` block; a `const HOOKS` in the block (hooks are derived, not listed); a
/// macro call among the block's items (its methods would be invisible to the attribute).
#[proc_macro_attribute]
pub fn policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let attr_error = (!attr.is_empty()).then(|| {
        syn::Error::new_spanned(&attr, "`#[policy]` takes no arguments").to_compile_error()
    });
    let item = proc_macro2::TokenStream::from(item);
    let block: ItemImpl = match syn::parse2(item.clone()) {
        Ok(block) => block,
        Err(e) => {
            let error = syn::Error::new(
                e.span(),
                "`#[policy]` goes on an `impl Policy for YourPolicy { ... }` block",
            )
            .to_compile_error();
            return quote!(#item #error #attr_error).into();
        }
    };
    let expanded = expand(block);
    quote!(#expanded #attr_error).into()
}

/// The block (without any `const HOOKS`), its `DeclaredHooks` impl, and any errors. The
/// output stays whole when there are errors, so each is reported once, at its tokens, and not
/// again as a missing `DeclaredHooks` or an unknown trait item.
fn expand(mut block: ItemImpl) -> proc_macro2::TokenStream {
    let mut errors: Option<syn::Error> = None;
    let mut push = |error: syn::Error| match &mut errors {
        Some(all) => all.combine(error),
        None => errors = Some(error),
    };
    let is_policy = match &block.trait_ {
        None => false,
        Some((_, path, _)) => path.segments.last().is_some_and(|s| s.ident == "Policy"),
    };
    match &block.trait_ {
        None => push(syn::Error::new(
            block.self_ty.span(),
            "`#[policy]` goes on an `impl Policy for YourPolicy { ... }` block, not an \
             inherent impl",
        )),
        Some((_, path, _)) if !is_policy => push(syn::Error::new_spanned(
            path,
            "`#[policy]` goes on the `impl Policy for YourPolicy` block",
        )),
        Some(_) => {}
    }

    let mut implemented = Vec::new();
    block.items.retain(|item| match item {
        ImplItem::Const(c) if c.ident == "HOOKS" => {
            push(syn::Error::new_spanned(
                c,
                "a policy's hooks are derived from the hook methods this block implements: \
                 remove `const HOOKS`",
            ));
            false
        }
        ImplItem::Fn(f) => {
            implemented.push(f.sig.ident.to_string());
            true
        }
        ImplItem::Macro(m) => {
            push(syn::Error::new_spanned(
                m,
                "`#[policy]` derives the hooks from the methods written in this block and \
                 cannot see methods a macro generates: write them out",
            ));
            true
        }
        _ => true,
    });
    let errors = errors.map(|e| e.to_compile_error());
    if !is_policy {
        // No `DeclaredHooks` impl for another trait's or an inherent block: it would only
        // add a second error.
        return quote!(#block #errors);
    }

    let mut hooks: Vec<&str> = Vec::new();
    for (method, hook) in HOOK_METHODS {
        if implemented.iter().any(|m| m == method) && !hooks.contains(hook) {
            hooks.push(hook);
        }
    }
    let hooks = hooks
        .iter()
        .map(|hook| format_ident!("{}", hook, span = Span::call_site()));
    let self_ty = &block.self_ty;
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    quote! {
        #block

        #[doc(hidden)]
        #[automatically_derived]
        impl #impl_generics ::mxpolicy_guest::DeclaredHooks for #self_ty #where_clause {
            const HOOKS: &'static [::mxpolicy_guest::Hook] = &[
                #(::mxpolicy_guest::Hook::#hooks),*
            ];
        }

        #errors
    }
}

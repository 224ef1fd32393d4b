//! Newtypes for Matrix identifiers, so a room id is never passed where a user id belongs.
//!
//! They hold the id's text as the homeserver sent it: the host validates ids before they reach
//! a plugin and validates every id a plugin returns, so the SDK does not parse the ids it hands
//! to hooks again.
//!
//! Text from elsewhere (configuration, admin arguments, event content) is checked with
//! [`UserId::parse`], [`MxcUri::is_valid`] and the like. They apply the Matrix grammar as
//! ruma implements it, with the validation crate behind `ruma::UserId::parse`
//! (`ruma-identifiers-validation`, the version the host's `ruma` uses), so a plugin and its
//! host agree on what an id is. Policies use these instead of checks of their own.
//!
//! The SDK depends on that small crate (no other dependencies than `js_int` and `thiserror`;
//! it builds for `wasm32-unknown-unknown`) rather than on `ruma-common`: the typed ids of
//! `ruma-common` would bring its serde, URL and time machinery into every plugin, and would tie
//! the SDK's public types to ruma's semver. The ids stay plain text newtypes; only the rules
//! come from ruma.

use std::{error::Error, fmt};

use ruma_identifiers_validation as ruma_ids;
use serde::{Deserialize, Serialize};

/// Why a text is not a valid Matrix identifier, from [`UserId::parse`] and the like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    kind: &'static str,
    reason: String,
}

impl InvalidId {
    /// The kind of id that was expected: `user id`, `room id`, `event id`, `server name` or
    /// `mxc URI`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Why the text is not one, as ruma words it (`leading sigil is incorrect or missing`).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid {}: {}", self.kind, self.reason)
    }
}

impl Error for InvalidId {}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $validate:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wrap an id's text, unchecked: for text the host already validated (use
            /// [`parse`](Self::parse) for anything else).
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// Check `id` with ruma's rules and wrap it.
            ///
            /// # Errors
            ///
            /// `InvalidId` when `id` is not a valid
            #[doc = concat!($kind, ".")]
            pub fn parse(id: impl Into<String>) -> Result<Self, InvalidId> {
                let id = id.into();
                let check: fn(&str) -> Result<(), String> = $validate;
                match check(&id) {
                    Ok(()) => Ok(Self(id)),
                    Err(reason) => Err(InvalidId { kind: $kind, reason }),
                }
            }

            /// Whether `id` is a valid
            #[doc = concat!($kind, ",")]
            /// by ruma's rules (see [`parse`](Self::parse)).
            pub fn is_valid(id: &str) -> bool {
                let check: fn(&str) -> Result<(), String> = $validate;
                check(id).is_ok()
            }

            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// ruma's reason, as text (the SDK's error type does not expose ruma's).
fn reason(e: impl fmt::Display) -> String {
    e.to_string()
}

id_type!(
    /// A user id: `@localpart:server.name`. Valid as the host's `ruma::UserId::parse` has
    /// it: the sigil, a localpart without `:` or NUL (lenient, as for historical ids over
    /// federation: it may even be empty), a valid server name, at most 255 bytes in all.
    UserId,
    "user id",
    |s| ruma_ids::user_id::validate(s).map_err(reason)
);
id_type!(
    /// A room id: `!opaque:server.name`, or `!opaque` in room version 12. Valid: the sigil,
    /// no NUL, at most 255 bytes.
    RoomId,
    "room id",
    |s| ruma_ids::room_id::validate(s).map_err(reason)
);
id_type!(
    /// An event id: `$opaque` (room version 3 and later) or `$opaque:server.name`.
    EventId,
    "event id",
    |s| ruma_ids::event_id::validate(s).map_err(reason)
);
id_type!(
    /// A server name: `server.name`, an IPv4 address or a bracketed IPv6 address, with an
    /// optional `:port`.
    ServerName,
    "server name",
    |s| ruma_ids::server_name::validate(s).map_err(reason)
);
id_type!(
    /// A media URI: `mxc://server.name/media-id`, the media id made of `A-Z`, `a-z`, `0-9`,
    /// `_` and `-`. Stricter than ruma's check in one point, as the specification's grammar
    /// is: the media id is not empty (ruma accepts `mxc://server.name/`).
    MxcUri,
    "mxc URI",
    |s| {
        ruma_ids::mxc_uri::validate(s).map_err(reason)?;
        if s.ends_with('/') {
            return Err("the media id is empty".to_owned());
        }
        Ok(())
    }
);

impl UserId {
    /// The part before the first `:`, without the sigil.
    pub fn localpart(&self) -> &str {
        let s = self.0.strip_prefix('@').unwrap_or(&self.0);
        s.split_once(':').map_or(s, |(l, _)| l)
    }

    /// The part after the first `:`.
    pub fn server_name(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, s)| s)
    }
}

impl MxcUri {
    /// The server part of `mxc://server/id`.
    pub fn server_name(&self) -> &str {
        self.0
            .strip_prefix("mxc://")
            .and_then(|r| r.split_once('/'))
            .map_or("", |(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parts() {
        let u = UserId::from("@alice:hs.example:8448");
        assert_eq!(u.localpart(), "alice");
        assert_eq!(u.server_name(), "hs.example:8448");
        assert_eq!(
            MxcUri::from("mxc://hs.example/abc").server_name(),
            "hs.example"
        );
    }

    #[test]
    fn user_ids_are_checked_with_rumas_rules() {
        for valid in [
            "@alice:hs.example",
            "@alice:hs.example:8448",
            "@Alice.Historical!:hs.example",
            "@:hs.example",
            "@a:[::1]:8448",
            "@a:127.0.0.1",
        ] {
            assert!(UserId::is_valid(valid), "{valid}");
            assert_eq!(
                UserId::parse(valid).map(UserId::into_string),
                Ok(valid.into())
            );
        }
        for invalid in [
            "alice:hs.example",
            "@alice",
            "@alice:",
            "@alice:hs example",
            "@alice:hs.example:port",
            "@alice:[not-ipv6]",
            "!room:hs.example",
        ] {
            assert!(!UserId::is_valid(invalid), "{invalid}");
        }
        let long = format!("@{}:hs.example", "a".repeat(250));
        assert!(!UserId::is_valid(&long));
        let err = UserId::parse("alice").expect_err("no sigil");
        assert_eq!(err.kind(), "user id");
        assert_eq!(
            err.to_string(),
            "not a valid user id: leading sigil is incorrect or missing"
        );
    }

    #[test]
    fn other_ids_are_checked() {
        assert!(RoomId::is_valid("!opaque:hs.example"));
        assert!(RoomId::is_valid("!opaque"));
        assert!(!RoomId::is_valid("#alias:hs.example"));
        assert!(EventId::is_valid("$opaque"));
        assert!(EventId::is_valid("$opaque:hs.example"));
        assert!(!EventId::is_valid("$opaque:bad server"));
        assert!(!EventId::is_valid("opaque"));
        assert!(ServerName::is_valid("hs.example:8448"));
        assert!(ServerName::is_valid("[2001:db8::1]"));
        assert!(!ServerName::is_valid(""));
        assert!(!ServerName::is_valid("hs_example"));
        assert_eq!(
            ServerName::parse("a/b").expect_err("slash").kind(),
            "server name"
        );
    }

    #[test]
    fn mxc_uris_are_checked() {
        for valid in [
            "mxc://hs.example/abcDEF123_-",
            "mxc://remote.example:8448/x",
            "mxc://[::1]/x",
        ] {
            assert!(MxcUri::is_valid(valid), "{valid}");
        }
        for invalid in [
            "mxc://hs.example/",
            "mxc://hs.example",
            "mxc:///abc",
            "mxc://hs.example/a.png",
            "mxc://hs.example/a/b",
            "https://hs.example/abc",
            "mxc://hs_example/abc",
        ] {
            assert!(!MxcUri::is_valid(invalid), "{invalid}");
        }
        assert_eq!(
            MxcUri::parse("mxc://hs.example/")
                .expect_err("empty media id")
                .to_string(),
            "not a valid mxc URI: the media id is empty"
        );
    }
}

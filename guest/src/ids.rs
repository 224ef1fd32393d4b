//! Newtypes for Matrix identifiers, so a room id is never passed where a user id belongs.
//!
//! They hold the id's text as the homeserver sent it: the host validates ids before they reach
//! a plugin and validates every id a plugin returns, so the SDK does not parse them again.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wrap an id's text.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
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

id_type!(
    /// A user id: `@localpart:server.name`.
    UserId
);
id_type!(
    /// A room id: `!opaque:server.name`.
    RoomId
);
id_type!(
    /// An event id: `$opaque`.
    EventId
);
id_type!(
    /// A server name: `server.name`.
    ServerName
);
id_type!(
    /// A media URI: `mxc://server.name/media-id`.
    MxcUri
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
}

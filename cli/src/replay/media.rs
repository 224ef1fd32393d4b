//! Media ops: `upload`, and the checks `fetch_media` shares with it.

use mxpolicy_host::{
    MediaUpload, Requester,
    ruma::{OwnedMxcUri, OwnedServerName, UserId},
};
use serde_json::{Map, Value};

use super::runner::{Runner, homeserver_deny};

impl Runner {
    pub(super) fn upload(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        user: &UserId,
        mxc: &OwnedMxcUri,
        size: u64,
        content_type: &Option<String>,
    ) -> Result<(), String> {
        let u = self.local_user(user)?;
        self.check_mxc(mxc, true)?;
        if self.world.read().media.contains_key(mxc.as_str()) {
            return Err(format!("{mxc} was already uploaded"));
        }
        if u.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{user} is deactivated"));
            return Ok(());
        }
        let d = self.host.on_media_upload(&MediaUpload {
            mxc: mxc.clone(),
            uploader: user.to_owned(),
            size,
            content_type: content_type.clone(),
        });
        if d.outcome.is_allow() {
            self.world.write().media.insert(
                mxc.to_string(),
                crate::sim::Media {
                    uploader: user.to_owned(),
                    size,
                    content_type: content_type.clone(),
                },
            );
        }
        self.verdict(r, &d, i);
        Ok(())
    }

    pub(super) fn check_mxc(&self, mxc: &OwnedMxcUri, upload: bool) -> Result<(), String> {
        let (server, _) = mxc
            .parts()
            .map_err(|e| format!("{mxc} is not a valid mxc:// URI: {e}"))?;
        if upload && server != self.world.name() {
            return Err(format!(
                "{mxc}: media is uploaded to this server, so its URI starts with mxc://{}/",
                self.world.name()
            ));
        }
        Ok(())
    }

    pub(super) fn requester(&self, requester: Option<&str>) -> Result<Requester, String> {
        match requester {
            None => Ok(Requester::Anonymous),
            Some(s) if s.starts_with('@') => {
                let user = UserId::parse(s).map_err(|e| format!("requester {s:?}: {e}"))?;
                self.world.known_user(&user)?;
                Ok(Requester::User(user))
            }
            Some(s) => match s.strip_prefix("server:") {
                Some(name) => OwnedServerName::try_from(name)
                    .map(Requester::Server)
                    .map_err(|e| format!("requester {s:?}: {e}")),
                None => Err(format!(
                    "requester {s:?} must be \"@user:server\", \"server:<name>\" or null"
                )),
            },
        }
    }
}

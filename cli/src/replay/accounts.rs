//! Account ops: `deactivate` and `reactivate`.

use mxpolicy_host::{Deactivation, Reactivation};
use serde_json::{Map, Value};

use super::runner::Runner;
use crate::scenario::Op;

impl Runner {
    /// `deactivate` and `reactivate`: the hook, then the account's marks when allowed.
    pub(super) fn account(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        op: &Op,
    ) -> Result<(), String> {
        let (user, d, deactivated, erased) = match op {
            Op::Deactivate {
                user,
                erase,
                by_admin,
                second_factor,
            } => {
                self.local_user(user)?;
                let d = self.host.on_deactivate(&Deactivation {
                    user: user.clone(),
                    erase: *erase,
                    by_admin: *by_admin,
                    second_factor: *second_factor,
                });
                (user, d, true, *erase)
            }
            Op::Reactivate { user, by_admin } => {
                self.local_user(user)?;
                let d = self.host.on_reactivate(&Reactivation {
                    user: user.clone(),
                    by_admin: *by_admin,
                });
                (user, d, false, false)
            }
            _ => return Ok(()),
        };
        if d.outcome.is_allow()
            && let Some(u) = self.world.write().users.get_mut(user)
        {
            u.deactivated = deactivated;
            u.erased = erased;
        }
        self.verdict(r, &d, i);
        Ok(())
    }
}

//! `[admin]`: the operator's web UI at `/admin`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest admin secret accepted: it guards publishing and disconnecting.
const MIN_SECRET: usize = 16;

/// `[admin]`: off unless `secret` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The password of the admin UI; none: no `/admin`.
    pub secret: Option<String>,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            secret: None,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl AdminConfig {
    /// What is wrong with this section.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        if self.secret.as_ref().is_some_and(|s| s.len() < MIN_SECRET) {
            bad.push(format!(
                "`admin.secret`: needs at least {MIN_SECRET} characters"
            ));
        }
        if self.session_ttl < Duration::from_secs(1) {
            bad.push("`admin.session_ttl`: at least 1s".into());
        }
        bad
    }
}

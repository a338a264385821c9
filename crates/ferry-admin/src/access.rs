//! Who may call the admin API and the console, and what they may do.
//!
//! Each caller presents a token: as `Authorization: Bearer …` to the API,
//! or in the console's HttpOnly session cookie after logging in with it.
//! A token has a name (written to the audit log with every change it
//! makes) and a [`Role`]: [`Role::Admin`] may change things (replay,
//! discard, pause), [`Role::ReadOnly`] may only look. No token configured
//! means the admin API and console are not served at all.

use std::time::Duration;

use ferry_events::api::BearerToken;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// See and change: replay, discard, pause, resume.
    Admin,
    /// See only; every change is refused with 403.
    ReadOnly,
}

/// A named token.
#[derive(Clone, Debug)]
pub struct ApiToken {
    /// Its name, as the audit log records it (e.g. `ops-alice`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret.
    pub token: BearerToken,
}

/// The caller of a request, once its token was recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// Whether this caller may change things.
    pub fn may_change(&self) -> bool {
        self.role == Role::Admin
    }
}

/// How the admin API and console are served.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The tokens that may call; at least one.
    pub tokens: Vec<ApiToken>,
    /// Dead letters acted on per chunk of a bulk replay or discard
    /// (default 500).
    pub chunk: u32,
    /// How often the overview is sampled for the console's sparklines
    /// (default 5 s).
    pub sample_every: Duration,
    /// The longest a bulk replay waits for the relay to deliver one chunk
    /// of outbox messages before it releases the next (default 60 s).
    pub chunk_drain_timeout: Duration,
}

impl AdminConfig {
    /// The defaults, with these tokens.
    pub fn with_tokens(tokens: Vec<ApiToken>) -> Self {
        Self {
            tokens,
            chunk: 500,
            sample_every: Duration::from_secs(5),
            chunk_drain_timeout: Duration::from_secs(60),
        }
    }

    /// The caller whose token is `given`, compared in constant time with
    /// every configured token.
    pub fn caller(&self, given: &[u8]) -> Option<Caller> {
        let mut found = None;
        for t in &self.tokens {
            if t.token.matches(given) && found.is_none() {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_caller_and_role() {
        let token = |name: &str, role, secret: &str| ApiToken {
            name: name.to_owned(),
            role,
            token: BearerToken::new(secret).unwrap(),
        };
        let config = AdminConfig::with_tokens(vec![
            token("alice", Role::Admin, "admin-secret"),
            token("grafana", Role::ReadOnly, "viewer-secret"),
        ]);
        let alice = config.caller(b"admin-secret").unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.may_change());
        let viewer = config.caller(b"viewer-secret").unwrap();
        assert_eq!(viewer.role, Role::ReadOnly);
        assert!(!viewer.may_change());
        assert!(config.caller(b"admin-secre").is_none());
        assert!(config.caller(b"").is_none());
    }
}

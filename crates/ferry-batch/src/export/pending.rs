//! A stand-in for `location::{LocationConfig, open}` while it is written;
//! removed when it lands.
#![allow(missing_docs, dead_code)]

use std::sync::Arc;

use ferry_core::Failure;
use serde::{Deserialize, Serialize};

use crate::Location;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    pub url: String,
}
pub fn open(config: &LocationConfig) -> Result<Arc<dyn Location>, Failure> {
    Ok(Arc::new(crate::location::FolderLocation::new(
        config.url.trim_start_matches("file://"),
    )))
}

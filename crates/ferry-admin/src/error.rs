//! Errors of the admin API, and the HTTP answers they become.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No valid token: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A read-only token asked for a change, or a console form came
    /// without its CSRF token: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A parameter is malformed or out of range: 400 naming it.
    #[error("parameter `{parameter}`: {message}")]
    BadParameter {
        /// The parameter's name.
        parameter: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such store, message, dead letter, pipeline or job: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. the confirmed
    /// count of a bulk action no longer matches): 409.
    #[error("{0}")]
    Conflict(String),
    /// A bulk action's confirmed count no longer matches what the filter
    /// selects now: 409, with the current count to show and confirm again.
    #[error("{current} dead items match the filter now, not the {confirmed} confirmed; confirm the current count")]
    StaleCount {
        /// The count the caller confirmed.
        confirmed: u64,
        /// The count now.
        current: u64,
    },
    /// A dead item could not be sent again: 409 when this process does
    /// not know where it goes, 502 when its destination refused it or is
    /// unreachable (a retry may help once it is back).
    #[error("replaying `{id}` failed")]
    Replay {
        /// The dead item.
        id: String,
        /// Why.
        #[source]
        source: crate::ReplayError,
    },
    /// A database failed: 503; the cause is logged, not sent. A retry may
    /// help once the database is reachable.
    #[error("the store is unavailable")]
    Store(#[source] ferry_store::StoreError),
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The parameter at fault, for a 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// For a 409 on a bulk action: how many dead items match the filter
    /// now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_count: Option<u64>,
}

impl AdminError {
    /// A 400 naming `parameter`.
    pub fn bad(parameter: &str, message: impl Into<String>) -> Self {
        Self::BadParameter {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadParameter { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::StaleCount { .. } => StatusCode::CONFLICT,
            Self::Replay {
                source: crate::ReplayError::UnknownOwner(_),
                ..
            } => StatusCode::CONFLICT,
            Self::Replay { .. } => StatusCode::BAD_GATEWAY,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<ferry_store::StoreError> for AdminError {
    fn from(e: ferry_store::StoreError) -> Self {
        Self::Store(e)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let Self::Store(e) = &self {
            tracing::warn!(error = %crate::overview::chain(e), "admin api: store failed");
        }
        if let Self::Replay { .. } = &self {
            tracing::info!(error = %crate::overview::chain(&self), "admin api: replay failed");
        }
        let parameter = match &self {
            Self::BadParameter { parameter, .. } => Some(parameter.clone()),
            _ => None,
        };
        let current_count = match &self {
            Self::StaleCount { current, .. } => Some(*current),
            _ => None,
        };
        // A replay's cause is the destination's answer, not the database's:
        // it helps the operator and holds no internals of ours.
        let error = match &self {
            Self::Replay { .. } => crate::overview::chain(&self),
            _ => self.to_string(),
        };
        let body = ErrorBody {
            error,
            parameter,
            current_count,
        };
        (self.status(), Json(body)).into_response()
    }
}

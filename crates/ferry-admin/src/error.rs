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
            Self::Conflict(_) => StatusCode::CONFLICT,
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
        let parameter = match &self {
            Self::BadParameter { parameter, .. } => Some(parameter.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            parameter,
        };
        (self.status(), Json(body)).into_response()
    }
}

//! What a failed SQS request means for the caller.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use ferry_core::{SinkError, SubscribeError};

/// A cause shared by the errors of every message one failure hit.
type SharedError = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// The kinds of failure the sink and the subscriber tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// SQS cannot be reached or is down (connection, timeout, 503).
    Unavailable,
    /// The credentials are refused or lack a permission.
    Denied,
    /// The queue does not exist (or no longer).
    NoQueue,
    /// Worth retrying: throttling, a server error, a garbled response.
    Transient,
    /// The request is wrong; the same one fails again.
    Permanent,
}

/// A failed request, classified.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) class: Class,
    pub(crate) message: String,
    pub(crate) source: Option<SharedError>,
}

impl Failure {
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self {
            class: Class::Transient,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn no_queue(name: &str) -> Self {
        Self {
            class: Class::NoQueue,
            message: format!("sqs queue `{name}` does not exist"),
            source: None,
        }
    }

    /// For the sink: credentials and outages pause the relay rather than
    /// dead-letter messages; a missing queue may be created meanwhile.
    pub(crate) fn into_sink_error(self) -> SinkError {
        let mut error = match self.class {
            Class::Unavailable | Class::Denied => SinkError::unavailable(self.message),
            Class::NoQueue | Class::Transient => SinkError::transient(self.message),
            Class::Permanent => SinkError::permanent(self.message),
        };
        error.source = self.source.map(|s| Box::new(s) as _);
        error
    }

    /// For the subscriber: a missing permission or a wrong request is
    /// permanent, the rest is worth subscribing again.
    pub(crate) fn into_subscribe_error(self) -> SubscribeError {
        let mut error = match self.class {
            Class::Denied | Class::Permanent => SubscribeError::permanent(self.message),
            Class::Unavailable | Class::NoQueue | Class::Transient => {
                SubscribeError::unavailable(self.message)
            }
        };
        error.source = self.source.map(|s| Box::new(s) as _);
        error
    }
}

/// Classifies an SDK error; `what` says which request failed.
pub(crate) fn classify<E, R>(error: SdkError<E, R>, what: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let class = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Class::Unavailable,
        SdkError::ConstructionFailure(_) => Class::Permanent,
        SdkError::ServiceError(service) => code_class(service.err().code()),
        _ => Class::Transient,
    };
    let detail = match &error {
        SdkError::ServiceError(service) => service.err().code().map(str::to_owned),
        _ => None,
    };
    let message = match detail {
        Some(code) => format!("{what}: {code}"),
        None => what.to_owned(),
    };
    Failure {
        class,
        message,
        source: Some(std::sync::Arc::new(error)),
    }
}

/// Classifies an SQS error code, as the service or a batch entry gives it.
pub(crate) fn code_class(code: Option<&str>) -> Class {
    // An answer without an error code did not come from SQS's request
    // checks (a proxy's 5xx, a local endpoint's crash): worth trying again.
    let Some(code) = code else {
        return Class::Transient;
    };
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => Class::NoQueue,
        "ServiceUnavailable" | "AWS.SimpleQueueService.ServiceUnavailable" => Class::Unavailable,
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "InvalidSecurity"
        | "ExpiredToken"
        | "MissingAuthenticationToken"
        | "KmsAccessDenied"
        | "KmsDisabled" => Class::Denied,
        "ThrottlingException"
        | "RequestThrottled"
        | "KmsThrottled"
        | "InternalError"
        | "InternalFailure"
        | "InternalErrorException"
        | "OverLimit" => Class::Transient,
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code_class(None), Class::Transient);
        assert_eq!(code_class(Some("QueueDoesNotExist")), Class::NoQueue);
        assert_eq!(code_class(Some("InvalidClientTokenId")), Class::Denied);
        assert_eq!(code_class(Some("RequestThrottled")), Class::Transient);
        assert_eq!(code_class(Some("InvalidMessageContents")), Class::Permanent);
    }
}

//! The one error type that crosses crate boundaries.
//!
//! Every block reports failures as an [`Error`]: a coarse [`ErrorKind`]
//! that the HTTP edge maps to a status in one place, a stable machine
//! `code` (snake_case, documented, never renamed) and a human `detail`
//! that says what to change. Blocks never pick HTTP statuses themselves.

use std::fmt;
use std::time::Duration;

/// The coarse class of a failure. The HTTP edge maps each kind to exactly
/// one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (400).
    InvalidArgument,
    /// No credentials, or credentials that cannot be verified (401).
    Unauthenticated,
    /// Valid credentials without the scope the request needs (403).
    PermissionDenied,
    /// The named resource does not exist for this tenant (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The resource exists already or the request conflicts with its state (409).
    Conflict,
    /// A conditional request's precondition did not hold (412).
    PreconditionFailed,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// The request body has a content type the route does not accept (415).
    UnsupportedMediaType,
    /// The request is well-formed but cannot be processed as asked (422).
    Unprocessable,
    /// A quota or rate limit was hit (429).
    ResourceExhausted,
    /// An engine is unreachable, its breaker is open, or the node is
    /// shutting down (503, with `Retry-After`).
    Unavailable,
    /// The request ran out of time (504).
    DeadlineExceeded,
    /// A bug (500).
    Internal,
}

/// A failure with a stable machine code and a detail for humans.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    code: &'static str,
    detail: String,
    retry_after: Option<Duration>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, detail: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn invalid_argument(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthenticated", detail)
    }

    pub fn permission_denied(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, "permission_denied", detail)
    }

    /// An engine could not serve the call; clients should retry after the
    /// given delay.
    pub fn unavailable(
        code: &'static str,
        detail: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        Self::new(ErrorKind::Unavailable, code, detail).with_retry_after(retry_after)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", detail)
    }

    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Error {}

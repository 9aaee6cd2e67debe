//! Errors: every failing request answers `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Error details.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`, `bad_request`, ...).
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

//! The one error type of the HTTP layer, mapped to status codes in one place and rendered in
//! TGI's shape (`{"error", "error_type"}`) or, on the OpenAI routes, in OpenAI's.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Everything a request can fail with. Messages of validation errors are TGI's, word for word.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request asks for something the limits or the parameters' ranges forbid.
    #[error("{0}")]
    Validation(String),
    /// The body is not JSON, or not the JSON the route takes.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON of the right shape (a field of the wrong type, a missing field).
    #[error("{0}")]
    Unprocessable(String),
    #[error("Payload too large: the body is over the {0} byte limit (--payload-limit)")]
    PayloadTooLarge(usize),
    #[error("Model is overloaded")]
    Overloaded,
    /// The model failed while generating.
    #[error("{0}")]
    Generation(String),
    /// The engine went away before the generation ended.
    #[error("Incomplete generation")]
    IncompleteGeneration,
    #[error("unhealthy")]
    Unhealthy,
    #[error("The server is shutting down")]
    ShuttingDown,
    #[error("Unauthorized: a valid `Authorization: Bearer <api key>` header is required")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Generation(_) => StatusCode::FAILED_DEPENDENCY,
            ApiError::IncompleteGeneration => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unhealthy | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    /// TGI's `error_type`; also the `outcome` label of the request counter.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Validation(_)
            | ApiError::BadRequest(_)
            | ApiError::Unprocessable(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::NotFound(_) => "validation",
            ApiError::Overloaded => "overloaded",
            ApiError::Generation(_) => "generation",
            ApiError::IncompleteGeneration => "incomplete_generation",
            ApiError::Unhealthy => "healthcheck",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Unauthorized => "unauthorized",
        }
    }

    /// The body TGI sends, also as one server-sent event when streaming.
    pub fn tgi_body(&self) -> serde_json::Value {
        json!({ "error": self.to_string(), "error_type": self.error_type() })
    }

    /// The body OpenAI's API sends.
    pub fn openai_body(&self) -> serde_json::Value {
        let (kind, code) = match self {
            ApiError::Overloaded => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::Unauthorized => ("invalid_request_error", "invalid_api_key"),
            ApiError::Generation(_) | ApiError::IncompleteGeneration => {
                ("server_error", "generation_failed")
            }
            ApiError::Unhealthy | ApiError::ShuttingDown => ("server_error", "unavailable"),
            ApiError::NotFound(_) => ("invalid_request_error", "not_found"),
            _ => ("invalid_request_error", "invalid_request"),
        };
        json!({ "error": { "message": self.to_string(), "type": kind, "param": null, "code": code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.tgi_body())).into_response()
    }
}

/// An [`ApiError`] on an OpenAI route: same status, OpenAI's body.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(self.0.openai_body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_and_types_are_tgis() {
        let cases = [
            (ApiError::Validation("x".into()), 422, "validation"),
            (ApiError::Overloaded, 429, "overloaded"),
            (ApiError::Generation("x".into()), 424, "generation"),
            (ApiError::IncompleteGeneration, 500, "incomplete_generation"),
            (ApiError::Unhealthy, 503, "healthcheck"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.tgi_body()["error_type"], kind);
        }
        assert_eq!(
            ApiError::Overloaded.tgi_body()["error"],
            "Model is overloaded"
        );
        assert_eq!(
            ApiError::Overloaded.openai_body()["error"]["message"],
            "Model is overloaded"
        );
    }
}

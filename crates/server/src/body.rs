//! The JSON request body extractor: any content type, TGI-shaped errors for bodies that are too
//! large (413), not JSON or not UTF-8 (400), or of the wrong shape (422).

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A request body parsed as JSON into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.payload_limit)
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// `bytes` as JSON of type `T`, with messages that say what is wrong and where.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        )),
        _ => ApiError::BadRequest(format!("Failed to parse the request body as JSON: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        inputs: String,
    }

    #[test]
    fn syntax_is_400_and_shape_is_422() {
        assert!(matches!(
            parse::<Body>(b"{\"inputs\": "),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse::<Body>(b"{\"inputs\": 3}"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse::<Body>(b"{}"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse::<Body>(b"{\"inputs\": \"\xff\xfe\"}"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(parse::<Body>(b"{\"inputs\": \"ok\"}").is_ok());
    }
}

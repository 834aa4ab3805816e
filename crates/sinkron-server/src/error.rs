//! The one error type of the HTTP layer, [`ApiError`], and [`AppJson`], the body extractor
//! that turns malformed input into it.
//!
//! It owns the error codes and the `{"error":{"code","message"}}` body. It must not leak
//! internals: a server-side failure answers a generic 500 and the detail goes to the log.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sinkron_core::protocol::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

/// An error answer: status, a stable machine code and a human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// The client's ack, for 409 `mutation_id_reused`.
    pub ack: Option<u64>,
    /// The refused mutation's id, for 422 `invalid_mutation` from a push's checks.
    pub mutation: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            ack: None,
            mutation: None,
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_cursor() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "lastSync is not a cursor this server issued",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn unprocessable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The same error with another message for people.
    pub fn with_message(self, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            ..self
        }
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many attempts; try again later",
            )
        }
    }

    /// A failure that is ours, not the client's: logged in full, answered generically.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The error for a bare status produced outside our handlers (router, layers).
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "method not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
            StatusCode::REQUEST_TIMEOUT => ("timeout", "request took too long"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "unsupported content type")
            }
            StatusCode::UNAUTHORIZED => return Self::unauthorized(),
            s if s.is_server_error() => ("internal", "internal server error"),
            _ => ("bad_request", "bad request"),
        };
        Self::new(status, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdsReused { ack } => Self {
                ack: Some(ack),
                ..Self::new(
                    StatusCode::CONFLICT,
                    "mutation_id_reused",
                    format!(
                        "mutation ids at or below {ack} were already used for other writes of \
                         this clientId; number new writes above {ack}"
                    ),
                )
            },
            // Named by its id, as the push's own checks name a write: the client sets that
            // one aside and pushes the others again.
            StoreError::MergedTooLarge {
                mutation,
                collection,
                key,
                bytes,
            } => Self {
                mutation: Some(mutation),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_mutation",
                    format!(
                        "mutations: {collection}/{key} merged field by field with what is \
                         stored would hold {bytes} bytes, more than {}; remove fields from it",
                        sinkron_core::limits::VALUE_BYTES_MAX
                    ),
                )
            },
            StoreError::QuotaExceeded { what, limit } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!(
                    "this push would store more than the user's quota of {limit} {what}; \
                     delete records to make room"
                ),
            ),
            // The user's row went under a live request (an erasure, a deleted account's
            // last sweep): trying again finds the session gone (401) or the user made anew.
            StoreError::NotFound => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the user changed during this request; try again",
                )
            },
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "storage unavailable");
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "storage is busy; try again",
                    )
                }
            }
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.into_owned(),
                ack: self.ack,
                mutation: self.mutation,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"internal server error"}}"#.to_vec()
        });
        let mut res = (self.status, bytes).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// A JSON body whose every failure is an [`ApiError`]: syntax errors are 400 `bad_request`,
/// a well-formed body of the wrong shape is 422 `invalid_body`, too large is 413, a body not
/// declared as JSON is 415 — a missing content type included: a page of another site can
/// send a body without one (`fetch` of a typeless `Blob` in `no-cors` mode), never with
/// `application/json`, which needs a CORS preflight.
pub struct AppJson<T>(pub T);

/// `application/json` or `application/*+json` (parameters such as `charset` allowed).
fn declares_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !declares_json(req.headers()) {
            return Err(ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })?;
        serde_json::from_slice(&bytes).map(AppJson).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => {
                    ApiError::unprocessable("invalid_body", format!("invalid request body: {e}"))
                }
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::bad_request(format!("malformed JSON: {e}"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gone_under_a_request_is_a_retry_not_a_server_error() {
        let e = ApiError::from(StoreError::NotFound);
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1))
        );
        let e = ApiError::from(StoreError::Other("disk on fire".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

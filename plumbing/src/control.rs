//! What the control API of both connectors shares (the routes themselves are each connector's
//! `control` module): the admin token that every mutating call needs, and errors as JSON in
//! Kafka Connect's shape (`{"error_code": 409, "message": "..."}`).
//!
//! Reading (`GET`) needs no token, like `/metrics`. A mutating call (`PUT`, `POST`, `PATCH`,
//! `DELETE`) without a configured token answers 403 and says how to enable it; with a missing
//! or wrong token 401. Each refusal is logged (method, path, reason; never the token) and
//! counted in `<service>_admin_refusals_total{reason}`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The control API's options, shared by both connectors.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// File holding the bearer token of the control API's mutating calls (pause, resume,
    /// poll now, offsets); wins over ADMIN_TOKEN. The token itself is read only from the
    /// environment (ADMIN_TOKEN) or this file, never a flag. Without one, mutating calls are
    /// refused with 403.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    pub fn token(&self) -> anyhow::Result<Option<SecretString>> {
        crate::secret::from_env_or_file(
            "ADMIN_TOKEN",
            self.admin_token_file.as_deref(),
            "ADMIN_TOKEN_FILE",
        )
    }
}

/// An error answer: its status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error_code: u16,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.status.as_u16(),
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        // 400 for a body that is not the JSON asked for, whatever axum's own status would be
        // (415 without the content type, 422 for a wrong shape): one rule for clients.
        ApiError::bad_request(format!("the request body: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request(format!("the path: {}", e.body_text()))
    }
}

/// The connector's state in `/status`, as Kafka Connect shows a connector's.
#[derive(Debug, serde::Serialize)]
pub struct ConnectorState {
    /// `UNASSIGNED` while starting, `RUNNING` or `PAUSED`.
    pub state: &'static str,
    pub worker_id: String,
    /// The failing dependencies, one per line; absent when all answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A dependency not answering. Named only, as `/readyz` does: its error can quote input (a
/// URL, a record, an API answer); the logs have it whole.
#[derive(Debug, serde::Serialize)]
pub struct Failing {
    pub dependency: String,
    pub error: &'static str,
}

/// The answer to `PUT /pause` and `PUT /resume`.
#[derive(Debug, serde::Serialize)]
pub struct StateChange {
    pub state: &'static str,
}

impl ConnectorState {
    /// The state and the dependencies `readiness` says are failing.
    pub fn new(
        state: &'static str,
        worker_id: &str,
        readiness: &crate::readiness::Readiness,
    ) -> (ConnectorState, Vec<Failing>) {
        let failing: Vec<Failing> = match readiness.status() {
            Ok(()) => Vec::new(),
            Err(failing) => failing
                .into_iter()
                .map(|(dependency, _)| Failing {
                    dependency: dependency.to_string(),
                    error: "not ready (see the logs)",
                })
                .collect(),
        };
        let trace = (!failing.is_empty()).then(|| {
            failing
                .iter()
                .map(|f| format!("{}: {}", f.dependency, f.error))
                .collect::<Vec<_>>()
                .join("\n")
        });
        let connector = ConnectorState {
            state,
            worker_id: worker_id.to_string(),
            trace,
        };
        (connector, failing)
    }
}

/// What the token check needs: the configured token and the service's name for its metric.
#[derive(Clone)]
pub struct Admin {
    token: Option<Arc<SecretString>>,
    service: &'static str,
}

impl Admin {
    pub fn new(service: &'static str, token: Option<SecretString>) -> Self {
        Admin {
            token: token.map(Arc::new),
            service,
        }
    }

    /// Whether `presented` (the `Authorization` header's value) carries the token.
    fn check(&self, presented: Option<&[u8]>) -> Result<(), (StatusCode, &'static str)> {
        let Some(token) = &self.token else {
            return Err((StatusCode::FORBIDDEN, "disabled"));
        };
        let bearer = presented.and_then(|h| h.strip_prefix(b"Bearer ".as_slice()));
        match bearer {
            None => Err((StatusCode::UNAUTHORIZED, "missing_token")),
            Some(given) if bool::from(given.ct_eq(token.expose_secret().as_bytes())) => Ok(()),
            Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong_token")),
        }
    }
}

/// Middleware of the control routes: lets reads through, and mutating calls only with the
/// token.
pub async fn require_token(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match admin.check(presented) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            let (method, path) = (request.method().as_str(), request.uri().path());
            tracing::warn!(method, path, reason, "Control API: mutating call refused");
            metrics::counter!(format!("{}_admin_refusals_total", admin.service), "reason" => reason)
                .increment(1);
            let message = if status == StatusCode::FORBIDDEN {
                "mutating calls are disabled: set ADMIN_TOKEN (or ADMIN_TOKEN_FILE) on the \
                 connector and send it as `Authorization: Bearer <token>`"
            } else {
                "a valid bearer token is required: send `Authorization: Bearer <ADMIN_TOKEN>`"
            };
            let mut response = ApiError::new(status, message).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
            }
            response
        }
    }
}

/// The answer to a path no route has.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no {} {} here: see the control API in the README (openapi/source.yaml, openapi/sink.yaml)",
        request.method(),
        request.uri().path()
    ))
}

/// The answer to a method a path does not have (405, as JSON like every other error).
pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not a method of {}: see openapi/source.yaml or openapi/sink.yaml",
            request.method(),
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let admin = Admin::new("test", Some(SecretString::from("s3cret-token")));
        assert!(admin.check(Some(b"Bearer s3cret-token")).is_ok());
        assert_eq!(
            admin.check(Some(b"Bearer s3cret-tokeN")).unwrap_err(),
            (StatusCode::UNAUTHORIZED, "wrong_token")
        );
        assert_eq!(
            admin.check(Some(b"Bearer s3cret-token2")).unwrap_err().1,
            "wrong_token"
        );
        assert_eq!(
            admin.check(Some(b"s3cret-token")).unwrap_err().1,
            "missing_token"
        );
        assert_eq!(admin.check(None).unwrap_err().1, "missing_token");
        let disabled = Admin::new("test", None);
        assert_eq!(
            disabled.check(Some(b"Bearer anything")).unwrap_err(),
            (StatusCode::FORBIDDEN, "disabled")
        );
    }
}

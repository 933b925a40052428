//! The HTTP API: `fn app(server) -> Router`, so handlers can be tested without a socket.
//! Client calls under `/api/v1`, agent calls under `/agent/v1`, the OpenAPI document at
//! `/api/openapi.json`. Every call needs a bearer token, resolved once per request by the
//! [`Caller`] extractor; a handler's arguments say who may call it ([`Admin`], [`Client`],
//! [`Node`]; registering takes any [`Caller`] and decides itself). Every refusal is an `ApiError` body with a 4xx status and changes
//! nothing.
//!
//! - `jobs.rs`: submit, list, show, why, cancel, logs.
//! - `cluster.rs`: nodes and teams as everyone sees them; `/metrics`.
//! - `admin.rs`: teams and tokens set by an admin; drain and resume.
//! - `agent.rs`: register, heartbeat, the commands long poll, log uploads.
//! - `openapi.rs`: the OpenAPI document.
//! - `report.rs`: each team's use over a window, from the store's usage samples and records.

mod admin;
mod agent;
mod cluster;
mod jobs;
mod openapi;
mod report;

pub use openapi::openapi_doc;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use qm_proto::ApiError;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{hash_token, Principal};
use crate::{Refusal, Server};

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Refusal::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Refusal::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            Refusal::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, "too_many", m),
            Refusal::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m)
            }
            Refusal::Internal(m) => {
                eprintln!("qm server: internal error: {m}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server's log".to_string(),
                )
            }
        };
        (
            status,
            Json(ApiError {
                error: code.into(),
                message,
                leader: None,
            }),
        )
            .into_response()
    }
}

pub(crate) type Api<T> = Result<Json<T>, Refusal>;

/// A JSON body, with a clear message when it does not parse.
pub struct Body<T>(T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Refusal::BadRequest(format!("cannot read the body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| Refusal::BadRequest(format!("malformed JSON body: {e}")))
    }
}

/// A query string, refused as an `ApiError` (listing the valid values of an enum) when it
/// does not parse.
pub struct Params<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| Refusal::BadRequest(e.body_text()))
    }
}

/// A path parameter (a job's id, a node's name), refused as an `ApiError` when it does not
/// parse.
pub struct Seg<T>(pub T);

impl<S, T> FromRequestParts<S> for Seg<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Seg(v))
            .map_err(|e| Refusal::BadRequest(format!("bad path: {}", e.body_text())))
    }
}

/// Whoever sent the request's bearer token (an admin, a member, a join token or a node), and
/// the token.
pub struct Caller(pub Principal, pub String);

impl FromRequestParts<Arc<Server>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Refusal> {
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Refusal::Unauthorized("no token; send `Authorization: Bearer TOKEN`".into())
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Refusal::Unauthorized("malformed Authorization header; expected `Bearer TOKEN`".into())
        })?;
        let token = token.trim();
        let principal = s.lock().principal(&hash_token(token))?;
        Ok(Caller(principal, token.to_string()))
    }
}

/// An admin.
pub struct Admin;

impl FromRequestParts<Arc<Server>> for Admin {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Refusal> {
        match Caller::from_request_parts(parts, s).await?.0 {
            Principal::Admin => Ok(Admin),
            _ => Err(Refusal::Forbidden("this needs an admin token".into())),
        }
    }
}

/// A person: an admin or a member of teams (not an agent, not a join token).
pub struct Client(pub Principal);

impl FromRequestParts<Arc<Server>> for Client {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Refusal> {
        match Caller::from_request_parts(parts, s).await?.0 {
            p @ (Principal::Admin | Principal::Member { .. }) => Ok(Client(p)),
            _ => Err(Refusal::Forbidden(
                "this needs an admin or member token, not an agent's".into(),
            )),
        }
    }
}

/// A registered node's agent, by the node's id.
pub struct Node(pub u32);

impl FromRequestParts<Arc<Server>> for Node {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Refusal> {
        match Caller::from_request_parts(parts, s).await?.0 {
            Principal::Node(n) => Ok(Node(n)),
            _ => Err(Refusal::Forbidden("this needs a node credential".into())),
        }
    }
}

/// Every route with its OpenAPI description: a route exists only with its description.
pub(crate) fn routes() -> OpenApiRouter<Arc<Server>> {
    OpenApiRouter::with_openapi(openapi::Doc::openapi())
        .routes(routes!(openapi::openapi))
        .routes(routes!(cluster::metrics))
        .routes(routes!(crate::dash::index))
        .routes(routes!(crate::dash::app_js))
        .routes(routes!(crate::dash::app_css))
        .routes(routes!(crate::dash::stream))
        .routes(routes!(crate::dash::queue))
        .routes(routes!(cluster::whoami))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::show))
        .routes(routes!(jobs::why))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::cancel_many))
        .routes(routes!(jobs::logs))
        .routes(routes!(cluster::nodes))
        .routes(routes!(cluster::cluster))
        .routes(routes!(admin::drain))
        .routes(routes!(admin::resume))
        .routes(routes!(admin::reset))
        .routes(routes!(cluster::teams))
        .routes(routes!(report::report))
        .routes(routes!(admin::set_team))
        .routes(routes!(admin::create_token))
        .routes(routes!(agent::register))
        .routes(routes!(agent::heartbeat))
        .routes(routes!(agent::commands))
        .routes(routes!(agent::logs))
}

/// The router of the whole API.
pub fn app(server: Arc<Server>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { Refusal::NotFound("no such endpoint; see /api/openapi.json".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            Refusal::MethodNotAllowed(format!(
                "this endpoint does not take {method}; see /api/openapi.json for its methods"
            ))
        })
        .with_state(server)
}

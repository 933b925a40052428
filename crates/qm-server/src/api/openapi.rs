//! The OpenAPI document of the API (`GET /api/openapi.json`, any token), generated from the
//! router itself: every route is registered through [`super::routes`] together with its
//! `#[utoipa::path]` description, and every schema comes from the wire types' derives, so
//! the document cannot leave a route out or drift from the types.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use super::{Api, Caller};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quartermaster",
        description = "A scheduler for shared GPU clusters. Client calls under /api/v1, agent calls under /agent/v1. Every call but the dashboard's page and assets carries `Authorization: Bearer TOKEN` (an admin's, a member's, a join token, or a node's credential); a refusal is an ApiError body with a 4xx status and changes nothing."
    ),
    components(schemas(qm_proto::ApiError))
)]
pub struct Doc;

/// The refusals every call that takes a token may answer with, each an `ApiError`.
const REFUSALS: &[(&str, &str)] = &[
    (
        "400",
        "Bad input: the message says what was wrong and what would be right",
    ),
    ("401", "No token, or one the server does not know"),
    ("403", "The token may not do this"),
    ("404", "No such job, node or team"),
    (
        "409",
        "The request conflicts with the state (for example a log offset past its end)",
    ),
    ("429", "Over a limit of pending jobs per user or team"),
];

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = serde_json::Value))
)]
pub async fn openapi(_: Caller) -> Api<serde_json::Value> {
    Ok(Json(openapi_doc()))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi_doc() -> serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut api) = super::routes().split_for_parts();
        finish(&mut api);
        serde_json::to_value(&api).expect("the OpenAPI document serialises")
    })
    .clone()
}

/// The bearer scheme as every call's default, and the refusals on every operation that
/// takes a token.
fn finish(api: &mut utoipa::openapi::OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    api.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    for item in api.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            add_refusals(op);
        }
    }
}

fn add_refusals(op: &mut Operation) {
    // An operation with its own empty security requirement takes no token and refuses none.
    let open = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
    if open {
        return;
    }
    for (status, description) in REFUSALS {
        let response = ResponseBuilder::new()
            .description(*description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build();
        op.responses
            .responses
            .entry((*status).to_string())
            .or_insert(RefOr::T(response));
    }
}

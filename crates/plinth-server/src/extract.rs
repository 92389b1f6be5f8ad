//! Path and query extractors whose rejections are problem documents
//! (400, code `invalid_path` / `invalid_query`) instead of axum's plain text.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use plinth_core::Error;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError(path_error(&rejection))),
        }
    }
}

fn path_error(rejection: &PathRejection) -> Error {
    Error::invalid_argument(
        "invalid_path",
        format!("the URL path is not valid: {}", rejection.body_text()),
    )
}

pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError(query_error(&rejection))),
        }
    }
}

fn query_error(rejection: &QueryRejection) -> Error {
    let detail = rejection.body_text();
    let detail = detail
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&detail);
    Error::invalid_argument(
        "invalid_query",
        format!("the query string is not valid: {detail}"),
    )
}

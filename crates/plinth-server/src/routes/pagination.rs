//! Cursor pagination shared by list routes: `?limit=&cursor=`, answers
//! carry `next_cursor` until the last page. Cursors are opaque to clients.

use plinth_core::Error;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn page_size(&self) -> Result<usize, Error> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(Error::invalid_argument(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(limit)
    }

    /// The position encoded in the cursor, if any.
    pub fn decoded_cursor(&self) -> Result<Option<String>, Error> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        decode_cursor(cursor).map(Some)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

pub fn encode_cursor(position: &str) -> String {
    hex::encode(position.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, Error> {
    let invalid = || {
        Error::invalid_argument(
            "invalid_cursor",
            "cursor is not one this server handed out; pass `next_cursor` from the previous page",
        )
    };
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// Builds a page from up to `page_size + 1` fetched items: the extra item
/// only tells that another page exists.
pub fn page_from<T, R>(
    mut fetched: Vec<R>,
    page_size: usize,
    position_of: impl Fn(&R) -> String,
    convert: impl Fn(R) -> T,
) -> Page<T> {
    let has_more = fetched.len() > page_size;
    fetched.truncate(page_size);
    let next_cursor = if has_more {
        fetched.last().map(|last| encode_cursor(&position_of(last)))
    } else {
        None
    };
    let mut items = Vec::with_capacity(fetched.len());
    for record in fetched {
        items.push(convert(record));
    }
    Page { items, next_cursor }
}

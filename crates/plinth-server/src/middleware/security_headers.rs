//! Headers every API response carries: no MIME sniffing, no framing, no
//! referrer, no caching of API answers (a handler may set its own
//! `Cache-Control`, which is then kept).

use axum::http::{HeaderMap, HeaderValue, header};

pub fn add_security_headers(headers: &mut HeaderMap) {
    let defaults = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

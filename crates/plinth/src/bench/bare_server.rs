//! The baseline of `plinth bench http`: an axum server with one handler
//! and no middleware at all, run as its own process on a multi-thread
//! runtime like `plinth serve`, so the difference between the two is what
//! Plinth's middleware stack and authentication cost.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

/// The only route of the bare server.
pub const BARE_PATH: &str = "/bare";

/// Shaped like the answer of `/v1/whoami`, so both sides serialize and
/// send about the same bytes.
#[derive(Serialize)]
struct BareAnswer {
    tenant: &'static str,
    scopes: [&'static str; 1],
    actor: &'static str,
}

async fn answer() -> Json<BareAnswer> {
    Json(BareAnswer {
        tenant: "bench",
        scopes: ["keys:read"],
        actor: "key:0000000000000000",
    })
}

/// Serves until the process is killed, which is how `bench http` stops it.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let router = Router::new().route(BARE_PATH, get(answer));
    axum::serve(listener, router)
        .await
        .context("the bare server failed")
}

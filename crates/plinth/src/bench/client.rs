//! The HTTP/1.1 client of the benchmarks: one keep-alive connection that
//! sends requests one after another, with nothing in between (no pool, no
//! retries, no redirects), so what is timed is the server and the wire.

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a server listens: the socket to connect to and the `Host` header
/// requests carry.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub socket_address: SocketAddr,
    pub host_header: HeaderValue,
}

impl Endpoint {
    pub fn from_socket_address(socket_address: SocketAddr) -> anyhow::Result<Endpoint> {
        let host_header = HeaderValue::from_str(&socket_address.to_string())
            .context("a socket address is a valid Host header")?;
        Ok(Endpoint {
            socket_address,
            host_header,
        })
    }
}

/// An `http://host:port/path` URL given on the command line, resolved.
pub struct ResolvedUrl {
    pub endpoint: Endpoint,
    pub path: PathAndQuery,
}

pub async fn resolve_url(url: &str) -> anyhow::Result<ResolvedUrl> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("`{url}` must start with http:// (the benchmark speaks plain HTTP/1.1)");
    }
    let Some(authority) = uri.authority() else {
        anyhow::bail!("`{url}` has no host");
    };
    let port = authority.port_u16().unwrap_or(80);
    let socket_address = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("cannot resolve the host of `{url}`"))?
        .next()
        .with_context(|| format!("the host of `{url}` resolves to no address"))?;
    let host_header = HeaderValue::from_str(authority.as_str())
        .with_context(|| format!("the host of `{url}` is not a valid Host header"))?;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok(ResolvedUrl {
        endpoint: Endpoint {
            socket_address,
            host_header,
        },
        path,
    })
}

type ConnectionDriver = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection. Its I/O is driven inside `send`,
/// on the caller's task, instead of on a spawned task: a hand-off between
/// two tasks for every request would cost the generator wake-ups that the
/// servers, sharing the same cores, would pay for.
pub struct BenchConnection {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<ConnectionDriver>>,
}

impl BenchConnection {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<BenchConnection> {
        let stream = TcpStream::connect(endpoint.socket_address)
            .await
            .with_context(|| format!("cannot connect to {}", endpoint.socket_address))?;
        // Requests and answers are a few hundred bytes: Nagle's algorithm
        // would hold them back and time the kernel instead of the server.
        stream.set_nodelay(true)?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake failed")?;
        Ok(BenchConnection {
            sender,
            driver: Box::pin(driver),
        })
    }

    /// Sends one request and reads the whole answer. After an error the
    /// connection is unusable and must be dropped.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let BenchConnection { sender, driver } = self;
        let exchange = async {
            sender.ready().await.context("the connection closed")?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::select! {
            outcome = exchange => outcome,
            driven = driver.as_mut() => match driven {
                Ok(()) => Err(anyhow::anyhow!("the server closed the connection")),
                Err(error) => Err(anyhow::Error::new(error).context("the connection failed")),
            },
        }
    }
}

/// A request to `path` on `endpoint` with the given body.
pub fn build_request(
    method: http::Method,
    endpoint: &Endpoint,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, endpoint.host_header.clone())
        .body(Full::new(body))
        .context("building a request")
}

/// Opens a connection, sends one request, and closes it: for set-up calls,
/// never for measured ones.
pub async fn send_once(
    endpoint: &Endpoint,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut connection = BenchConnection::open(endpoint).await?;
    connection.send(request).await
}

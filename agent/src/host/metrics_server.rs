//! `GET /metrics` of a standalone agent (`berth agent --metrics-listen ADDR`): the agent's
//! families, as OpenMetrics when the scraper asks for it (Prometheus does), else in the
//! classic text format (curl, promtool). Anything else is 404. Plain HTTP/1.1 without keep-alive
//! state worth keeping: one request per connection is fine for a scraper, header reads time
//! out, and connections in flight are bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` (so a bad address fails at start) and returns the serving future.
pub async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener)))
}

async fn serve(listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false);
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                builder.serve_connection(TokioIo::new(stream), service_fn(answer)),
            )
            .await;
        });
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (content_type, text) =
            berth_manifests::exposition::negotiate(crate::metrics::global().encode(), accept);
        Response::builder()
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(text)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"only GET /metrics here\n")))
    };
    Ok(response.unwrap_or_default())
}

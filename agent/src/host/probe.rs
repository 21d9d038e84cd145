//! Network probes from the host: an HTTP `GET` (status only, redirects not followed, so a
//! 3xx counts as healthy as the manifest says) and a TCP connect, each bounded by the probe's
//! timeout. Exec probes go through the runtime instead. Must not read response bodies beyond
//! what the client buffers, nor talk to anything but the instance's address.

use std::net::SocketAddr;
use std::time::Duration;

use crate::reconcile::traits::Prober;

/// Probes over the host's network stack.
#[derive(Debug, Clone)]
pub struct NetProber {
    client: reqwest::Client,
}

impl NetProber {
    /// A prober with its own connection-less client.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .no_proxy()
            .user_agent(concat!("berth-probe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    if err.is_connect() {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                return io.to_string().to_lowercase();
            }
            cause = c.source();
        }
        return "connection failed".into();
    }
    err.to_string()
}

impl Prober for NetProber {
    async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        let url = format!("http://{addr}{path}");
        let response = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        Ok(response.status().as_u16())
    }

    async fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string().to_lowercase()),
            Err(_) => Err("timed out".into()),
        }
    }
}

//! Runs one probe through the traits: http and tcp through [`Prober`] against the instance's
//! address, exec through [`Runtime::exec`] inside the instance. Every probe is bounded by the
//! health check's `timeout`. The verdict is folded into [`super::ProbeState`] by the caller.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use berth_manifests::app::{Health, Probe};

use crate::reconcile::traits::{Prober, Runtime};

/// Runs `health`'s probe against instance `id` at `address` (loopback when `None`, as in host
/// network mode). `Err` carries what failed: `status 500`, `connection refused`, `exit code 1`,
/// `timed out after 1s`.
pub async fn run<R: Runtime, P: Prober>(
    runtime: &R,
    prober: &P,
    id: &str,
    address: Option<IpAddr>,
    health: &Health,
) -> Result<(), String> {
    let timeout = health.timeout.as_std();
    let ip = address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let probe = async {
        match &health.probe {
            Probe::Http { path, port } => {
                let status = prober
                    .http_get(SocketAddr::new(ip, *port), path, timeout)
                    .await?;
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            Probe::Tcp { port } => {
                prober
                    .tcp_connect(SocketAddr::new(ip, *port), timeout)
                    .await
            }
            Probe::Exec { command } => match runtime.exec(id, command, timeout).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("exit code {code}")),
                Err(err) => Err(err.chain()),
            },
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!("timed out after {}", health.timeout)),
    }
}

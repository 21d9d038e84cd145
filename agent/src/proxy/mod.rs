//! The per-host proxy: for each app with `expose`, a listener on the host port that balances
//! over the app's ready instances (least in-flight), in HTTP/1.1 mode (keep-alive, streamed
//! bodies, Upgrade pass-through, `X-Forwarded-For`/`-Proto`, connect/header/idle timeouts) or
//! in plain TCP mode; drain of leaving instances; per-app counters and a latency histogram.
//!
//! ```text
//!  client ──► listener (App) ──pick least in-flight──► backend (instance ip:port)
//!                 │                    ▲ add_backend when ready
//!                 │                    └ remove_backend before the stop signal, then drain
//!                 └─ no backend: on_no_backend hook, hold up to `hold`, else 503 + Retry-After
//! ```
//!
//! Restarts: the proxy runs in its own long-lived process (`berth proxy`), configured by the
//! agent over a unix socket ([`control`]); the agent's restart closes only that control
//! connection, never a client connection. See docs/proxy.md.
//!
//! It must not: start or stop instances (the hook only tells), or decide who is ready (the
//! agent's probes do, and call `add_backend`/`remove_backend`).

pub mod balance;
mod connect;
pub mod control;
mod l7;
pub mod metrics;
pub mod server;
mod tcp;
mod upstream;
pub mod workers;

pub use balance::{Backend, DrainOutcome, InFlight, Pool};
pub use metrics::{AppMetrics, MetricsSnapshot};
pub use server::{AppConfig, Mode, NoBackendHook, Proxy, ProxyError, Timeouts};

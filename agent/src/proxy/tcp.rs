//! Plain TCP mode: each client connection goes to the backend with the fewest open
//! connections and bytes are copied both ways until either side closes. A refused connect is
//! retried once on another backend. With no backend the connection is held for the app's
//! `hold`, then closed.

use std::sync::{Arc, Weak};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::server::App;

pub(crate) async fn serve(
    app: Weak<App>,
    listener: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(app) = app.upgrade() else { return };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(app, stream));
    }
}

async fn serve_conn(app: Arc<App>, mut client: TcpStream) {
    let start = Instant::now();
    app.metrics.conn_open();
    app.metrics.start();
    let mut failed_on: Option<String> = None;
    loop {
        let picked = match app.pool.pick(failed_on.as_deref()) {
            Some(p) => Some(p),
            None if failed_on.is_none() => app.hold_for_backend().await,
            None => None,
        };
        let Some(picked) = picked else {
            app.metrics.no_backend();
            break;
        };
        match super::connect::connect(picked.backend().addr(), app.cfg.timeouts.connect).await {
            Ok(mut upstream) => {
                let _ = upstream.set_nodelay(true);
                if let Err(e) = super::connect::detect_dead_peer(&upstream) {
                    tracing::debug!(app = %app.cfg.name, error = %e, "backend socket options not set");
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                break;
            }
            _ if failed_on.is_none() => failed_on = Some(picked.backend().id().to_owned()),
            _ => {
                app.metrics.upstream_error();
                break;
            }
        }
    }
    app.metrics.finish(start.elapsed());
    app.metrics.conn_close();
}

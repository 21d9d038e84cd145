//! Bodies at one byte a second (berth-testkit's [`HostileRegistry`]): a read timeout never
//! fires while bytes keep coming, so without the minimum speed (`RegistryConfig::min_speed`)
//! a pull of a trickled manifest or layer would take days. Here the window is 2 s and two
//! attempts are allowed: each pull must fail within a few windows, saying the registry is too
//! slow and naming the reference or blob, and store nothing. (The other lies of the hostile
//! registry are tested through the `berth` binary in tests/hardening_registry.rs.)

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use berth_agent::host::image_store::{ImageStore, NoProgress, PullOptions};
use berth_agent::host::registry::{MinSpeed, RegistryConfig, RetryPolicy};
use berth_agent::image::Reference;
use berth_testkit::{HostileRegistry, Misbehave};

const WINDOW: Duration = Duration::from_secs(2);

#[allow(
    clippy::disallowed_methods,
    reason = "the pull's duration is what is bounded"
)]
async fn slow_pull(how: Misbehave, names: &[&str]) {
    let reg = HostileRegistry::start(how.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let options = PullOptions {
        registry: RegistryConfig {
            insecure: vec![reg.addr().to_owned()],
            retry: RetryPolicy {
                attempts: 2,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
            min_speed: MinSpeed {
                bytes: 1024,
                window: WINDOW,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let reference: Reference = reg.reference().parse().unwrap();
    let start = Instant::now();
    let err = store
        .pull(&reference, &options, &NoProgress)
        .await
        .err()
        .unwrap_or_else(|| panic!("{how:?}: the pull succeeded"));
    let took = start.elapsed();
    let text = format!("{err:#}");
    let chain = {
        let mut s = text.clone();
        let mut src = std::error::Error::source(&err);
        while let Some(e) = src {
            s.push_str(&format!(": {e}"));
            src = e.source();
        }
        s
    };
    eprintln!(
        "{how:?}: failed in {took:?} after {} trickled bytes: {chain}",
        reg.flooded()
    );
    // Two attempts of one window each, plus connection setup and backoff.
    assert!(took < WINDOW * 4, "{how:?}: took {took:?}");
    assert!(took >= WINDOW, "{how:?}: failed before a window passed");
    assert!(chain.contains("too slow"), "{how:?}: {chain}");
    for name in names {
        let name = name
            .replace("{ref}", &reg.reference())
            .replace("{layer}", reg.layer_digest());
        assert!(chain.contains(&name), "{how:?}: {name:?} not in {chain}");
    }
    assert!(store.list().unwrap().is_empty(), "{how:?}: an image stored");
}

#[tokio::test]
async fn a_manifest_at_one_byte_a_second_is_cut_after_the_speed_window() {
    slow_pull(Misbehave::ManifestSlow, &["{ref}"]).await;
}

#[tokio::test]
async fn a_layer_at_one_byte_a_second_is_cut_after_the_speed_window() {
    slow_pull(Misbehave::BlobSlow, &["{layer}"]).await;
}

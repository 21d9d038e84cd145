//! The reconcile's `Images` adapter over the real image store and a real registry
//! (berth-testkit), and the same contract checked on the fake: `ensure` by digest pulls once,
//! then serves from the host even with the registry gone; a missing digest is `not found`
//! (the reconcile marks the revision failed and waits for a change).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use berth_agent::host::deploy_images::StoreImages;
use berth_agent::host::image_store::{ImageStore, NoProgress, PullOptions};
use berth_agent::host::registry::RegistryConfig;
use berth_agent::reconcile::fake::FakeImages;
use berth_agent::reconcile::traits::Images;
use berth_manifests::{ErrorKind, ImageRef};
use berth_testkit::Registry;

async fn contract(images: &impl Images, image: &ImageRef, digest: &str) {
    let first = images.ensure(image, digest).await.unwrap();
    assert_eq!(first.digest, digest);
    assert_eq!(first.reference, format!("{}@{digest}", image.name()));
    let again = images.ensure(image, digest).await.unwrap();
    assert_eq!(again, first, "idempotent");
}

#[tokio::test]
async fn fake_images_follow_the_contract() {
    let image: ImageRef = "registry.test/web:1".parse().unwrap();
    contract(
        &*FakeImages::new(),
        &image,
        &format!("sha256:{}", "a".repeat(64)),
    )
    .await;
}

#[tokio::test]
async fn store_images_pull_once_then_serve_without_the_registry() {
    let reg = Registry::start().expect("start docker-registry");
    reg.push_test_images(&["hello"]).expect("push test images");
    let options = PullOptions {
        registry: RegistryConfig {
            insecure: vec![reg.addr().to_owned()],
            ..Default::default()
        },
        ..Default::default()
    };
    let name = format!("{}/berth-test/hello", reg.addr());
    // The controller resolves the tag once; do the same with a scratch store.
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch = ImageStore::open(scratch_dir.path()).unwrap();
    let digest = scratch
        .pull(&name.parse().unwrap(), &options, &NoProgress)
        .await
        .unwrap()
        .digest()
        .to_string();

    let dir = tempfile::tempdir().unwrap();
    let images = StoreImages::new(ImageStore::open(dir.path()).unwrap(), options);
    let image: ImageRef = format!("{name}:latest").parse().unwrap();
    contract(&images, &image, &digest).await;

    let missing = format!("sha256:{}", "0".repeat(64));
    let err = images.ensure(&image, &missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
    assert!(!err.transient());

    drop(reg);
    let offline = images.ensure(&image, &digest).await.unwrap();
    assert_eq!(
        offline.digest, digest,
        "served from the host with the registry gone"
    );
}

//! The tag → digest resolver against a real Distribution registry (testkit): anonymous,
//! basic auth from credentials, unknown tags, and plain HTTP only for insecure registries.
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::collections::BTreeMap;
use std::process::Command;

use berth_controller::resolve::{Credential, DigestResolver, RegistryResolver, ResolveError};
use berth_manifests::ImageRef;
use berth_testkit::Registry;

/// The digest the registry itself reports for the image (skopeo, independent of our code).
fn skopeo_digest(addr: &str, name: &str, creds: Option<&str>) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd
        .arg(format!("docker://{addr}/berth-test/{name}:latest"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn resolves_a_tag_to_the_registrys_manifest_digest() {
    let registry = Registry::start().unwrap();
    registry.push_test_images(&["hello"]).unwrap();
    let addr = registry.addr().to_string();
    let resolver = RegistryResolver::new(vec![addr.clone()], BTreeMap::new()).unwrap();
    let image: ImageRef = format!("{addr}/berth-test/hello:latest").parse().unwrap();
    let digest = resolver.resolve(&image).await.unwrap();
    assert_eq!(digest, skopeo_digest(&addr, "hello", None));

    let missing: ImageRef = format!("{addr}/berth-test/hello:nope").parse().unwrap();
    let err = resolver.resolve(&missing).await.unwrap_err();
    assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");

    // not named insecure: https only, which the plain-HTTP registry cannot answer
    let strict = RegistryResolver::new(Vec::new(), BTreeMap::new()).unwrap();
    let err = strict.resolve(&image).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unavailable { .. }), "{err}");

    // docker.io names resolved at a mirror (never at Docker Hub)
    let mirrored = RegistryResolver::new(vec![addr.clone()], BTreeMap::new())
        .unwrap()
        .with_mirrors(BTreeMap::from([("docker.io".to_string(), addr.clone())]));
    let hub: ImageRef = "berth-test/hello".parse().unwrap();
    assert_eq!(hub.registry(), "docker.io");
    assert_eq!(mirrored.resolve(&hub).await.unwrap(), digest);
}

#[tokio::test]
async fn uses_basic_credentials_when_the_registry_asks() {
    let registry = Registry::start_with_basic_auth("berth", "s3cret").unwrap();
    registry.push_test_images(&["hello"]).unwrap();
    let addr = registry.addr().to_string();
    let image: ImageRef = format!("{addr}/berth-test/hello:latest").parse().unwrap();

    let anonymous = RegistryResolver::new(vec![addr.clone()], BTreeMap::new()).unwrap();
    let err = anonymous.resolve(&image).await.unwrap_err();
    assert!(matches!(err, ResolveError::Unauthorized { .. }), "{err}");

    let mut creds = BTreeMap::new();
    creds.insert(
        addr.clone(),
        Credential {
            username: "berth".into(),
            password: "s3cret".into(),
        },
    );
    let resolver = RegistryResolver::new(vec![addr.clone()], creds).unwrap();
    let digest = resolver.resolve(&image).await.unwrap();
    assert_eq!(digest, skopeo_digest(&addr, "hello", Some("berth:s3cret")));
}

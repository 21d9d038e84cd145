//! API tokens with roles against the real controller (embedded store, real git repository,
//! real HTTP server on a loopback port): a wrong token is refused (401), a token without the
//! route's role gets 403, a join token speaks for one host only (agent A reading or
//! reporting for B: 403), revoked tokens stop working, and secrets are stored hashed.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::sync::Arc;
use std::time::Duration;

use berth_controller::access::{TokenRequest, TokenRole};
use berth_controller::client::{Client, ClientError};
use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller};
use berth_testkit::{GitRemote, empty_report, registration};

fn status_of(err: ClientError) -> u16 {
    match err {
        ClientError::Api { status, .. } => status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_each_token_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    repo.push(
        "web.yaml",
        "app: web\nimage: busybox:1\nreplicas: 2\n",
        "add web",
    );

    let data = dir.path().join("data");
    let mut config = Config::new(
        data.clone(),
        repo.url(),
        "main".into(),
        Arc::new(FakeResolver::new()),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(3600);
    let handle = Controller::start(config).await.unwrap();
    let url = handle.url();
    let admin = Client::new(&url, handle.token()).unwrap();
    admin.sync().await.unwrap();
    let issue = |role: TokenRole, host: Option<&str>| {
        let admin = &admin;
        let req = TokenRequest {
            role,
            host: host.map(str::to_string),
        };
        async move { admin.create_token(&req).await.unwrap() }
    };
    let read = issue(TokenRole::Read, None).await;
    let deploy = issue(TokenRole::Deploy, None).await;
    let join_a = issue(TokenRole::Join, None).await;
    let join_b = issue(TokenRole::Join, Some("hb")).await;
    let as_ = |t: &str| Client::new(&url, t).unwrap();

    // a wrong token: 401, whatever the route
    let wrong = as_("bt.0123456789ab.nope");
    assert_eq!(status_of(wrong.status().await.unwrap_err()), 401);
    assert_eq!(status_of(as_("garbage").apps().await.unwrap_err()), 401);

    // read: reads only
    let reader = as_(&read.token);
    assert_eq!(reader.status().await.unwrap().apps.len(), 1);
    assert_eq!(reader.revisions("web").await.unwrap().len(), 1);
    let err = reader.sync().await.unwrap_err();
    assert!(err.to_string().contains("needs deploy"), "{err}");
    assert_eq!(status_of(err), 403);
    assert_eq!(
        status_of(reader.rollback("web", Some(1)).await.unwrap_err()),
        403
    );
    assert_eq!(
        status_of(reader.register(&registration("ha")).await.unwrap_err()),
        403
    );
    // deploy: sync and rollback, no tokens
    let deployer = as_(&deploy.token);
    deployer.sync().await.unwrap();
    deployer.rollback("web", Some(1)).await.unwrap();
    let err = deployer
        .create_token(&TokenRequest {
            role: TokenRole::Admin,
            host: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 403);
    assert_eq!(status_of(deployer.tokens().await.unwrap_err()), 403);

    // join A: unbound until its first registration binds it to ha
    let agent_a = as_(&join_a.token);
    let err = agent_a
        .assignment("ha", None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 403, "an unbound join token reads nothing");
    agent_a.register(&registration("ha")).await.unwrap();
    let assignment = agent_a
        .assignment("ha", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(assignment.host, "ha");
    agent_a.report(&empty_report("ha")).await.unwrap();
    assert_eq!(status_of(agent_a.status().await.unwrap_err()), 403);
    // join B was bound to hb at creation; it cannot register as ha
    let agent_b = as_(&join_b.token);
    let err = agent_b.register(&registration("ha")).await.unwrap_err();
    assert!(err.to_string().contains("hb"), "{err}");
    agent_b.register(&registration("hb")).await.unwrap();
    // agent A reading or reporting for B: 403; re-registering as B: 403
    let err = agent_a
        .assignment("hb", None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not hb"), "{err}");
    assert_eq!(status_of(err), 403);
    assert_eq!(
        status_of(agent_a.report(&empty_report("hb")).await.unwrap_err()),
        403
    );
    assert_eq!(
        status_of(agent_a.register(&registration("hb")).await.unwrap_err()),
        403
    );
    // the controller's own token (admin) may act for any host
    admin.assignment("hb", None, Duration::ZERO).await.unwrap();

    // the list shows roles and bindings, never secrets; revoked tokens stop working
    let listed = admin.tokens().await.unwrap();
    assert_eq!(listed.len(), 4);
    let a = listed.iter().find(|t| t.id == join_a.id).unwrap();
    assert_eq!(a.host.as_deref(), Some("ha"));
    admin.revoke_token(&read.id).await.unwrap();
    assert_eq!(status_of(reader.status().await.unwrap_err()), 401);
    // a token request naming a host for a non-join role is refused, and changes nothing
    let err = admin
        .create_token(&TokenRequest {
            role: TokenRole::Read,
            host: Some("ha".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(err), 400);
    assert_eq!(admin.tokens().await.unwrap().len(), 3);

    handle.shutdown().await.unwrap();
    // secrets are stored hashed: no token's secret is in the store file
    let bytes = std::fs::read(data.join("controller/store.redb")).unwrap();
    for t in [&deploy, &join_a, &join_b] {
        let secret = t.token.rsplit('.').next().unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "token {} stored in clear",
            t.id
        );
    }
}

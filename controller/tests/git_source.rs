//! The git source against real repositories: a local bare repo that the test pushes to with
//! the `git` CLI, read through `file://` and plain paths.
#![allow(clippy::unwrap_used, reason = "test helpers")]

use berth_controller::git::{GitError, GitSource, TreeLimits, is_manifest_path};
use berth_testkit::{GitRemote, git};

/// A bare "remote", a work clone that pushes to it, and the source's mirror dir.
struct Repos {
    _dir: tempfile::TempDir,
    git: GitRemote,
    bare: std::path::PathBuf,
    work: std::path::PathBuf,
    mirror: std::path::PathBuf,
}

impl Repos {
    fn new() -> Repos {
        let dir = tempfile::tempdir().unwrap();
        let git = GitRemote::init(dir.path());
        Repos {
            bare: git.bare().to_path_buf(),
            work: git.work().to_path_buf(),
            mirror: dir.path().join("mirror"),
            git,
            _dir: dir,
        }
    }

    fn write(&self, path: &str, text: &str) {
        let full = self.work.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    /// Commits what the work repository holds now and pushes it.
    fn commit_and_push(&self, message: &str) -> String {
        self.git.commit(&[], message)
    }

    fn source(&self) -> GitSource {
        let url = self.git.url();
        GitSource::new(&url, "main", &self.mirror).unwrap()
    }
}

#[test]
fn fetch_reads_only_manifest_files_of_the_head_commit() {
    let repos = Repos::new();
    repos.write("apps/web.yaml", "app: web\n");
    repos.write("apps/nested/deep/worker.yml", "app: worker\n");
    repos.write("README.md", "# not a manifest\n");
    let head = repos.commit_and_push("add web and worker");

    let source = repos.source();
    let commit = source.fetch().unwrap();
    assert_eq!(commit.as_str(), head);
    let snap = source.snapshot(&commit).unwrap();
    assert_eq!(snap.commit.subject, "add web and worker");
    assert_eq!(snap.commit.author, "Test <test@example.com>");
    let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["apps/nested/deep/worker.yml", "apps/web.yaml"]);
    assert_eq!(snap.files[1].bytes, b"app: web\n");
}

#[test]
fn fetch_follows_new_commits_and_force_pushes() {
    let repos = Repos::new();
    repos.write("a.yaml", "app: a\n");
    let first = repos.commit_and_push("first");
    let source = repos.source();
    assert_eq!(source.fetch().unwrap().as_str(), first);

    repos.write("a.yaml", "app: a2\n");
    let second = repos.commit_and_push("second");
    assert_eq!(source.fetch().unwrap().as_str(), second);

    // rewrite history: reset to the first commit and force-push a different one
    git(&repos.work, &["reset", "--quiet", "--hard", &first]);
    repos.write("b.yaml", "app: b\n");
    let rewritten = repos.commit_and_push("rewritten");
    let commit = source.fetch().unwrap();
    assert_eq!(commit.as_str(), rewritten);
    let snap = source.snapshot(&commit).unwrap();
    let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.yaml", "b.yaml"]);
    // the older commit stays readable from the mirror (revisions name their commit)
    let old = berth_controller::git::CommitId::parse(&second).unwrap();
    assert_eq!(source.snapshot(&old).unwrap().files[0].bytes, b"app: a2\n");
}

#[test]
fn a_symlinked_manifest_is_refused_and_nothing_outside_is_read() {
    let repos = Repos::new();
    repos.write("ok.yaml", "app: ok\n");
    std::os::unix::fs::symlink("/etc/passwd", repos.work.join("evil.yaml")).unwrap();
    let commit_id = repos.commit_and_push("symlink to /etc/passwd");
    let source = repos.source();
    let commit = source.fetch().unwrap();
    assert_eq!(commit.as_str(), commit_id);
    let err = source.snapshot(&commit).unwrap_err();
    assert!(
        matches!(err, GitError::Tree { ref path, .. } if path == "evil.yaml"),
        "{err}"
    );
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn size_and_count_limits_refuse_the_commit() {
    let repos = Repos::new();
    repos.write("big.yaml", &"x".repeat(5000));
    repos.write("small.yaml", "app: s\n");
    repos.commit_and_push("big");
    let limits = TreeLimits {
        max_file_bytes: 4096,
        max_total_bytes: 1 << 20,
        max_files: 10,
    };
    let source = repos.source().with_limits(limits);
    let commit = source.fetch().unwrap();
    let err = source.snapshot(&commit).unwrap_err();
    assert!(err.to_string().contains("big.yaml"), "{err}");

    let limits = TreeLimits {
        max_file_bytes: 1 << 20,
        max_total_bytes: 1 << 20,
        max_files: 1,
    };
    let err = repos
        .source()
        .with_limits(limits)
        .snapshot(&commit)
        .unwrap_err();
    assert!(err.to_string().contains("over the limit of 1"), "{err}");
}

#[test]
fn a_missing_branch_and_a_missing_repo_give_clear_errors() {
    let repos = Repos::new();
    repos.write("a.yaml", "app: a\n");
    repos.commit_and_push("first");
    let url = format!("file://{}", repos.bare.display());
    let source = GitSource::new(&url, "nope", &repos.mirror).unwrap();
    let err = source.fetch().unwrap_err();
    assert!(matches!(err, GitError::BranchNotFound { .. }), "{err}");

    let gone = repos.bare.with_file_name("gone.git");
    let source = GitSource::new(gone.to_str().unwrap(), "main", &repos.mirror).unwrap();
    let err = source.fetch().unwrap_err();
    assert!(err.to_string().contains("gone.git"), "{err}");
}

#[test]
fn remote_helper_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = GitSource::new("ext::sh -c touch% /tmp/pwned", "main", dir.path()).unwrap_err();
    assert!(matches!(err, GitError::BadUrl { .. }));
    assert!(GitSource::new("--upload-pack=touch /tmp/x", "main", dir.path()).is_err());
}

#[test]
fn manifest_paths_are_yaml_files() {
    assert!(is_manifest_path("a/b.yaml"));
    assert!(is_manifest_path("B.YML"));
    assert!(!is_manifest_path("a.json"));
    assert!(!is_manifest_path("yaml"));
}

//! Revision decisions as pure functions: what a valid commit does to each app's history,
//! what a host's rollout report does, what `berth rollback` does. They take the stored
//! history and `now` and return the new history; the caller persists it. No I/O, no clock.
//!
//! Rules (DESIGN.md §4):
//! - A new spec hash (compared with the app's newest revision) makes revision n+1, the target;
//!   the previous target is `superseded` (a `failed` one stays failed); a pin is cleared.
//! - The same spec hash changes nothing: a `failed` newest revision is not retried.
//! - A rollout reported `rolled_back`/`failed` for the target marks it `failed` and moves the
//!   target back to the fallback (the last good revision).
//! - A rollback pins the app to an existing, not failed revision until the next spec change.

use std::collections::BTreeMap;

use berth_manifests::App;
use berth_manifests::wire::{AppReport, RevisionState, RolloutState};

use crate::model::{AppHistory, AppRecord, StoredRevision};

/// The revision identity of a normalized app (`App::revision`: sha256 of its canonical
/// JSON), as stored in revisions.
pub fn spec_hash(app: &App) -> String {
    app.revision().to_string()
}

/// What a valid commit asks for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction {
    /// Same spec as the newest revision, app still in git: nothing to do.
    Unchanged,
    /// Same spec as the newest revision, but git had dropped the app: put it back.
    Restore,
    /// A new spec: make this revision number (after resolving the image digest).
    NewRevision {
        /// The number to give it.
        number: u64,
        /// Its spec hash.
        spec_hash: String,
    },
}

/// Compares a valid app from git with its stored history.
pub fn sync_action(history: Option<&AppHistory>, app: &App) -> SyncAction {
    let hash = spec_hash(app);
    match history.and_then(|h| h.newest().map(|n| (h, n))) {
        Some((h, newest)) if newest.spec_hash == hash => {
            if h.record.in_git {
                SyncAction::Unchanged
            } else {
                SyncAction::Restore
            }
        }
        Some((_, newest)) => SyncAction::NewRevision {
            number: newest.number + 1,
            spec_hash: hash,
        },
        None => SyncAction::NewRevision {
            number: 1,
            spec_hash: hash,
        },
    }
}

/// Per app in the store or in the commit, what a valid commit does.
pub fn plan_sync(
    histories: &BTreeMap<String, AppHistory>,
    apps: &[App],
) -> (Vec<(App, SyncAction)>, Vec<String>) {
    let actions: Vec<(App, SyncAction)> = apps
        .iter()
        .map(|app| (app.clone(), sync_action(histories.get(&app.app), app)))
        .collect();
    let removed = histories
        .iter()
        .filter(|(name, h)| h.record.in_git && !apps.iter().any(|a| &&a.app == name))
        .map(|(name, _)| name.clone())
        .collect();
    (actions, removed)
}

/// Adds `revision` (the number [`sync_action`] chose) as the app's new target: the previous
/// target is superseded unless it failed, and any pin is cleared.
pub fn add_revision(history: Option<AppHistory>, revision: StoredRevision) -> AppHistory {
    let mut history = history.unwrap_or_else(|| AppHistory {
        record: AppRecord {
            name: revision.app.clone(),
            target: revision.number,
            pinned: false,
            in_git: true,
            last_error: None,
        },
        revisions: Vec::new(),
    });
    for old in &mut history.revisions {
        if old.state == RevisionState::Active {
            old.state = RevisionState::Superseded;
        }
    }
    history.record.target = revision.number;
    history.record.pinned = false;
    history.record.in_git = true;
    history.record.last_error = None;
    let mut revision = revision;
    revision.state = RevisionState::Active;
    history.revisions.push(revision);
    history.revisions.sort_by_key(|r| r.number);
    history
}

/// Marks the app as present in git again (same spec as before its removal).
pub fn restore(mut history: AppHistory) -> AppHistory {
    history.record.in_git = true;
    history
}

/// Marks the app as gone from git: it leaves every host; its history stays.
pub fn remove(mut history: AppHistory) -> AppHistory {
    history.record.in_git = false;
    history.record.pinned = false;
    history
}

/// The last good revision below the target: the newest one a host reported complete, else
/// the newest one that did not fail. `None` for an app's first revision.
pub fn fallback(history: &AppHistory) -> Option<&StoredRevision> {
    let below = || {
        history
            .revisions
            .iter()
            .rev()
            .filter(|r| r.number < history.record.target && r.state != RevisionState::Failed)
    };
    below()
        .find(|r| r.completed_ms.is_some())
        .or_else(|| below().next())
}

/// What a host's report for one app changed, for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Nothing new.
    Nothing,
    /// The target's rollout completed on a host for the first time.
    Completed {
        /// The revision.
        revision: u64,
    },
    /// The target failed: marked failed, the target moved to `to` (when there was one).
    Failed {
        /// The failed revision.
        revision: u64,
        /// The new target.
        to: Option<u64>,
        /// Why.
        reason: String,
    },
}

/// Applies one host's rollout report for the app. Reports about other revisions than the
/// target (stale, or from a host still catching up) change nothing.
pub fn apply_report(
    mut history: AppHistory,
    report: &AppReport,
    now_ms: u64,
) -> (AppHistory, ReportOutcome) {
    let target = history.record.target;
    if report.target != target {
        return (history, ReportOutcome::Nothing);
    }
    let reason = match &report.rollout {
        RolloutState::Progressing => return (history, ReportOutcome::Nothing),
        RolloutState::Complete => {
            let Some(rev) = history.revisions.iter_mut().find(|r| r.number == target) else {
                return (history, ReportOutcome::Nothing);
            };
            if rev.completed_ms.is_some() || report.ready < report.desired {
                return (history, ReportOutcome::Nothing);
            }
            rev.completed_ms = Some(now_ms);
            return (history, ReportOutcome::Completed { revision: target });
        }
        RolloutState::RolledBack { reason, .. } | RolloutState::Failed { reason } => reason.clone(),
    };
    if history
        .revision(target)
        .is_none_or(|r| r.state == RevisionState::Failed)
    {
        return (history, ReportOutcome::Nothing);
    }
    let to = fallback(&history).map(|r| r.number);
    for rev in &mut history.revisions {
        if rev.number == target {
            rev.state = RevisionState::Failed;
            rev.failure = Some(reason.clone());
        } else if Some(rev.number) == to {
            rev.state = RevisionState::Active;
        }
    }
    if let Some(to) = to {
        history.record.target = to;
    }
    history.record.pinned = false;
    history.record.last_error = Some(format!("revision {target} failed: {reason}"));
    (
        history,
        ReportOutcome::Failed {
            revision: target,
            to,
            reason,
        },
    )
}

/// Why a rollback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// No such revision.
    #[error("app {app} has no revision {number}; see `berth revisions {app}`")]
    NoSuchRevision {
        /// The app.
        app: String,
        /// The number asked for.
        number: u64,
    },
    /// Nothing to roll back to.
    #[error("app {app} has no earlier good revision to roll back to")]
    NothingToRollBackTo {
        /// The app.
        app: String,
    },
    /// The revision failed its rollout.
    #[error("revision {number} of app {app} failed ({reason}); pick another one")]
    RevisionFailed {
        /// The app.
        app: String,
        /// The revision.
        number: u64,
        /// Why it failed.
        reason: String,
    },
    /// The app is no longer in git.
    #[error("app {app} is no longer in the manifests; add it back to run it")]
    NotInGit {
        /// The app.
        app: String,
    },
}

impl RollbackError {
    /// The error's class.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            RollbackError::NoSuchRevision { .. } => crate::ErrorKind::NotFound,
            _ => crate::ErrorKind::Conflict,
        }
    }
}

/// Pins the app to revision `to` (default: the fallback of the current target).
pub fn rollback(mut history: AppHistory, to: Option<u64>) -> Result<AppHistory, RollbackError> {
    let app = history.record.name.clone();
    if !history.record.in_git {
        return Err(RollbackError::NotInGit { app });
    }
    let number = match to {
        Some(n) => n,
        None => {
            fallback(&history)
                .ok_or_else(|| RollbackError::NothingToRollBackTo { app: app.clone() })?
                .number
        }
    };
    let rev = history
        .revision(number)
        .ok_or_else(|| RollbackError::NoSuchRevision {
            app: app.clone(),
            number,
        })?;
    if rev.state == RevisionState::Failed {
        return Err(RollbackError::RevisionFailed {
            app,
            number,
            reason: rev.failure.clone().unwrap_or_default(),
        });
    }
    for rev in &mut history.revisions {
        if rev.number == number {
            rev.state = RevisionState::Active;
        } else if rev.state == RevisionState::Active {
            rev.state = RevisionState::Superseded;
        }
    }
    history.record.target = number;
    history.record.pinned = true;
    Ok(history)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use berth_manifests::{Source, load};

    fn app(src: &str) -> App {
        load(&[Source {
            path: "a.yaml",
            bytes: src.as_bytes(),
        }])
        .unwrap()
        .manifests
        .remove(0)
        .app
    }

    fn rev(app: &App, number: u64, now: u64) -> StoredRevision {
        StoredRevision {
            app: app.app.clone(),
            number,
            spec: app.clone(),
            spec_hash: spec_hash(app),
            image_digest: format!("sha256:{}", "a".repeat(64)),
            commit: "c".repeat(40),
            cause: format!("commit {number}"),
            created_ms: now,
            state: RevisionState::Active,
            failure: None,
            completed_ms: None,
        }
    }

    fn history_of(specs: &[&str]) -> AppHistory {
        let mut h = None;
        for (i, s) in specs.iter().enumerate() {
            let a = app(s);
            h = Some(add_revision(h, rev(&a, i as u64 + 1, i as u64)));
        }
        h.unwrap()
    }

    fn report(target: u64, rollout: RolloutState) -> AppReport {
        AppReport {
            requests_total: None,
            app: "web".into(),
            target,
            desired: 1,
            ready: 1,
            rollout,
        }
    }

    const V1: &str = "app: web\nimage: busybox:1\n";
    const V2: &str = "app: web\nimage: busybox:2\n";
    const V3: &str = "app: web\nimage: busybox:3\n";

    #[test]
    fn spec_hash_is_the_manifests_revision() {
        let h = spec_hash(&app(V1));
        assert!(h.starts_with("sha256:") && h.len() == 71, "{h}");
        assert_eq!(
            h,
            spec_hash(&app("image: busybox:1\napp: web\nreplicas: 1\n"))
        );
    }

    #[test]
    fn first_commit_makes_revision_one() {
        assert_eq!(
            sync_action(None, &app(V1)),
            SyncAction::NewRevision {
                number: 1,
                spec_hash: spec_hash(&app(V1))
            }
        );
    }

    #[test]
    fn same_spec_changes_nothing_and_new_spec_makes_next_number() {
        let h = history_of(&[V1]);
        assert_eq!(sync_action(Some(&h), &app(V1)), SyncAction::Unchanged);
        assert!(matches!(
            sync_action(Some(&h), &app(V2)),
            SyncAction::NewRevision { number: 2, .. }
        ));
    }

    #[test]
    fn new_revision_supersedes_the_previous_and_keeps_history() {
        let h = history_of(&[V1, V2]);
        assert_eq!(h.record.target, 2);
        let states: Vec<_> = h.revisions.iter().map(|r| r.state).collect();
        assert_eq!(states, [RevisionState::Superseded, RevisionState::Active]);
    }

    #[test]
    fn removed_apps_are_listed_and_restored_without_a_new_revision() {
        let h = history_of(&[V1]);
        let mut all = BTreeMap::new();
        all.insert("web".to_string(), h.clone());
        let (actions, removed) = plan_sync(&all, &[]);
        assert!(actions.is_empty());
        assert_eq!(removed, ["web"]);
        let gone = remove(h);
        assert_eq!(sync_action(Some(&gone), &app(V1)), SyncAction::Restore);
        assert_eq!(gone.revisions.len(), 1, "history kept");
    }

    #[test]
    fn rolled_back_report_fails_target_and_returns_to_previous() {
        let h = history_of(&[V1, V2]);
        let (h, out) = apply_report(
            h,
            &report(
                2,
                RolloutState::RolledBack {
                    to: 1,
                    reason: "probe failed".into(),
                },
            ),
            10,
        );
        assert_eq!(
            out,
            ReportOutcome::Failed {
                revision: 2,
                to: Some(1),
                reason: "probe failed".into()
            }
        );
        assert_eq!(h.record.target, 1);
        assert_eq!(h.revision(2).unwrap().state, RevisionState::Failed);
        assert_eq!(h.revision(1).unwrap().state, RevisionState::Active);
        assert!(
            h.record
                .last_error
                .as_deref()
                .unwrap()
                .contains("probe failed")
        );
        // the same failed spec from git is not retried
        assert_eq!(sync_action(Some(&h), &app(V2)), SyncAction::Unchanged);
        // a changed spec is
        assert!(matches!(
            sync_action(Some(&h), &app(V3)),
            SyncAction::NewRevision { number: 3, .. }
        ));
    }

    #[test]
    fn reports_about_other_revisions_change_nothing() {
        let h = history_of(&[V1, V2]);
        let (after, out) = apply_report(
            h.clone(),
            &report(1, RolloutState::Failed { reason: "x".into() }),
            10,
        );
        assert_eq!(out, ReportOutcome::Nothing);
        assert_eq!(after, h);
    }

    #[test]
    fn fallback_prefers_the_newest_completed_revision() {
        let h = history_of(&[V1, V2, V3]);
        assert_eq!(fallback(&h).unwrap().number, 2);
        let mut h = h;
        h.revisions[0].completed_ms = Some(5);
        assert_eq!(fallback(&h).unwrap().number, 1);
        assert!(fallback(&history_of(&[V1])).is_none());
    }

    #[test]
    fn complete_report_marks_revision_good_once() {
        let h = history_of(&[V1]);
        let (h, out) = apply_report(h, &report(1, RolloutState::Complete), 7);
        assert_eq!(out, ReportOutcome::Completed { revision: 1 });
        assert_eq!(h.revision(1).unwrap().completed_ms, Some(7));
        let (_, out) = apply_report(h, &report(1, RolloutState::Complete), 9);
        assert_eq!(out, ReportOutcome::Nothing);
    }

    #[test]
    fn rollback_pins_and_a_new_spec_unpins() {
        let h = history_of(&[V1, V2]);
        let h = rollback(h, Some(1)).unwrap();
        assert!(h.record.pinned);
        assert_eq!(h.record.target, 1);
        assert_eq!(h.revision(1).unwrap().state, RevisionState::Active);
        assert_eq!(h.revision(2).unwrap().state, RevisionState::Superseded);
        // an unrelated commit keeps the pin
        assert_eq!(sync_action(Some(&h), &app(V2)), SyncAction::Unchanged);
        let h = add_revision(Some(h), rev(&app(V3), 3, 20));
        assert!(!h.record.pinned);
        assert_eq!(h.record.target, 3);
    }

    #[test]
    fn rollback_defaults_to_the_previous_good_revision() {
        let h = rollback(history_of(&[V1, V2]), None).unwrap();
        assert_eq!(h.record.target, 1);
        assert!(matches!(
            rollback(history_of(&[V1]), None),
            Err(RollbackError::NothingToRollBackTo { .. })
        ));
        assert!(matches!(
            rollback(history_of(&[V1]), Some(9)),
            Err(RollbackError::NoSuchRevision { number: 9, .. })
        ));
    }

    #[test]
    fn rollback_refuses_a_failed_revision() {
        let h = history_of(&[V1, V2]);
        let (h, _) = apply_report(
            h,
            &report(
                2,
                RolloutState::Failed {
                    reason: "oom".into(),
                },
            ),
            1,
        );
        assert!(matches!(
            rollback(h, Some(2)),
            Err(RollbackError::RevisionFailed { number: 2, .. })
        ));
    }
}

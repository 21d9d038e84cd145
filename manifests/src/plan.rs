//! The plan: a pure diff of two app sets (old state, new manifests). Apps added, removed,
//! changed (with every changed field as a dotted path such as `resources.memory` and its old
//! and new value), and unchanged. Every field of the normalized spec is part of the revision
//! hash, so every change makes a new revision; the per-field flag says so explicitly, so that
//! fields that do not (none yet) can be added later without changing the output's shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::revision::Revision;

/// What happens to one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// New app.
    Add,
    /// Spec changed.
    Change,
    /// App no longer in the manifests.
    Remove,
    /// Same spec.
    Unchanged,
}

impl Action {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Change => "change",
            Self::Remove => "remove",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One changed field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path, e.g. `resources.memory`, `env.LOG_LEVEL`.
    pub field: String,
    /// Old value (JSON of the normalized spec; `null` when absent).
    pub old: Value,
    /// New value.
    pub new: Value,
    /// Whether this change alone makes a new revision.
    pub new_revision: bool,
}

/// The plan for one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPlan {
    /// App name.
    pub app: String,
    /// What happens.
    pub action: Action,
    /// Revision before (absent for added apps).
    pub old_revision: Option<Revision>,
    /// Revision after (absent for removed apps).
    pub new_revision: Option<Revision>,
    /// Whether the app gets a new revision.
    pub makes_revision: bool,
    /// Changed fields (for `change` only).
    pub fields: Vec<FieldChange>,
}

/// Counts per action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Apps added.
    pub add: usize,
    /// Apps changed.
    pub change: usize,
    /// Apps removed.
    pub remove: usize,
    /// Apps unchanged.
    pub unchanged: usize,
}

/// The whole plan, apps sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Counts.
    pub summary: Summary,
    /// Per app.
    pub apps: Vec<AppPlan>,
}

impl Plan {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.summary.add + self.summary.change + self.summary.remove == 0
    }
}

/// Diffs `old` (the current state) against `new` (the manifests).
pub fn plan<'a>(
    old: impl IntoIterator<Item = &'a App>,
    new: impl IntoIterator<Item = &'a App>,
) -> Plan {
    let old: BTreeMap<&str, &App> = old.into_iter().map(|a| (a.app.as_str(), a)).collect();
    let new: BTreeMap<&str, &App> = new.into_iter().map(|a| (a.app.as_str(), a)).collect();
    let mut names: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    let mut summary = Summary::default();
    let mut apps = Vec::new();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        let old_revision = o.map(|a| a.revision());
        let new_revision = n.map(|a| a.revision());
        let (action, fields) = match (o, n) {
            (None, Some(_)) => (Action::Add, Vec::new()),
            (Some(_), None) => (Action::Remove, Vec::new()),
            (Some(o), Some(n)) => {
                let fields = diff_apps(o, n);
                if fields.is_empty() && old_revision == new_revision {
                    (Action::Unchanged, fields)
                } else {
                    (Action::Change, fields)
                }
            }
            (None, None) => continue,
        };
        match action {
            Action::Add => summary.add += 1,
            Action::Change => summary.change += 1,
            Action::Remove => summary.remove += 1,
            Action::Unchanged => summary.unchanged += 1,
        }
        apps.push(AppPlan {
            app: name.to_owned(),
            action,
            makes_revision: matches!(action, Action::Add) || fields.iter().any(|f| f.new_revision),
            old_revision,
            new_revision,
            fields,
        });
    }
    Plan { summary, apps }
}

fn diff_apps(old: &App, new: &App) -> Vec<FieldChange> {
    let (Ok(o), Ok(n)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        // Cannot happen (see `App::revision`); report the app as changed as a whole.
        return vec![FieldChange {
            field: "(spec)".to_owned(),
            old: Value::Null,
            new: Value::Null,
            new_revision: true,
        }];
    };
    let mut out = Vec::new();
    diff_values("", &o, &n, &mut out);
    out
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    if old == new {
        return;
    }
    if let (Value::Object(o), Value::Object(n)) = (old, new) {
        let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            diff_values(
                &child,
                o.get(k).unwrap_or(&Value::Null),
                n.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    out.push(FieldChange {
        field: path.to_owned(),
        old: old.clone(),
        new: new.clone(),
        // Every field of the normalized spec is hashed into the revision.
        new_revision: true,
    });
}

/// A value for a table cell: strings bare, absent as `-`, the rest as compact JSON.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Source, load};

    fn apps(src: &str) -> Vec<App> {
        load(&[Source {
            path: "a.yaml",
            bytes: src.as_bytes(),
        }])
        .unwrap()
        .manifests
        .into_iter()
        .map(|m| m.app)
        .collect()
    }

    #[test]
    fn plan_lists_added_removed_changed_and_unchanged_apps() {
        let old =
            apps("app: web\nimage: web:1\n---\napp: gone\nimage: x\n---\napp: same\nimage: s\n");
        let new = apps(
            "app: web\nimage: web:2\nresources: { memory: 512Mi }\nenv: { A: b }\n---\napp: same\nimage: s\n---\napp: fresh\nimage: f\n",
        );
        let p = plan(&old, &new);
        assert_eq!(
            p.summary,
            Summary {
                add: 1,
                change: 1,
                remove: 1,
                unchanged: 1
            }
        );
        let actions: Vec<(&str, Action)> =
            p.apps.iter().map(|a| (a.app.as_str(), a.action)).collect();
        assert_eq!(
            actions,
            [
                ("fresh", Action::Add),
                ("gone", Action::Remove),
                ("same", Action::Unchanged),
                ("web", Action::Change)
            ]
        );
        let web = &p.apps[3];
        let fields: Vec<(&str, String, String)> = web
            .fields
            .iter()
            .map(|f| {
                (
                    f.field.as_str(),
                    display_value(&f.old),
                    display_value(&f.new),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("env.A", "-".to_owned(), "b".to_owned()),
                (
                    "image",
                    "docker.io/library/web:1".to_owned(),
                    "docker.io/library/web:2".to_owned()
                ),
                ("resources.memory", "256Mi".to_owned(), "512Mi".to_owned()),
            ]
        );
        assert!(web.makes_revision && web.fields.iter().all(|f| f.new_revision));
        assert_ne!(web.old_revision, web.new_revision);
        assert!(!p.apps[2].makes_revision);
    }

    #[test]
    fn an_empty_plan_changes_nothing() {
        let a = apps("app: web\nimage: web:1\n");
        assert!(plan(&a, &a).is_empty());
    }

    #[test]
    fn a_whole_section_appearing_is_one_change() {
        let old = apps("app: web\nimage: w\nport: 80\n");
        let new = apps("app: web\nimage: w\nport: 80\nexpose: { port: 8000 }\n");
        let p = plan(&old, &new);
        assert_eq!(p.apps[0].fields.len(), 1);
        assert_eq!(p.apps[0].fields[0].field, "expose");
        assert_eq!(display_value(&p.apps[0].fields[0].new), r#"{"port":8000}"#);
    }
}

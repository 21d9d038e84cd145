//! Resolves `--user` (`uid`, `name`, `uid:gid`, `name:group`) to numeric ids from the
//! contents of the container's `/etc/passwd` and `/etc/group`, which the caller reads (from
//! inside the container's root) and passes in.

use crate::runtime::RuntimeError;

/// The ids a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: every group of `/etc/group` that lists the user by name.
    pub groups: Vec<u32>,
    /// The user's home directory from `/etc/passwd` (`/` when unknown): becomes `HOME`.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 6 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (empty means root) against the files' contents (`None` when the file is
/// missing: numeric ids still work, names do not).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Ids, RuntimeError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| RuntimeError::UnknownUser {
                    what: "user",
                    name: user_part.to_string(),
                    file: "/etc/passwd",
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part.parse().unwrap_or(0),
    };
    let gid = match group_part {
        None | Some("") => entry.as_ref().map(|e| e.gid).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| RuntimeError::UnknownUser {
                    what: "group",
                    name: g.to_string(),
                    file: "/etc/group",
                })?,
        },
    };
    let groups = match &entry {
        Some(e) => group_entries(group)
            .filter(|(_, _, members)| members.contains(&e.name))
            .map(|(_, gid, _)| gid)
            .collect(),
        None => Vec::new(),
    };
    let home = entry
        .as_ref()
        .map(|e| e.home.to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(Ids {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\n";

    #[test]
    fn names_resolve_from_the_container_files() {
        let ids = resolve("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            (ids.uid, ids.gid, ids.groups, ids.home.as_str()),
            (1000, 1000, vec![10], "/home/app")
        );
        let ids = resolve("app:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 10));
    }

    #[test]
    fn numeric_ids_need_no_files() {
        let ids = resolve("1234:55", None, None).unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (1234, 55, "/"));
        assert_eq!(resolve("", None, None).unwrap().uid, 0);
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = resolve("nobody", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("no user named \"nobody\""),
            "{err}"
        );
        assert!(resolve("app:nogroup", Some(PASSWD), Some(GROUP)).is_err());
    }
}

//! Rolling updates, pure: how many new instances to start and which old ones to stop so that a
//! revision replaces another within `max_surge` extra instances while at least
//! `desired - max_unavailable` instances stay ready; and when a rollout has failed (deadline,
//! crash loop) so the planner rolls back. No clock, no I/O: the planner passes what it sees.
//!
//! One call decides one reconcile's moves; called again with the new observation it makes the
//! next, so an interrupted rollout (agent restart) continues from what runs.
//!
//! Stopping an old instance means: out of rotation first (the traffic hook's `drain`), then its
//! stop signal, then SIGKILL after its grace; the planner emits those steps.

use berth_manifests::app::Update;

/// An instance as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Container id.
    pub id: String,
    /// Running and passing its readiness probe.
    pub ready: bool,
    /// When it started (Unix ms); the newest extra is stopped first.
    pub started_at_ms: u64,
}

/// One reconcile's moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// New instances of the target to start.
    pub start: u32,
    /// Instances to stop (old revision, or extras of the target).
    pub stop: Vec<String>,
}

/// The surge actually used: `max_surge`, but at least 1 when `max_unavailable` is 0 (else no
/// rollout could ever move).
pub fn effective_surge(update: &Update) -> u32 {
    if update.max_unavailable == 0 {
        update.max_surge.max(1)
    } else {
        update.max_surge
    }
}

/// Decides the moves that bring `new` (instances of the target, live or restarting) and `old`
/// (instances of any other revision) toward `desired` instances of the target.
pub fn moves(desired: u32, update: &Update, new: &[Member], old: &[Member]) -> Moves {
    let surge = effective_surge(update);
    let floor = desired.saturating_sub(update.max_unavailable);
    let ready_new = count(new.iter().filter(|m| m.ready));
    let mut stop = Vec::new();

    // Old instances that are not ready serve nobody: they go at once.
    let (old_ready, old_unready): (Vec<&Member>, Vec<&Member>) = old.iter().partition(|m| m.ready);
    stop.extend(old_unready.iter().map(|m| m.id.clone()));

    // Ready old instances go while enough stay ready; oldest first.
    let mut old_ready = old_ready;
    old_ready.sort_by_key(|m| (m.started_at_ms, m.id.clone()));
    let mut available = ready_new.saturating_add(count(old_ready.iter()));
    let mut old_left = count(old_ready.iter());
    for m in &old_ready {
        // All new ones ready: the old ones are done. Else only above the floor.
        if ready_new >= desired || available.saturating_sub(1) >= floor {
            stop.push(m.id.clone());
            available = available.saturating_sub(1);
            old_left = old_left.saturating_sub(1);
        }
    }

    // Extras of the target (scale down, or a duplicate after a crash): not ready first, then
    // the newest.
    let new_count = count(new.iter());
    if new_count > desired {
        let mut extras: Vec<&Member> = new.iter().collect();
        extras.sort_by_key(|m| (m.ready, std::cmp::Reverse(m.started_at_ms)));
        let surplus = usize::try_from(new_count - desired).unwrap_or(usize::MAX);
        stop.extend(extras.iter().take(surplus).map(|m| m.id.clone()));
    }

    // Starts, within the surge budget counted after this round's stops.
    let live_after = new_count.min(desired).saturating_add(old_left);
    let budget = desired.saturating_add(surge).saturating_sub(live_after);
    let missing = desired.saturating_sub(new_count);
    Moves {
        start: missing.min(budget),
        stop,
    }
}

fn count<T>(it: impl Iterator<Item = T>) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}

/// Whether the rollout that started at `started_at_ms` has passed its deadline at `now_ms`.
pub fn deadline_passed(update: &Update, started_at_ms: u64, now_ms: u64) -> bool {
    now_ms >= started_at_ms.saturating_add(update.deadline.as_millis())
}

#[cfg(test)]
mod tests {
    use berth_manifests::Duration;

    use super::*;

    fn update(surge: u32, unavailable: u32) -> Update {
        Update {
            max_surge: surge,
            max_unavailable: unavailable,
            deadline: Duration::from_secs(60),
            auto_rollback: true,
        }
    }

    fn members(spec: &str, prefix: &str) -> Vec<Member> {
        // "RRS": ready, ready, starting (not ready)
        spec.chars()
            .enumerate()
            .map(|(i, c)| Member {
                id: format!("{prefix}{i}"),
                ready: c == 'R',
                started_at_ms: u64::try_from(i).unwrap_or(0),
            })
            .collect()
    }

    /// Simulates a rollout: every new instance becomes ready one round after its start, every
    /// stopped one disappears; checks the floor of ready instances in every round.
    fn simulate(desired: u32, u: &Update, old: usize) -> (u32, usize) {
        let mut old: Vec<Member> = members(&"R".repeat(old), "old");
        let mut new: Vec<Member> = Vec::new();
        let floor = desired.saturating_sub(u.max_unavailable);
        let mut peak = old.len();
        for round in 0..50u64 {
            let m = moves(desired, u, &new, &old);
            old.retain(|o| !m.stop.contains(&o.id));
            new.retain(|o| !m.stop.contains(&o.id));
            let ready = new.iter().chain(old.iter()).filter(|m| m.ready).count();
            assert!(
                u32::try_from(ready).unwrap_or(0) >= floor.min(desired),
                "round {round}: {ready} ready < floor {floor}"
            );
            for n in &mut new {
                n.ready = true;
            }
            for i in 0..m.start {
                new.push(Member {
                    id: format!("new{round}-{i}"),
                    ready: false,
                    started_at_ms: round,
                });
            }
            peak = peak.max(new.len() + old.len());
            if old.is_empty() && new.len() == desired as usize && new.iter().all(|m| m.ready) {
                return (u32::try_from(round).unwrap_or(0), peak);
            }
        }
        panic!("rollout did not finish");
    }

    #[test]
    fn moves_table() {
        // (desired, surge, unavailable, new, old, want start, want stopped ids)
        type Case = (
            u32,
            u32,
            u32,
            &'static str,
            &'static str,
            u32,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            // first deploy: start all
            (3, 1, 0, "", "", 3, &[]),
            // surge 1, nothing ready yet: start one, stop none
            (2, 1, 0, "", "RR", 1, &[]),
            // new one not ready yet: wait
            (2, 1, 0, "S", "RR", 0, &[]),
            // new one ready: stop the oldest old one, and the budget opens one more start
            (2, 1, 0, "R", "RR", 1, &["old0"]),
            // all new ready: stop the rest
            (2, 1, 0, "RR", "R", 0, &["old0"]),
            // max_unavailable 1, surge 0: stop one old first, then start
            (2, 0, 1, "", "RR", 1, &["old0"]),
            // unready old ones go at once, which frees their slot for a start
            (2, 1, 0, "", "RS", 2, &["old1"]),
            // scale down: newest not-ready extra first
            (2, 1, 0, "RRS", "", 0, &["new2"]),
            // scale down among ready: newest first
            (1, 1, 0, "RR", "", 0, &["new1"]),
            // surge 2: two at once
            (3, 2, 0, "", "RRR", 2, &[]),
        ];
        for (i, (d, s, un, new, old, start, stop)) in cases.iter().enumerate() {
            let m = moves(
                *d,
                &update(*s, *un),
                &members(new, "new"),
                &members(old, "old"),
            );
            let want: Vec<String> = stop.iter().map(|s| (*s).to_string()).collect();
            assert_eq!(m.start, *start, "case {i}: starts");
            assert_eq!(m.stop, want, "case {i}: stops");
        }
    }

    #[test]
    fn rollouts_finish_and_keep_the_floor_ready() {
        for (desired, surge, unavailable) in [
            (1, 1, 0),
            (2, 1, 0),
            (3, 1, 0),
            (3, 2, 0),
            (3, 0, 1),
            (4, 1, 1),
            (5, 3, 2),
        ] {
            let u = update(surge, unavailable);
            let (_, peak) = simulate(desired, &u, desired as usize);
            assert!(
                peak <= (desired + effective_surge(&u)) as usize,
                "{desired}/{surge}/{unavailable}: peak {peak}"
            );
        }
    }

    #[test]
    fn the_deadline_counts_from_the_rollout_start() {
        let u = update(1, 0);
        assert!(!deadline_passed(&u, 1000, 60_999));
        assert!(deadline_passed(&u, 1000, 61_000));
    }
}

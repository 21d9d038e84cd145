//! Placement and per-host assignments, as pure functions: which hosts run how many
//! instances of which app, within the hosts' capacity, and whether a host's assignment
//! changed (its version grows only then). No I/O, no clock.
//!
//! An app may go to a **schedulable** host (ready, not down, not just back from being
//! down) whose labels include all of `placement.labels` and whose free capacity fits one
//! more instance (`resources.cpu` and `resources.memory`; autoscaled apps reserve their
//! `max`). Three phases, apps in name order:
//!
//! 1. **keep**: every app keeps the instances it had on a host that is still eligible (and
//!    what fits there). What already runs is kept before any new instance is placed, so a
//!    new app never evicts an old one.
//! 2. **place**: the remaining instances go one at a time to the eligible host with the
//!    fewest instances of the app (with `spread`), then the most free capacity (the smaller
//!    of its free cpu and memory fractions), then the first name.
//! 3. **spread**: with `spread`, instances on a host above the app's even share
//!    (`ceil(placed / eligible hosts)`) move to eligible hosts below it that have room, so a
//!    host that joins or comes back takes over only the excess; repeated until nothing moves,
//!    so placing the result again moves nothing.
//!
//! What does not fit is reported per app ([`Unplaced`]): what one instance needs and what is
//! free where. A host whose capacity is 0 in a dimension declared none (an agent that does
//! not say, `berth up`): that dimension is not limited there.
//!
//! Cost: O(hosts) per distinct label set plus O(instances · log hosts) per app (and per
//! spread app whose hosts are uneven, O(hosts · log hosts)); no copy of specs except into the
//! assignments it returns.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use berth_manifests::App;
use berth_manifests::wire::{AssignedApp, Assignment, Capacity, RevisionSpec, Scale};
use serde::{Deserialize, Serialize};

/// What placement needs about one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeable {
    /// The revision to run.
    pub target: RevisionSpec,
    /// The last good revision.
    pub fallback: Option<RevisionSpec>,
    /// Pinned by a rollback.
    pub pinned: bool,
}

/// Where a host stands for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Reporting within its grace period: gets work.
    Ready,
    /// Back after being down, not yet for long enough: gets no work yet.
    Returning,
    /// Silent past its grace period: its work went elsewhere.
    Down,
}

impl HostState {
    /// `ready`, `returning`, `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Returning => "returning",
            HostState::Down => "down",
        }
    }
}

/// What placement needs about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The host.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers (0 in a dimension: not limited).
    pub capacity: Capacity,
    /// Whether it gets work.
    pub state: HostState,
}

/// What placement needs about one app's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand<'a> {
    /// The app.
    pub app: &'a str,
    /// The labels a host must have.
    pub labels: &'a BTreeMap<String, String>,
    /// What one instance requests.
    pub need: Capacity,
    /// How many instances to place (replicas, or the autoscale maximum).
    pub instances: u32,
    /// Spread instances over hosts (`placement.spread`).
    pub spread: bool,
}

impl<'a> Demand<'a> {
    /// The demand of `app`'s spec.
    pub fn of(app: &'a App) -> Demand<'a> {
        Demand {
            app: &app.app,
            labels: &app.placement.labels,
            need: need_of(app),
            instances: wanted(app),
            spread: app.placement.spread,
        }
    }
}

/// What one instance of `app` requests.
pub fn need_of(app: &App) -> Capacity {
    Capacity {
        cpu_millis: app.resources.cpu.as_millis(),
        memory_bytes: app.resources.memory.as_bytes(),
    }
}

/// The instances placement reserves for `app`: its replicas, or its autoscale maximum.
pub fn wanted(app: &App) -> u32 {
    match &app.autoscale {
        Some(auto) => auto.max,
        None => app.replicas.unwrap_or(1),
    }
}

/// The previous placement: per app, (host, instances) pairs.
pub type Previous = HashMap<String, Vec<(String, u32)>>;

/// The placement the stored assignments describe.
pub fn previous_of<'a>(assignments: impl IntoIterator<Item = &'a HostAssignment>) -> Previous {
    let mut out = Previous::new();
    for a in assignments {
        for app in &a.apps {
            out.entry(app.target.app.clone())
                .or_default()
                .push((a.host.clone(), share(app.scale)));
        }
    }
    out
}

/// The instances a scale places on a host (its replicas, or its autoscale maximum).
pub fn share(scale: Scale) -> u32 {
    match scale {
        Scale::Fixed { replicas } => replicas,
        Scale::Auto { max, .. } => max,
    }
}

/// An app that did not (entirely) fit: wanted, placed, and why.
pub use berth_manifests::wire::UnplacedApp as Unplaced;

/// The outcome of [`allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Per demand (same order): (host index, instances), by host index, no zero counts.
    pub placed: Vec<Vec<(usize, u32)>>,
    /// Per host (same order as the hosts given): what its instances request.
    pub used: Vec<Capacity>,
    /// The demands that did not fit, in demand order.
    pub unplaced: Vec<Unplaced>,
}

/// Whether a host's labels satisfy an app's placement.
pub fn matches(host: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| host.get(k) == Some(v))
}

/// Divides `total` over `n` slots: `total / n` each, the remainder to the first slots.
pub fn divide(total: u32, n: usize) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let base = total / n32;
    let rest = (total % n32) as usize;
    (0..n).map(|i| base + u32::from(i < rest)).collect()
}

/// How many more instances needing `need` fit in `cap` with `used` taken (`u32::MAX`:
/// not limited).
fn room(cap: Capacity, used: Capacity, need: Capacity) -> u32 {
    let dim = |cap: u64, used: u64, need: u64| -> u64 {
        if cap == 0 || need == 0 {
            u64::MAX
        } else {
            cap.saturating_sub(used) / need
        }
    };
    let n = dim(cap.cpu_millis, used.cpu_millis, need.cpu_millis).min(dim(
        cap.memory_bytes,
        used.memory_bytes,
        need.memory_bytes,
    ));
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Free capacity as parts per million of the tighter declared dimension (1,000,000 when
/// nothing is declared).
fn free_ppm(cap: Capacity, used: Capacity) -> u64 {
    let dim = |cap: u64, used: u64| -> u64 {
        if cap == 0 {
            1_000_000
        } else {
            let free = u128::from(cap.saturating_sub(used)) * 1_000_000 / u128::from(cap);
            u64::try_from(free).unwrap_or(u64::MAX)
        }
    };
    dim(cap.cpu_millis, used.cpu_millis).min(dim(cap.memory_bytes, used.memory_bytes))
}

fn add(a: Capacity, need: Capacity, n: u32) -> Capacity {
    Capacity {
        cpu_millis: a
            .cpu_millis
            .saturating_add(need.cpu_millis.saturating_mul(u64::from(n))),
        memory_bytes: a
            .memory_bytes
            .saturating_add(need.memory_bytes.saturating_mul(u64::from(n))),
    }
}

fn sub(a: Capacity, need: Capacity, n: u32) -> Capacity {
    Capacity {
        cpu_millis: a
            .cpu_millis
            .saturating_sub(need.cpu_millis.saturating_mul(u64::from(n))),
        memory_bytes: a
            .memory_bytes
            .saturating_sub(need.memory_bytes.saturating_mul(u64::from(n))),
    }
}

/// `2`, `0.5` cores; `unlimited` when not declared.
pub fn show_cpu(millis: u64, declared: bool) -> String {
    if declared {
        berth_manifests::Cpu::from_millis(millis).to_string()
    } else {
        "unlimited".into()
    }
}

/// `512Mi`, `1.5Gi`; `unlimited` when not declared.
pub fn show_memory(bytes: u64, declared: bool) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    if !declared {
        "unlimited".into()
    } else if bytes >= GI {
        let tenths = bytes / (GI / 10);
        if tenths.is_multiple_of(10) {
            format!("{}Gi", tenths / 10)
        } else {
            format!("{}.{}Gi", tenths / 10, tenths % 10)
        }
    } else {
        format!("{}Mi", bytes / MI)
    }
}

/// `cpu 0.5, memory 1.2Gi` for what is free on a host.
fn show_free(cap: Capacity, used: Capacity) -> String {
    format!(
        "cpu {}, memory {}",
        show_cpu(
            cap.cpu_millis.saturating_sub(used.cpu_millis),
            cap.cpu_millis > 0
        ),
        show_memory(
            cap.memory_bytes.saturating_sub(used.memory_bytes),
            cap.memory_bytes > 0
        )
    )
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Most hosts an [`Unplaced`] reason lists.
const REASON_HOSTS: usize = 5;

/// Places `demands` on `hosts` (sorted by name), keeping what `previous` placed where it
/// still may run (module docs). `hosts` must be sorted by name: the index order breaks ties.
pub fn allocate(demands: &[Demand<'_>], hosts: &[&HostInfo], previous: &Previous) -> Allocation {
    let index: HashMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_str(), i))
        .collect();
    let mut used = vec![Capacity::default(); hosts.len()];
    // eligible hosts per distinct label set (apps often share theirs)
    let mut by_labels: HashMap<&BTreeMap<String, String>, usize> = HashMap::new();
    let mut lists: Vec<Vec<usize>> = Vec::new();
    let which: Vec<usize> = demands
        .iter()
        .map(|d| {
            *by_labels.entry(d.labels).or_insert_with(|| {
                lists.push(
                    hosts
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| {
                            h.state == HostState::Ready && matches(&h.labels, d.labels)
                        })
                        .map(|(i, _)| i)
                        .collect(),
                );
                lists.len() - 1
            })
        })
        .collect();
    let eligible: Vec<&[usize]> = which.iter().map(|&w| lists[w].as_slice()).collect();
    // phase 1: keep what runs where it may still run (and fits)
    let mut placed: Vec<Vec<(usize, u32)>> = Vec::with_capacity(demands.len());
    for (d, &elig) in demands.iter().zip(&eligible) {
        let mut kept: Vec<(usize, u32)> = Vec::new();
        if !elig.is_empty() && d.instances > 0 {
            for (host, count) in previous.get(d.app).map(Vec::as_slice).unwrap_or_default() {
                let Some(&i) = index.get(host.as_str()) else {
                    continue;
                };
                if elig.binary_search(&i).is_err() {
                    continue;
                }
                let k = (*count).min(room(hosts[i].capacity, used[i], d.need));
                if k > 0 {
                    used[i] = add(used[i], d.need, k);
                    kept.push((i, k));
                }
            }
            // fewer instances than before: drop from the hosts with the most, last names first
            let total: u32 = kept.iter().map(|(_, k)| k).sum();
            if total > d.instances {
                let mut heap: BinaryHeap<(u32, usize)> =
                    kept.iter().map(|&(i, k)| (k, i)).collect();
                for _ in 0..total - d.instances {
                    let Some((k, i)) = heap.pop() else { break };
                    used[i] = sub(used[i], d.need, 1);
                    if k > 1 {
                        heap.push((k - 1, i));
                    }
                }
                kept = heap.into_iter().map(|(k, i)| (i, k)).collect();
            }
            kept.sort_unstable();
        }
        placed.push(kept);
    }
    // phase 2: place the rest, one instance at a time
    let mut unplaced = Vec::new();
    for ((d, &elig), kept) in demands.iter().zip(&eligible).zip(placed.iter_mut()) {
        let mut remaining = d
            .instances
            .saturating_sub(kept.iter().map(|(_, k)| k).sum());
        if remaining > 0 {
            let mut counts: HashMap<usize, u32> = kept.iter().copied().collect();
            // max-heap: fewest instances of the app (with spread), most free, first name
            let mut heap: BinaryHeap<(Reverse<u32>, u64, Reverse<usize>)> = elig
                .iter()
                .filter(|&&i| room(hosts[i].capacity, used[i], d.need) > 0)
                .map(|&i| {
                    let c = if d.spread {
                        counts.get(&i).copied().unwrap_or(0)
                    } else {
                        0
                    };
                    (Reverse(c), free_ppm(hosts[i].capacity, used[i]), Reverse(i))
                })
                .collect();
            while remaining > 0 {
                let Some((Reverse(c), _, Reverse(i))) = heap.pop() else {
                    break;
                };
                used[i] = add(used[i], d.need, 1);
                *counts.entry(i).or_insert(0) += 1;
                remaining -= 1;
                if room(hosts[i].capacity, used[i], d.need) > 0 {
                    let c = if d.spread { c + 1 } else { 0 };
                    heap.push((Reverse(c), free_ppm(hosts[i].capacity, used[i]), Reverse(i)));
                }
            }
            let mut all: Vec<(usize, u32)> = counts.into_iter().filter(|(_, c)| *c > 0).collect();
            all.sort_unstable();
            *kept = all;
        }
        if remaining > 0 {
            unplaced.push(Unplaced {
                app: d.app.to_string(),
                wanted: d.instances,
                placed: d.instances - remaining,
                reason: reason(d, remaining, elig, hosts, &used),
            });
        }
    }
    // phase 3: spread apps move instances from hosts over their share to hosts under it
    // that have room, until no move is left (each move lowers the total excess, so this
    // ends; placing the result again moves nothing)
    loop {
        let mut moved = false;
        for ((d, &elig), kept) in demands.iter().zip(&eligible).zip(placed.iter_mut()) {
            if d.spread && rebalance(d, elig, hosts, &mut used, kept) {
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    Allocation {
        placed,
        used,
        unplaced,
    }
}

/// Moves instances of `d` from hosts holding more than `ceil(placed / eligible)` to
/// eligible hosts holding fewer that have room; whether anything moved.
fn rebalance(
    d: &Demand<'_>,
    elig: &[usize],
    hosts: &[&HostInfo],
    used: &mut [Capacity],
    placed: &mut Vec<(usize, u32)>,
) -> bool {
    let total: u32 = placed.iter().map(|(_, c)| c).sum();
    let n = u32::try_from(elig.len()).unwrap_or(u32::MAX);
    if n < 2 || total == 0 {
        return false;
    }
    let share = total.div_ceil(n);
    // sources: the most instances, last names first
    let mut over: BinaryHeap<(u32, usize)> = placed
        .iter()
        .filter(|(_, c)| *c > share)
        .map(|&(i, c)| (c, i))
        .collect();
    if over.is_empty() {
        return false;
    }
    let mut counts: HashMap<usize, u32> = placed.iter().copied().collect();
    // destinations: the fewest instances, the most free, first names
    let mut under: BinaryHeap<(Reverse<u32>, u64, Reverse<usize>)> = elig
        .iter()
        .filter_map(|&i| {
            let c = counts.get(&i).copied().unwrap_or(0);
            (c < share && room(hosts[i].capacity, used[i], d.need) > 0)
                .then(|| (Reverse(c), free_ppm(hosts[i].capacity, used[i]), Reverse(i)))
        })
        .collect();
    let mut moved = false;
    while let (Some((c, from)), Some((Reverse(to_c), _, Reverse(to)))) = (over.pop(), under.pop()) {
        used[from] = sub(used[from], d.need, 1);
        used[to] = add(used[to], d.need, 1);
        counts.insert(from, c - 1);
        counts.insert(to, to_c + 1);
        moved = true;
        if c - 1 > share {
            over.push((c - 1, from));
        }
        if to_c + 1 < share && room(hosts[to].capacity, used[to], d.need) > 0 {
            under.push((
                Reverse(to_c + 1),
                free_ppm(hosts[to].capacity, used[to]),
                Reverse(to),
            ));
        }
    }
    if moved {
        let mut all: Vec<(usize, u32)> = counts.into_iter().filter(|(_, c)| *c > 0).collect();
        all.sort_unstable();
        *placed = all;
    }
    moved
}

/// Why `missing` instances of `d` found no host.
fn reason(
    d: &Demand<'_>,
    missing: u32,
    elig: &[usize],
    hosts: &[&HostInfo],
    used: &[Capacity],
) -> String {
    let of = format!("{missing} of {} instance(s) not placed", d.instances);
    if elig.is_empty() {
        let matching: Vec<String> = hosts
            .iter()
            .filter(|h| matches(&h.labels, d.labels))
            .take(REASON_HOSTS)
            .map(|h| format!("{} ({})", h.name, h.state.as_str()))
            .collect();
        return if matching.is_empty() {
            if d.labels.is_empty() {
                format!("{of}: no host is registered")
            } else {
                format!(
                    "{of}: no registered host has the labels {}",
                    show_labels(d.labels)
                )
            }
        } else {
            format!("{of}: no matching host is ready: {}", matching.join(", "))
        };
    }
    let mut free: Vec<usize> = elig.to_vec();
    free.sort_by_key(|&i| (Reverse(free_ppm(hosts[i].capacity, used[i])), i));
    let mut listed: Vec<String> = free
        .iter()
        .take(REASON_HOSTS)
        .map(|&i| {
            format!(
                "{} {}",
                hosts[i].name,
                show_free(hosts[i].capacity, used[i])
            )
        })
        .collect();
    if free.len() > REASON_HOSTS {
        listed.push(format!("and {} more", free.len() - REASON_HOSTS));
    }
    format!(
        "{of}: each needs cpu {}, memory {}; free on the matching hosts: {}",
        show_cpu(d.need.cpu_millis, true),
        show_memory(d.need.memory_bytes, true),
        listed.join("; ")
    )
}

/// What [`place`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Every host's apps, sorted by host then app. Every host given has an entry (possibly
    /// empty), so a host whose apps all went away gets an empty assignment. Hosts that run
    /// an app with the same scale share one [`AssignedApp`] (ten thousand hosts of one app:
    /// one copy of its spec, not ten thousand).
    pub hosts: BTreeMap<String, Vec<Arc<AssignedApp>>>,
    /// Per host: what its instances request.
    pub used: BTreeMap<String, Capacity>,
    /// The apps that did not (entirely) fit, by name.
    pub unplaced: Vec<Unplaced>,
}

/// Places `apps` on `hosts` (any order), keeping `previous` where it may stay, and turns
/// the counts into per-host assignments: fixed replicas as they were placed, autoscale
/// `max` as placed and `min` divided over the same hosts (most instances first).
pub fn place(apps: &[Placeable], hosts: &[HostInfo], previous: &Previous) -> Placed {
    let mut sorted: Vec<&HostInfo> = hosts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut order: Vec<&Placeable> = apps.iter().collect();
    order.sort_by(|a, b| a.target.app.cmp(&b.target.app));
    let demands: Vec<Demand<'_>> = order.iter().map(|a| Demand::of(&a.target.spec)).collect();
    let alloc = allocate(&demands, &sorted, previous);
    let mut lists: Vec<Vec<Arc<AssignedApp>>> = vec![Vec::new(); sorted.len()];
    for (app, counts) in order.iter().zip(&alloc.placed) {
        let scales: Vec<Scale> = match &app.target.spec.autoscale {
            Some(auto) => {
                let maxes: Vec<u32> = counts.iter().map(|(_, c)| *c).collect();
                split_min(auto.min, &maxes)
                    .into_iter()
                    .zip(maxes)
                    .map(|(min, max)| Scale::Auto { min, max })
                    .collect()
            }
            None => counts
                .iter()
                .map(|&(_, replicas)| Scale::Fixed { replicas })
                .collect(),
        };
        // one shared value per distinct scale of the app (most often one)
        let mut shared: Vec<Arc<AssignedApp>> = Vec::new();
        for (&(i, _), scale) in counts.iter().zip(scales) {
            let assigned = match shared.iter().find(|a| a.scale == scale) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(AssignedApp {
                        target: app.target.clone(),
                        fallback: app.fallback.clone(),
                        scale,
                        pinned: app.pinned,
                    });
                    shared.push(a.clone());
                    a
                }
            };
            if let Some(list) = lists.get_mut(i) {
                list.push(assigned);
            }
        }
    }
    let out: BTreeMap<String, Vec<Arc<AssignedApp>>> =
        sorted.iter().map(|h| h.name.clone()).zip(lists).collect();
    // apps were visited in name order, so every list is sorted by app already
    let used = sorted
        .iter()
        .zip(&alloc.used)
        .map(|(h, u)| (h.name.clone(), *u))
        .collect();
    Placed {
        hosts: out,
        used,
        unplaced: alloc.unplaced,
    }
}

/// Divides an autoscale `min` over hosts that got `maxes` instances: the hosts with the most
/// first (then in order), never more than a host's max.
pub fn split_min(min: u32, maxes: &[u32]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..maxes.len()).collect();
    order.sort_by_key(|&i| (Reverse(maxes[i]), i));
    let total: u32 = maxes.iter().sum();
    let mut left = min.min(total);
    let mut out = vec![0u32; maxes.len()];
    let shares = divide(left, maxes.len());
    for (&i, s) in order.iter().zip(shares) {
        out[i] = s.min(maxes[i]);
        left -= out[i];
    }
    // what a small host could not take goes to the next with room
    for &i in &order {
        if left == 0 {
            break;
        }
        let more = (maxes[i] - out[i]).min(left);
        out[i] += more;
        left -= more;
    }
    out
}

/// The host's next assignment: the same one when its apps did not change, else the apps
/// under version + 1. Versions only grow.
pub fn next_assignment(
    host: &str,
    previous: Option<&HostAssignment>,
    apps: Vec<Arc<AssignedApp>>,
) -> Option<HostAssignment> {
    match previous {
        // `Arc`'s equality compares pointers first: shared apps cost no deep comparison
        Some(prev) if prev.apps == apps => None,
        Some(prev) => Some(HostAssignment {
            host: host.to_string(),
            version: prev.version + 1,
            apps,
        }),
        None => Some(HostAssignment {
            host: host.to_string(),
            version: 1,
            apps,
        }),
    }
}

/// A host's assignment as the controller holds it: the wire's [`Assignment`] with its apps
/// shared between hosts (see [`Placed::hosts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAssignment {
    /// The host.
    pub host: String,
    /// Grows with every change of the host's apps.
    pub version: u64,
    /// The apps placed on the host, sorted by name.
    pub apps: Vec<Arc<AssignedApp>>,
}

impl HostAssignment {
    /// The wire's value (a copy of every app).
    pub fn to_wire(&self) -> Assignment {
        Assignment {
            host: self.host.clone(),
            version: self.version,
            apps: self.apps.iter().map(|a| AssignedApp::clone(a)).collect(),
        }
    }
}

impl From<Assignment> for HostAssignment {
    fn from(a: Assignment) -> HostAssignment {
        HostAssignment {
            host: a.host,
            version: a.version,
            apps: a.apps.into_iter().map(Arc::new).collect(),
        }
    }
}

/// Encodes assignments as the wire's [`Assignment`] JSON (byte for byte what serde_json
/// gives), each shared app encoded once: ten thousand hosts of the same hundred apps cost
/// a hundred app encodings and ten thousand copies of their bytes.
#[derive(Debug, Default)]
pub struct AssignmentEncoder {
    /// Each app's JSON by the address of its shared value (the values outlive the encoder's
    /// use: the caller holds them).
    apps: HashMap<usize, Vec<u8>>,
}

impl AssignmentEncoder {
    /// The JSON of `a`.
    pub fn encode(&mut self, a: &HostAssignment) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(a.apps.len());
        for app in &a.apps {
            let key = Arc::as_ptr(app) as usize;
            self.apps
                .entry(key)
                .or_insert_with(|| serde_json::to_vec(app.as_ref()).unwrap_or_default());
        }
        for app in &a.apps {
            if let Some(json) = self.apps.get(&(Arc::as_ptr(app) as usize)) {
                parts.push(json);
            }
        }
        let host = serde_json::to_vec(&a.host).unwrap_or_default();
        let version = a.version.to_string();
        let len: usize = parts.iter().map(|p| p.len() + 1).sum();
        let mut out = Vec::with_capacity(len + host.len() + version.len() + 32);
        out.extend_from_slice(b"{\"host\":");
        out.extend_from_slice(&host);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(b",\"apps\":[");
        for (n, part) in parts.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Makes `placed` share the values of `previous` where they are equal (compared once per
/// distinct value, not once per host), so comparing a host's apps with its previous ones
/// compares pointers.
pub fn share_previous<'a>(
    placed: &mut BTreeMap<String, Vec<Arc<AssignedApp>>>,
    previous: impl IntoIterator<Item = &'a HostAssignment>,
) {
    // the previous distinct values of each app
    let mut old: HashMap<&str, Vec<&Arc<AssignedApp>>> = HashMap::new();
    for a in previous {
        for app in &a.apps {
            let list = old.entry(app.target.app.as_str()).or_default();
            if !list.iter().any(|o| Arc::ptr_eq(o, app)) {
                list.push(app);
            }
        }
    }
    let mut canonical: HashMap<usize, Arc<AssignedApp>> = HashMap::new();
    // the replaced values stay alive until the end: their addresses are the map's keys
    let mut replaced: Vec<Arc<AssignedApp>> = Vec::new();
    for apps in placed.values_mut() {
        for app in apps.iter_mut() {
            let key = Arc::as_ptr(app) as usize;
            let same = canonical.entry(key).or_insert_with(|| {
                old.get(app.target.app.as_str())
                    .and_then(|list| list.iter().find(|o| ***o == *app))
                    .map_or_else(|| app.clone(), |o| Arc::clone(o))
            });
            if !Arc::ptr_eq(same, app) {
                replaced.push(std::mem::replace(app, same.clone()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use berth_manifests::{Source, load};
    use proptest::prelude::*;

    fn placeable(src: &str) -> Placeable {
        let app = load(&[Source {
            path: "a.yaml",
            bytes: src.as_bytes(),
        }])
        .unwrap()
        .manifests
        .remove(0)
        .app;
        Placeable {
            target: RevisionSpec {
                app: app.app.clone(),
                number: 1,
                spec_hash: crate::revisions::spec_hash(&app),
                spec: app,
                image_digest: format!("sha256:{}", "b".repeat(64)),
            },
            fallback: None,
            pinned: false,
        }
    }

    fn host(name: &str, labels: &[(&str, &str)]) -> HostInfo {
        HostInfo {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: Capacity::default(),
            state: HostState::Ready,
        }
    }

    fn sized(name: &str, cpu_millis: u64, memory_mi: u64) -> HostInfo {
        HostInfo {
            capacity: Capacity {
                cpu_millis,
                memory_bytes: memory_mi << 20,
            },
            ..host(name, &[])
        }
    }

    fn counts(placed: &Placed, app: &str) -> BTreeMap<String, u32> {
        placed
            .hosts
            .iter()
            .filter_map(|(h, apps)| {
                let a = apps.iter().find(|a| a.target.app == app)?;
                Some((h.clone(), share(a.scale)))
            })
            .collect()
    }

    fn prev(placed: &Placed) -> Previous {
        let assignments: Vec<HostAssignment> = placed
            .hosts
            .iter()
            .map(|(h, apps)| HostAssignment {
                host: h.clone(),
                version: 1,
                apps: apps.clone(),
            })
            .collect();
        previous_of(&assignments)
    }

    #[test]
    fn divide_gives_the_remainder_to_the_first_slots() {
        assert_eq!(divide(5, 3), [2, 2, 1]);
        assert_eq!(divide(1, 3), [1, 0, 0]);
        assert_eq!(divide(4, 2), [2, 2]);
        assert!(divide(3, 0).is_empty());
    }

    #[test]
    fn replicas_are_spread_over_matching_hosts_first_name_first() {
        let app = placeable("app: web\nimage: busybox\nreplicas: 3\n");
        let placed = place(&[app], &[host("b", &[]), host("a", &[])], &Previous::new());
        let scales: Vec<_> = placed.hosts.values().map(|apps| apps[0].scale).collect();
        assert_eq!(
            scales,
            [Scale::Fixed { replicas: 2 }, Scale::Fixed { replicas: 1 }]
        );
        assert!(placed.unplaced.is_empty());
    }

    #[test]
    fn hosts_without_the_labels_or_a_share_get_nothing() {
        let app = placeable(
            "app: web\nimage: busybox\nreplicas: 1\nplacement:\n  labels:\n    role: web\n",
        );
        let placed = place(
            &[app],
            &[
                host("a", &[("role", "db")]),
                host("b", &[("role", "web")]),
                host("c", &[("role", "web")]),
            ],
            &Previous::new(),
        );
        assert!(placed.hosts["a"].is_empty());
        assert_eq!(placed.hosts["b"].len(), 1);
        assert!(placed.hosts["c"].is_empty(), "one instance on one host");
    }

    #[test]
    fn autoscale_bounds_are_divided_too() {
        let app = placeable(
            "app: web\nimage: busybox\nport: 8080\nautoscale:\n  min: 1\n  max: 5\n  metric: rps\n  target: 10\n",
        );
        let placed = place(&[app], &[host("a", &[]), host("b", &[])], &Previous::new());
        assert_eq!(placed.hosts["a"][0].scale, Scale::Auto { min: 1, max: 3 });
        assert_eq!(placed.hosts["b"][0].scale, Scale::Auto { min: 0, max: 2 });
    }

    #[test]
    fn the_most_free_host_gets_the_instance() {
        // default request: cpu 1, memory 256Mi; "aaa" is placed first (name order), on the
        // first of two empty hosts; then "web" goes to the host with the larger free share
        let aaa = placeable("app: aaa\nimage: busybox\nreplicas: 1\n");
        let web = placeable("app: web\nimage: busybox\nreplicas: 1\n");
        let placed = place(
            &[web, aaa],
            &[sized("a", 2000, 1024), sized("b", 2000, 1024)],
            &Previous::new(),
        );
        assert_eq!(counts(&placed, "aaa"), BTreeMap::from([("a".into(), 1)]));
        assert_eq!(counts(&placed, "web"), BTreeMap::from([("b".into(), 1)]));
        assert_eq!(placed.used["b"].cpu_millis, 1000);
        assert_eq!(placed.used["a"].memory_bytes, 256 << 20);
    }

    #[test]
    fn what_does_not_fit_is_reported_and_the_rest_placed() {
        let app = placeable(
            "app: web\nimage: busybox\nreplicas: 5\nresources: { cpu: 500m, memory: 512Mi }\n",
        );
        let placed = place(
            &[app],
            &[sized("a", 1000, 4096), sized("b", 4000, 1024)],
            &Previous::new(),
        );
        // a fits 2 (cpu), b fits 2 (memory)
        assert_eq!(
            counts(&placed, "web"),
            BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
        );
        let u = &placed.unplaced[0];
        assert_eq!((u.app.as_str(), u.wanted, u.placed), ("web", 5, 4));
        assert!(
            u.reason
                .contains("each needs cpu 0.5, memory 512Mi; free on the matching hosts: "),
            "{}",
            u.reason
        );
        assert!(u.reason.contains("a cpu 0, memory 3Gi"), "{}", u.reason);
        assert!(u.reason.contains("b cpu 3, memory 0Mi"), "{}", u.reason);
    }

    #[test]
    fn a_new_app_does_not_evict_what_runs() {
        let old = placeable("app: old\nimage: busybox\nreplicas: 2\n");
        let hosts = [sized("a", 2000, 8192)];
        let first = place(std::slice::from_ref(&old), &hosts, &Previous::new());
        assert_eq!(counts(&first, "old")["a"], 2);
        // "aaa" sorts first, yet "old" keeps its two instances
        let new = placeable("app: aaa\nimage: busybox\nreplicas: 1\n");
        let second = place(&[old, new], &hosts, &prev(&first));
        assert_eq!(counts(&second, "old")["a"], 2);
        assert!(counts(&second, "aaa").is_empty());
        assert_eq!(second.unplaced[0].app, "aaa");
    }

    #[test]
    fn no_ready_host_is_reported_by_state() {
        let app = placeable("app: web\nimage: busybox\nplacement: { labels: { role: web } }\n");
        let mut down = host("a", &[("role", "web")]);
        down.state = HostState::Down;
        let placed = place(std::slice::from_ref(&app), &[down], &Previous::new());
        assert!(placed.hosts["a"].is_empty());
        assert_eq!(
            placed.unplaced[0].reason,
            "1 of 1 instance(s) not placed: no matching host is ready: a (down)"
        );
        let placed = place(&[app], &[host("b", &[])], &Previous::new());
        assert_eq!(
            placed.unplaced[0].reason,
            "1 of 1 instance(s) not placed: no registered host has the labels role=web"
        );
    }

    #[test]
    fn a_down_host_s_instances_move_and_come_back_only_as_excess() {
        let app = placeable("app: web\nimage: busybox\nreplicas: 2\n");
        let hosts = [host("a", &[]), host("b", &[])];
        let first = place(std::slice::from_ref(&app), &hosts, &Previous::new());
        assert_eq!(
            counts(&first, "web"),
            BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
        );
        let mut down = hosts.clone();
        down[0].state = HostState::Down;
        let moved = place(std::slice::from_ref(&app), &down, &prev(&first));
        assert_eq!(counts(&moved, "web"), BTreeMap::from([("b".into(), 2)]));
        assert!(
            moved.hosts["a"].is_empty(),
            "a down host is assigned nothing"
        );
        down[0].state = HostState::Returning;
        let back = place(std::slice::from_ref(&app), &down, &prev(&moved));
        assert_eq!(back, moved, "a returning host gets nothing yet");
        let settled = place(&[app], &hosts, &prev(&back));
        assert_eq!(counts(&settled, "web"), counts(&first, "web"));
    }

    #[test]
    fn fewer_replicas_drop_from_the_fullest_hosts() {
        let five = placeable("app: web\nimage: busybox\nreplicas: 5\n");
        let hosts = [host("a", &[]), host("b", &[])];
        let first = place(&[five], &hosts, &Previous::new());
        let two = placeable("app: web\nimage: busybox\nreplicas: 2\n");
        let second = place(&[two], &hosts, &prev(&first));
        assert_eq!(
            counts(&second, "web"),
            BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
        );
    }

    #[test]
    fn split_min_never_exceeds_a_host_s_max() {
        assert_eq!(split_min(3, &[1, 4]), [1, 2]);
        assert_eq!(split_min(5, &[1, 4]), [1, 4]);
        assert_eq!(split_min(9, &[1, 4]), [1, 4]);
        assert_eq!(split_min(1, &[2, 3]), [0, 1]);
        assert!(split_min(2, &[]).is_empty());
    }

    #[test]
    fn shared_encoding_is_serde_json_of_the_wire_assignment() {
        let hosts = [host("a", &[]), host("b", &[]), host("c\"d", &[])];
        let apps = [
            placeable("app: web\nimage: busybox\nreplicas: 4\n"),
            placeable("app: api\nimage: busybox\nenv:\n  A: \"x\\ny\"\n"),
            placeable("app: auto\nimage: busybox\nautoscale:\n  min: 1\n  max: 3\n"),
        ];
        let placed = place(&apps, &hosts, &Previous::new());
        let mut encoder = AssignmentEncoder::default();
        for (version, (host, apps)) in placed.hosts.into_iter().enumerate() {
            let a = HostAssignment {
                host,
                version: version as u64 * 1000,
                apps,
            };
            let ours = encoder.encode(&a);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&a.to_wire()).unwrap()
            );
        }
    }

    #[test]
    fn placing_again_shares_the_previous_values() {
        let apps = [placeable("app: web\nimage: busybox\nreplicas: 3\n")];
        let hosts = [host("a", &[]), host("b", &[]), host("c", &[])];
        let first = place(&apps, &hosts, &Previous::new());
        let previous: Vec<HostAssignment> = first
            .hosts
            .iter()
            .map(|(h, apps)| HostAssignment {
                host: h.clone(),
                version: 1,
                apps: apps.clone(),
            })
            .collect();
        let mut again = place(&apps, &hosts, &prev(&first)).hosts;
        assert!(!Arc::ptr_eq(&again["a"][0], &previous[0].apps[0]));
        share_previous(&mut again, &previous);
        for (a, p) in again.values().zip(&previous) {
            assert!(Arc::ptr_eq(&a[0], &p.apps[0]));
            assert_eq!(next_assignment(&p.host, Some(p), a.clone()), None);
        }
        // a changed app is not shared
        let changed = [placeable("app: web\nimage: busybox:2\nreplicas: 3\n")];
        let mut other = place(&changed, &hosts, &prev(&first)).hosts;
        share_previous(&mut other, &previous);
        assert!(!Arc::ptr_eq(&other["a"][0], &previous[0].apps[0]));
        assert_eq!(
            next_assignment("a", Some(&previous[0]), other["a"].clone())
                .unwrap()
                .version,
            2
        );
    }

    #[test]
    fn version_grows_only_when_apps_change() {
        let app = placeable("app: web\nimage: busybox\n");
        let apps = place(&[app], &[host("a", &[])], &Previous::new())
            .hosts
            .remove("a")
            .unwrap();
        let first = next_assignment("a", None, apps.clone()).unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(next_assignment("a", Some(&first), apps), None);
        let second = next_assignment("a", Some(&first), Vec::new()).unwrap();
        assert_eq!(second.version, 2);
    }

    /// A random cluster: hosts with a zone label and capacity, apps with replicas, a zone
    /// (or none) and requests.
    /// One random app: instances, zone label, cpu millis, memory MiB, spread.
    type AppSpec = (u32, Option<u8>, u64, u64, bool);

    fn cluster() -> impl Strategy<Value = (Vec<HostInfo>, Vec<AppSpec>)> {
        let hosts = prop::collection::vec((0u8..3, 0u64..8_000, 0u64..8_192, 0u8..6), 1..8)
            .prop_map(|hs| {
                hs.into_iter()
                    .enumerate()
                    .map(|(i, (zone, cpu, mem, state))| HostInfo {
                        name: format!("h{i:02}"),
                        labels: BTreeMap::from([("zone".to_string(), zone.to_string())]),
                        capacity: Capacity {
                            cpu_millis: cpu,
                            memory_bytes: mem << 20,
                        },
                        state: match state {
                            0 => HostState::Down,
                            1 => HostState::Returning,
                            _ => HostState::Ready,
                        },
                    })
                    .collect()
            });
        let apps = prop::collection::vec(
            (
                0u32..7,
                prop::option::of(0u8..3),
                10u64..2_000,
                6u64..2_048,
                any::<bool>(),
            ),
            0..6,
        );
        (hosts, apps)
    }

    fn demands(apps: &[AppSpec]) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
        let names = (0..apps.len()).map(|i| format!("app{i}")).collect();
        let labels = apps
            .iter()
            .map(|(_, zone, ..)| match zone {
                Some(z) => BTreeMap::from([("zone".to_string(), z.to_string())]),
                None => BTreeMap::new(),
            })
            .collect();
        (names, labels)
    }

    fn run(
        hosts: &[HostInfo],
        apps: &[AppSpec],
        previous: &Previous,
    ) -> (Vec<Demand<'static>>, Allocation) {
        let (names, labels) = demands(apps);
        // leak for 'static demands in tests only
        let names: &'static [String] = Box::leak(names.into_boxed_slice());
        let labels: &'static [BTreeMap<String, String>] = Box::leak(labels.into_boxed_slice());
        let ds: Vec<Demand<'static>> = apps
            .iter()
            .enumerate()
            .map(|(i, &(instances, _, cpu, mem, spread))| Demand {
                app: &names[i],
                labels: &labels[i],
                need: Capacity {
                    cpu_millis: cpu,
                    memory_bytes: mem << 20,
                },
                instances,
                spread,
            })
            .collect();
        let refs: Vec<&HostInfo> = hosts.iter().collect();
        let alloc = allocate(&ds, &refs, previous);
        (ds, alloc)
    }

    fn previous_from(hosts: &[HostInfo], ds: &[Demand<'_>], alloc: &Allocation) -> Previous {
        ds.iter()
            .zip(&alloc.placed)
            .map(|(d, placed)| {
                (
                    d.app.to_string(),
                    placed
                        .iter()
                        .map(|&(i, c)| (hosts[i].name.clone(), c))
                        .collect(),
                )
            })
            .collect()
    }

    /// Speed of [`allocate`]: 10,000 hosts in 10 zones, 1,000 apps of 10 instances (half of
    /// them pinned to a zone); first from nothing, then again keeping everything, then with
    /// one zone's hosts down. `cargo test -p berth-controller --release -- --ignored
    /// placement_speed --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn placement_speed() {
        #[allow(clippy::disallowed_methods, reason = "a measurement")]
        fn now() -> std::time::Instant {
            std::time::Instant::now()
        }
        let mut hosts: Vec<HostInfo> = (0..10_000)
            .map(|i| HostInfo {
                name: format!("host-{i:05}"),
                labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 10))]),
                capacity: Capacity {
                    cpu_millis: 16_000,
                    memory_bytes: 64 << 30,
                },
                state: HostState::Ready,
            })
            .collect();
        let names: Vec<String> = (0..1_000).map(|i| format!("app-{i:04}")).collect();
        let labels: Vec<BTreeMap<String, String>> = (0..1_000)
            .map(|i| {
                if i % 2 == 0 {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([("zone".to_string(), format!("z{}", i % 10))])
                }
            })
            .collect();
        let demands: Vec<Demand<'_>> = (0..1_000)
            .map(|i| Demand {
                app: &names[i],
                labels: &labels[i],
                need: Capacity {
                    cpu_millis: 250,
                    memory_bytes: 256 << 20,
                },
                instances: 10,
                spread: true,
            })
            .collect();
        let run = |hosts: &[HostInfo], previous: &Previous, what: &str| -> Allocation {
            let refs: Vec<&HostInfo> = hosts.iter().collect();
            let t = now();
            let alloc = allocate(&demands, &refs, previous);
            let secs = t.elapsed().as_secs_f64();
            let placed: u32 = alloc.placed.iter().flatten().map(|(_, c)| c).sum();
            eprintln!(
                "{what}: {placed} instances of {} apps on {} hosts in {:.1} ms: {:.0} instances/s",
                demands.len(),
                hosts.len(),
                secs * 1000.0,
                f64::from(placed) / secs
            );
            alloc
        };
        let first = run(&hosts, &Previous::new(), "from nothing");
        let previous = |alloc: &Allocation| -> Previous {
            demands
                .iter()
                .zip(&alloc.placed)
                .map(|(d, p)| {
                    (
                        d.app.to_string(),
                        p.iter().map(|&(i, c)| (hosts[i].name.clone(), c)).collect(),
                    )
                })
                .collect()
        };
        let prev = previous(&first);
        let again = run(&hosts, &prev, "again, keeping all");
        assert_eq!(again.placed, first.placed);
        for h in hosts.iter_mut().filter(|h| h.labels["zone"] == "z3") {
            h.state = HostState::Down;
        }
        run(&hosts, &prev, "a zone down");
    }

    proptest! {
        #[test]
        fn placement_keeps_its_promises((hosts, apps) in cluster()) {
            let (ds, alloc) = run(&hosts, &apps, &Previous::new());
            let mut used = vec![Capacity::default(); hosts.len()];
            for (d, placed) in ds.iter().zip(&alloc.placed) {
                let total: u32 = placed.iter().map(|(_, c)| c).sum();
                prop_assert!(total <= d.instances);
                let missing = alloc.unplaced.iter().find(|u| u.app == d.app);
                match missing {
                    Some(u) => prop_assert_eq!(u.placed, total),
                    None => prop_assert_eq!(total, d.instances, "fits: all placed"),
                }
                for &(i, c) in placed {
                    prop_assert!(c > 0);
                    prop_assert_eq!(hosts[i].state, HostState::Ready, "only ready hosts");
                    prop_assert!(matches(&hosts[i].labels, d.labels), "only matching hosts");
                    used[i] = add(used[i], d.need, c);
                }
            }
            prop_assert_eq!(&used, &alloc.used);
            for (h, u) in hosts.iter().zip(&used) {
                let cap = h.capacity;
                prop_assert!(cap.cpu_millis == 0 || u.cpu_millis <= cap.cpu_millis, "cpu over capacity on {}", h.name);
                prop_assert!(cap.memory_bytes == 0 || u.memory_bytes <= cap.memory_bytes, "memory over capacity on {}", h.name);
            }
        }

        #[test]
        fn placing_again_moves_nothing((hosts, apps) in cluster()) {
            let (ds, first) = run(&hosts, &apps, &Previous::new());
            let previous = previous_from(&hosts, &ds, &first);
            let (_, second) = run(&hosts, &apps, &previous);
            prop_assert_eq!(first.placed, second.placed);
        }

        #[test]
        fn a_new_host_takes_only_the_excess((mut hosts, apps) in cluster()) {
            hosts.retain(|h| h.state == HostState::Ready);
            let (ds, first) = run(&hosts, &apps, &Previous::new());
            let previous = previous_from(&hosts, &ds, &first);
            let mut more = hosts.clone();
            more.push(HostInfo {
                name: "zz".into(),
                labels: BTreeMap::from([("zone".to_string(), "0".to_string())]),
                capacity: Capacity::default(),
                state: HostState::Ready,
            });
            let (_, second) = run(&more, &apps, &previous);
            for ((d, before), after) in ds.iter().zip(&first.placed).zip(&second.placed) {
                let eligible = more
                    .iter()
                    .filter(|h| matches(&h.labels, d.labels))
                    .count();
                let cap = if d.spread && eligible > 0 {
                    d.instances.div_ceil(u32::try_from(eligible).unwrap())
                } else {
                    d.instances
                };
                for &(i, c) in before {
                    let now = after.iter().find(|(j, _)| *j == i).map_or(0, |(_, c)| *c);
                    prop_assert!(now >= c.min(cap), "{} lost more than its excess on {}", d.app, hosts[i].name);
                }
                let total_before: u32 = before.iter().map(|(_, c)| c).sum();
                let total_after: u32 = after.iter().map(|(_, c)| c).sum();
                prop_assert!(total_after >= total_before, "a new host never loses instances");
            }
        }
    }
}

//! Garbage-collection decisions, as pure functions over records and use marks.
//!
//! The rule (docs/images.md): an image is kept while anything marks it in use (a container,
//! or one of the last [`KEEP_REVISIONS`] revisions of an app, which the agent marks so that a
//! rollback works with the registry down). `berth image prune` removes unused dangling images
//! (no tag points to them and they were not pulled by digest); `--all` removes every unused
//! image. A snapshot is removed once no remaining
//! image lists its chain id; snapshots no record lists (left by an interrupted pull) go too.

use std::collections::BTreeSet;

use super::digest::Digest;
use super::record::{ImageRecord, ImageUse};

/// How many of an app's most recent revisions keep their images on each host.
pub const KEEP_REVISIONS: usize = 3;

/// What a prune removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Image records to delete, by manifest digest.
    pub images: Vec<Digest>,
    /// Snapshots to delete, by chain id.
    pub snapshots: Vec<Digest>,
}

/// Whether any use mark holds `image`.
pub fn in_use(uses: &[ImageUse], image: &Digest) -> bool {
    uses.iter().any(|u| &u.image == image)
}

/// Decides what a prune removes. `all` also removes tagged images; in-use images stay either
/// way. `snapshots_on_disk` lists every committed snapshot, so orphans are collected too.
pub fn prune_plan(
    records: &[ImageRecord],
    uses: &[ImageUse],
    snapshots_on_disk: &[Digest],
    all: bool,
) -> PrunePlan {
    let (remove, keep): (Vec<&ImageRecord>, Vec<&ImageRecord>) = records
        .iter()
        .partition(|r| !in_use(uses, &r.manifest_digest) && (all || r.is_dangling()));
    PrunePlan {
        images: remove.iter().map(|r| r.manifest_digest.clone()).collect(),
        snapshots: unreferenced_snapshots(&keep, snapshots_on_disk),
    }
}

/// The snapshots on disk that none of `kept` lists.
pub fn unreferenced_snapshots(kept: &[&ImageRecord], snapshots_on_disk: &[Digest]) -> Vec<Digest> {
    let live: BTreeSet<&Digest> = kept.iter().flat_map(|r| r.chain_ids()).collect();
    snapshots_on_disk
        .iter()
        .filter(|s| !live.contains(s))
        .cloned()
        .collect()
}

/// The use marks that keep the images of an app's last [`KEEP_REVISIONS`] revisions, given
/// `(revision number, image manifest digest)` pairs in any order.
pub fn revision_uses(app: &str, revisions: &[(u64, Digest)]) -> Vec<ImageUse> {
    let mut sorted: Vec<&(u64, Digest)> = revisions.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.0));
    sorted
        .into_iter()
        .take(KEEP_REVISIONS)
        .map(|(n, d)| ImageUse {
            holder: format!("revision/{app}/{n}"),
            image: d.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{LayerRecord, Platform};

    fn layer(n: u8) -> LayerRecord {
        LayerRecord {
            digest: Digest::of(&[n, 0]),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 1,
            diff_id: Digest::of(&[n, 1]),
            chain_id: Digest::of(&[n, 2]),
            unpacked_size: 10,
        }
    }

    fn record(n: u8, tags: &[&str], layers: &[u8]) -> ImageRecord {
        ImageRecord {
            manifest_digest: Digest::of(&[n]),
            index_digest: None,
            config_digest: Digest::of(&[n, 9]),
            repositories: vec!["r/x".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            digest_refs: vec![],
            platform: Platform::host(),
            created: None,
            pulled_at: 0,
            layers: layers.iter().map(|l| layer(*l)).collect(),
        }
    }

    #[test]
    fn prune_removes_dangling_unused_images_and_their_private_snapshots() {
        let tagged = record(1, &["r/x:1"], &[1, 2]);
        let dangling = record(2, &[], &[1, 3]);
        let disk = vec![layer(1).chain_id, layer(2).chain_id, layer(3).chain_id];
        let plan = prune_plan(&[tagged, dangling.clone()], &[], &disk, false);
        assert_eq!(plan.images, vec![dangling.manifest_digest]);
        // Layer 1 is shared with the tagged image and stays.
        assert_eq!(plan.snapshots, vec![layer(3).chain_id]);
    }

    #[test]
    fn images_pulled_by_digest_are_not_dangling() {
        let mut pinned = record(1, &[], &[1]);
        pinned.digest_refs = vec![format!("r/x@{}", pinned.manifest_digest)];
        let plan = prune_plan(&[pinned.clone()], &[], &[layer(1).chain_id], false);
        assert!(plan.images.is_empty() && plan.snapshots.is_empty());
        let plan = prune_plan(&[pinned.clone()], &[], &[layer(1).chain_id], true);
        assert_eq!(plan.images, vec![pinned.manifest_digest]);
    }

    #[test]
    fn prune_all_keeps_images_in_use() {
        let used = record(1, &["r/x:1"], &[1]);
        let unused = record(2, &["r/x:2"], &[2]);
        let uses = [ImageUse {
            holder: "container/c1".into(),
            image: used.manifest_digest.clone(),
        }];
        let disk = vec![layer(1).chain_id, layer(2).chain_id];
        let plan = prune_plan(&[used, unused.clone()], &uses, &disk, true);
        assert_eq!(plan.images, vec![unused.manifest_digest]);
        assert_eq!(plan.snapshots, vec![layer(2).chain_id]);
    }

    #[test]
    fn orphan_snapshots_from_interrupted_pulls_are_collected() {
        let kept = record(1, &["r/x:1"], &[1]);
        let disk = vec![layer(1).chain_id, layer(7).chain_id];
        let plan = prune_plan(&[kept], &[], &disk, false);
        assert!(plan.images.is_empty());
        assert_eq!(plan.snapshots, vec![layer(7).chain_id]);
    }

    #[test]
    fn revision_uses_keep_the_last_three_revisions() {
        let revs: Vec<(u64, Digest)> = (1..=5).map(|n| (n, Digest::of(&[n as u8]))).collect();
        let uses = revision_uses("web", &revs);
        let holders: Vec<&str> = uses.iter().map(|u| u.holder.as_str()).collect();
        assert_eq!(
            holders,
            ["revision/web/5", "revision/web/4", "revision/web/3"]
        );
    }
}

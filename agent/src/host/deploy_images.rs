//! The reconcile's [`Images`] adapter over the image store ([`ImageStore`]): an image pinned
//! by digest is looked up locally first and pulled only when missing, so a rollback works with
//! the registry down once the image is on the host. Holds no state of its own and must not
//! touch the store's files directly.

use std::sync::Arc;

use berth_manifests::ImageRef;

use crate::host::image_store::{ImageStore, NoProgress, PullOptions};
use crate::image::Reference;
use crate::reconcile::traits::{EffectError, Images, LocalImage};

/// Images from the host's image store.
#[derive(Debug, Clone)]
pub struct StoreImages {
    store: ImageStore,
    options: Arc<PullOptions>,
}

impl StoreImages {
    /// Uses `store`, pulling with `options` (registry access, platform, limits).
    pub fn new(store: ImageStore, options: PullOptions) -> Self {
        Self {
            store,
            options: Arc::new(options),
        }
    }
}

impl Images for StoreImages {
    async fn ensure(&self, image: &ImageRef, digest: &str) -> Result<LocalImage, EffectError> {
        let pinned = format!("{}@{digest}", image.name());
        let local = |img: crate::host::image_store::Image| LocalImage {
            reference: pinned.clone(),
            digest: img.digest().to_string(),
        };
        if let Ok(found) = self.store.get(&pinned) {
            return Ok(local(found));
        }
        let reference: Reference = pinned.parse().map_err(|e| {
            EffectError::new("pull", &pinned, berth_manifests::ErrorKind::InvalidInput, e)
        })?;
        let pulled = self
            .store
            .pull(&reference, &self.options, &NoProgress)
            .await
            .map_err(|e| EffectError::new("pull", &pinned, kind(e.kind()), e))?;
        Ok(local(pulled))
    }
}

/// The image store's class in the shared vocabulary.
fn kind(kind: crate::image::ErrorKind) -> berth_manifests::ErrorKind {
    use crate::image::ErrorKind as I;
    use berth_manifests::ErrorKind as K;
    match kind {
        I::InvalidInput => K::InvalidInput,
        I::NotFound => K::NotFound,
        I::Conflict => K::Conflict,
        I::Unavailable => K::Unavailable,
        I::ResourceExhausted => K::ResourceExhausted,
        I::Internal => K::Internal,
    }
}

//! The reconcile's [`Images`] adapter over the image store ([`ImageStore`]): an image pinned
//! by digest is looked up locally first and pulled only when missing, so a rollback works with
//! the registry down once the image is on the host. Holds no state of its own and must not
//! touch the store's files directly.

use std::sync::Arc;

use berth_manifests::ImageRef;

use crate::host::image_store::{ImageStore, PullOptions};
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
        let counted = CountBytes::default();
        #[allow(
            clippy::disallowed_methods,
            reason = "metrics edge: the pull's duration"
        )]
        let started = std::time::Instant::now();
        let pulled = self.store.pull(&reference, &self.options, &counted).await;
        crate::metrics::global().pulled(
            pulled.is_ok(),
            counted.total(),
            started.elapsed().as_secs_f64(),
        );
        let pulled = pulled.map_err(|e| EffectError::new("pull", &pinned, kind(e.kind()), e))?;
        Ok(local(pulled))
    }
}

/// Counts the compressed bytes a pull fetched: the last progress figure of every layer.
#[derive(Debug, Default)]
struct CountBytes {
    layers: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl CountBytes {
    fn total(&self) -> u64 {
        self.layers
            .lock()
            .map(|l| l.values().sum())
            .unwrap_or_default()
    }
}

impl crate::host::image_store::PullProgress for CountBytes {
    fn event(&self, event: crate::host::image_store::PullEvent) {
        if let crate::host::image_store::PullEvent::LayerProgress { digest, bytes, .. } = event
            && let Ok(mut layers) = self.layers.lock()
        {
            layers.insert(digest.to_string(), bytes);
        }
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

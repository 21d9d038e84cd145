//! A [`Runtime`] for builds without the container runtime adapter: it lists no containers and
//! refuses to start any (`unavailable`, so the reconcile retries with backoff and the status
//! says why). `berth agent` uses it until the runtime (issue 3) is wired in; it is not a fake
//! and runs nothing.

use std::time::Duration;

use berth_manifests::{ErrorKind, Signal};

use crate::reconcile::traits::{EffectError, InstanceSpec, LocalImage, ObservedInstance, Runtime};

/// Runs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRuntime;

const WHY: &str = "this berth build has no container runtime wired into the agent yet";

impl Runtime for NoRuntime {
    async fn list(&self) -> Result<Vec<ObservedInstance>, EffectError> {
        Ok(Vec::new())
    }

    async fn create_start(
        &self,
        spec: &InstanceSpec,
        _image: &LocalImage,
    ) -> Result<(), EffectError> {
        Err(EffectError::new(
            "create_start",
            &spec.id,
            ErrorKind::Unavailable,
            WHY,
        ))
    }

    async fn signal(&self, _id: &str, _signal: Signal) -> Result<(), EffectError> {
        Ok(())
    }

    async fn remove(&self, _id: &str) -> Result<(), EffectError> {
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<i32, EffectError> {
        Err(EffectError::new("exec", id, ErrorKind::Unavailable, WHY))
    }

    async fn log_tail(&self, _id: &str, _lines: usize) -> Result<Vec<String>, EffectError> {
        Ok(Vec::new())
    }
}

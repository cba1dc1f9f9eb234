//! Content provgate interprets itself (a release list, the layer list of a mounted artifact): the exact bytes of one
//! manifest or blob by digest, checked against it and read within a cap the caller sets below the usual ones.

use bytes::Bytes;
use tokio::time::Instant;

use super::RegistryError;
use super::artifacts::blob;
use super::budget::{Budget, READ_SCOPE};
use super::config::RegistryConfig;
use super::transport::Session;
use crate::images::Digest;

/// What a digest names, for [`super::Registry::content`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// A manifest or index, read with the full Accept list.
    Manifest,
    /// A blob.
    Blob,
}

/// The bytes of `digest` in `repo`, at most `max_bytes` (and within the manifest or blob cap and `budget`): a
/// longer answer, declared or sent, is cut and is [`RegistryError::TooLarge`] with `max_bytes` as its limit.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    kind: ContentKind,
    max_bytes: u64,
    budget: &Budget,
    deadline: Instant,
) -> Result<Bytes, RegistryError> {
    let capped = budget.capped(max_bytes);
    let read = match kind {
        ContentKind::Manifest => {
            let what = format!("manifest {repo}@{digest}");
            super::manifest_by_digest(s, repo, digest, &what, &capped, deadline).await.map(|reply| reply.body)
        }
        ContentKind::Blob => blob(s, cfg, repo, digest, 0, &capped, deadline).await,
    };
    read.map_err(|e| match e {
        RegistryError::OverBudget { registry, what, scope, .. } if scope == READ_SCOPE => {
            RegistryError::TooLarge { registry, what, limit: max_bytes }
        }
        other => other,
    })
}

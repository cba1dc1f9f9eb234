//! Cosign artifacts of one digest: `.sig`/`.att` tags and OCI 1.1 referrers (API with `Link` pages, or tag schema).

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use tokio::time::Instant;

use super::INDEX_TYPES;
use super::RegistryError;
use super::config::RegistryConfig;
use super::transport::{Reply, Session, Want, check_digest, error_excerpt};
use crate::artifact::{Artifacts, Layer, Origin, media_type};
use crate::images::Digest;

/// Blobs or referrer manifests fetched at once from one registry.
const PARALLEL: usize = 4;

enum Kind {
    Signature,
    Attestation,
    Bundle,
}

fn kind(layer_media_type: &str) -> Option<Kind> {
    match layer_media_type {
        media_type::SIMPLE_SIGNING => Some(Kind::Signature),
        media_type::DSSE_ENVELOPE => Some(Kind::Attestation),
        mt if mt.starts_with(media_type::BUNDLE_PREFIX) => Some(Kind::Bundle),
        _ => None,
    }
}

/// Everything stored for `digest` in `repo`: `.sig`, `.att` and referrers, fetched concurrently.
pub(crate) async fn gather(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    deadline: Instant,
) -> Result<Artifacts, RegistryError> {
    let (sig_tag, att_tag) = (format!("{}.sig", digest.tag_form()), format!("{}.att", digest.tag_form()));
    let (sig, att, refs) = futures::try_join!(
        tagged(s, cfg, repo, &sig_tag, Origin::SigTag, deadline),
        tagged(s, cfg, repo, &att_tag, Origin::AttTag, deadline),
        referrers(s, cfg, repo, digest, deadline),
    )?;
    let mut out = Artifacts::default();
    for layer in sig.into_iter().chain(att).chain(refs) {
        match kind(&layer.media_type) {
            Some(Kind::Signature) => out.signatures.push(layer),
            Some(Kind::Attestation) => out.attestations.push(layer),
            Some(Kind::Bundle) => out.bundles.push(layer),
            None => {}
        }
    }
    Ok(out)
}

/// The manifest a tag names, or None when the tag does not exist (404 is "nothing stored here", not an error).
async fn tagged_manifest(
    s: &Session,
    repo: &str,
    tag: &str,
    what: &str,
    deadline: Instant,
) -> Result<Option<Reply>, RegistryError> {
    let url = s.url(repo, &format!("manifests/{tag}"));
    let reply = s.request(Want::Manifest, repo, &url, what, deadline).await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    expect_ok(s, &reply, what)?;
    check_header_digest(s, &reply, what)?;
    Ok(Some(reply))
}

/// The layers of the cosign manifest at `tag`; none when the tag does not exist.
async fn tagged(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    tag: &str,
    origin: Origin,
    deadline: Instant,
) -> Result<Vec<Layer>, RegistryError> {
    let what = format!("manifest {repo}:{tag}");
    let Some(reply) = tagged_manifest(s, repo, tag, &what, deadline).await? else { return Ok(Vec::new()) };
    let manifest: OciImageManifest = parse(s, &reply.body, &what)?;
    layers(s, cfg, repo, &manifest, &BTreeMap::new(), origin, deadline).await
}

/// Fetches the known-media-type layers of `manifest`, each checked against its descriptor digest.
async fn layers(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    manifest: &OciImageManifest,
    inherited: &BTreeMap<String, String>,
    origin: Origin,
    deadline: Instant,
) -> Result<Vec<Layer>, RegistryError> {
    let wanted: Vec<&OciDescriptor> = manifest.layers.iter().filter(|l| kind(&l.media_type).is_some()).collect();
    if wanted.len() > cfg.max_layers {
        return Err(RegistryError::TooLarge {
            registry: s.host().to_owned(),
            what: format!("the layer list of a signature manifest in {repo} ({} layers)", wanted.len()),
            limit: cfg.max_layers as u64,
        });
    }
    let fetches: Vec<_> = wanted
        .into_iter()
        .map(|desc| layer(s, cfg, repo, desc.clone(), inherited.clone(), origin.clone(), deadline))
        .collect();
    futures::stream::iter(fetches).buffered(PARALLEL).try_collect().await
}

async fn layer(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    desc: OciDescriptor,
    mut annotations: BTreeMap<String, String>,
    origin: Origin,
    deadline: Instant,
) -> Result<Layer, RegistryError> {
    let digest = parse_digest(s, &desc.digest, &format!("a layer descriptor in {repo}"))?;
    let data = blob(s, cfg, repo, &digest, desc.size, deadline).await?;
    annotations.extend(desc.annotations.unwrap_or_default());
    Ok(Layer { origin, media_type: desc.media_type, digest, data, annotations })
}

/// A blob, read within the cap and checked against its digest.
pub(crate) async fn blob(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    declared: i64,
    deadline: Instant,
) -> Result<Vec<u8>, RegistryError> {
    let what = format!("blob {repo}@{digest}");
    if declared > 0 && declared as u64 > cfg.max_blob_bytes {
        return Err(RegistryError::TooLarge { registry: s.host().to_owned(), what, limit: cfg.max_blob_bytes });
    }
    let url = s.url(repo, &format!("blobs/{digest}"));
    let reply = s.request(Want::Blob, repo, &url, &what, deadline).await?;
    expect_ok(s, &reply, &what)?;
    check_digest(s.host(), &what, digest, &reply.body)?;
    Ok(reply.body.to_vec())
}

/// Layers of every referrer of `digest`: the referrers API, or the tag schema where the API is missing.
async fn referrers(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    deadline: Instant,
) -> Result<Vec<Layer>, RegistryError> {
    let descriptors = match referrers_api(s, cfg, repo, digest, deadline).await? {
        Some(found) => found,
        None => referrers_tag(s, repo, digest, deadline).await?,
    };
    let manifests: Vec<_> = descriptors
        .into_iter()
        .filter(|d| d.media_type == oci_client::manifest::OCI_IMAGE_MEDIA_TYPE)
        .take(cfg.max_layers)
        .collect();
    let fetches: Vec<_> =
        manifests.into_iter().map(|desc| referrer_layers(s, cfg, repo, digest, desc, deadline)).collect();
    let per_referrer: Vec<Vec<Layer>> = futures::stream::iter(fetches).buffered(PARALLEL).try_collect().await?;
    Ok(per_referrer.into_iter().flatten().collect())
}

async fn referrer_layers(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    subject: &Digest,
    desc: oci_client::manifest::ImageIndexEntry,
    deadline: Instant,
) -> Result<Vec<Layer>, RegistryError> {
    let digest = parse_digest(s, &desc.digest, &format!("a referrer of {repo}@{subject}"))?;
    let what = format!("referrer manifest {repo}@{digest}");
    let body = super::manifest_by_digest(s, repo, &digest, &what, deadline).await?.body;
    let manifest: OciImageManifest = parse(s, &body, &what)?;
    if manifest.subject.as_ref().is_some_and(|sub| sub.digest != subject.to_string()) {
        tracing::debug!(registry = s.host(), %digest, "referrer names another subject; skipped");
        return Ok(Vec::new());
    }
    let artifact_type = desc
        .artifact_type
        .clone()
        .or_else(|| manifest.artifact_type.clone())
        .or(Some(manifest.config.media_type.clone()));
    let inherited = manifest.annotations.clone().unwrap_or_default();
    let origin = Origin::Referrer { manifest: digest, artifact_type };
    layers(s, cfg, repo, &manifest, &inherited, origin, deadline).await
}

/// The referrers API, all `Link` pages; `None` when the registry does not offer the API.
async fn referrers_api(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    deadline: Instant,
) -> Result<Option<Vec<oci_client::manifest::ImageIndexEntry>>, RegistryError> {
    let what = format!("referrers of {repo}@{digest}");
    let mut next = Some(s.url(repo, &format!("referrers/{digest}")));
    let mut found = Vec::new();
    let mut pages = 0;
    while let Some(url) = next.take() {
        if pages == cfg.max_referrer_pages {
            return Err(RegistryError::TooLarge {
                registry: s.host().to_owned(),
                what: format!("{what} (pages)"),
                limit: cfg.max_referrer_pages as u64,
            });
        }
        let reply = s.request(Want::Referrers, repo, &url, &what, deadline).await?;
        if pages == 0 && matches!(reply.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
            return Ok(None);
        }
        expect_ok(s, &reply, &what)?;
        let index: OciImageIndex = parse(s, &reply.body, &what)?;
        found.extend(index.manifests);
        next = next_link(s, &reply, &what)?;
        pages += 1;
    }
    Ok(Some(found))
}

/// The referrers tag schema: an index tagged `sha256-<hex>`; missing or not an index means no referrers.
async fn referrers_tag(
    s: &Session,
    repo: &str,
    digest: &Digest,
    deadline: Instant,
) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, RegistryError> {
    let tag = digest.tag_form();
    let what = format!("referrers index {repo}:{tag}");
    let Some(reply) = tagged_manifest(s, repo, &tag, &what, deadline).await? else { return Ok(Vec::new()) };
    if !super::media_type_of(&reply).is_some_and(|mt| INDEX_TYPES.contains(&mt.as_str())) {
        return Ok(Vec::new());
    }
    let index: OciImageIndex = parse(s, &reply.body, &what)?;
    Ok(index.manifests)
}

/// The `rel="next"` target of a `Link` header, resolved against the page's URL and kept on the same origin.
fn next_link(s: &Session, reply: &Reply, what: &str) -> Result<Option<String>, RegistryError> {
    let Some(link) =
        reply.headers.get_all(header::LINK).iter().filter_map(|v: &HeaderValue| v.to_str().ok()).find_map(|v| {
            v.split(',').find(|part| part.contains("rel=\"next\"") || part.contains("rel=next")).map(str::to_owned)
        })
    else {
        return Ok(None);
    };
    let malformed =
        |detail: String| RegistryError::Malformed { registry: s.host().to_owned(), what: what.to_owned(), detail };
    let target = link
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(t, _)| t.trim())
        .ok_or_else(|| malformed(format!("unreadable Link header {link:?}")))?;
    let next = reply.url.join(target).map_err(|e| malformed(format!("Link target {target:?}: {e}")))?;
    if next.origin() != reply.url.origin() {
        return Err(malformed(format!("Link header points to another server ({next})")));
    }
    Ok(Some(next.to_string()))
}

pub(crate) fn expect_ok(s: &Session, reply: &Reply, what: &str) -> Result<(), RegistryError> {
    match reply.status {
        st if st.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(RegistryError::NotFound { registry: s.host().to_owned(), what: what.to_owned() }),
        st => Err(RegistryError::Malformed {
            registry: s.host().to_owned(),
            what: what.to_owned(),
            detail: format!("unexpected HTTP {st}{}", error_excerpt(&reply.body)),
        }),
    }
}

/// When the registry states the digest of a manifest fetched by tag, the bytes must hash to it.
pub(crate) fn check_header_digest(s: &Session, reply: &Reply, what: &str) -> Result<(), RegistryError> {
    match reply.header(header::HeaderName::from_static("docker-content-digest")).map(Digest::parse) {
        Some(Ok(d)) => check_digest(s.host(), what, &d, &reply.body),
        _ => Ok(()),
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(s: &Session, body: &[u8], what: &str) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Malformed {
        registry: s.host().to_owned(),
        what: what.to_owned(),
        detail: format!("not the expected JSON: {e}"),
    })
}

pub(crate) fn parse_digest(s: &Session, digest: &str, what: &str) -> Result<Digest, RegistryError> {
    Digest::parse(digest).map_err(|e| RegistryError::Malformed {
        registry: s.host().to_owned(),
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_kept_by_their_own_media_type() {
        let table: &[(&str, Option<&str>)] = &[
            (media_type::SIMPLE_SIGNING, Some("sig")),
            (media_type::DSSE_ENVELOPE, Some("att")),
            (media_type::BUNDLE_V03, Some("bundle")),
            ("application/vnd.dev.sigstore.bundle+json;version=0.2", Some("bundle")),
            ("application/vnd.dev.sigstore.bundle+json;version=0.3", Some("bundle")),
            ("application/vnd.oci.empty.v1+json", None),
            ("application/spdx+json", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", None),
        ];
        for (mt, want) in table {
            let got = kind(mt).map(|k| match k {
                Kind::Signature => "sig",
                Kind::Attestation => "att",
                Kind::Bundle => "bundle",
            });
            assert_eq!(got, *want, "{mt}");
        }
    }
}

//! Cosign artifacts of one digest: `.sig`/`.att` tags and OCI 1.1 referrers (API with `Link` pages, or tag schema).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use tokio::time::Instant;

use super::INDEX_TYPES;
use super::RegistryError;
use super::budget::Budget;
use super::config::RegistryConfig;
use super::transport::{Reply, Session, Want, check_digest, error_excerpt};
use crate::artifact::{self, Artifacts, Layer, Origin, media_type};
use crate::images::{DOCKER_HUB, Digest, ImageRef};

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

/// One `gather`: the session, settings, repository, the image's budget and deadline, and the blobs read so far.
struct Fetch<'a> {
    s: &'a Session,
    cfg: &'a RegistryConfig,
    repo: &'a str,
    budget: &'a Budget,
    deadline: Instant,
    /// Each blob digest read once, its bytes shared by every layer that lists it.
    blobs: Mutex<HashMap<Digest, Arc<tokio::sync::OnceCell<Bytes>>>>,
    /// The image's repository and digest, for the payloads cosign writes by default.
    at: &'a ImageRef,
    digest: &'a Digest,
    /// Those payloads, by their digest, made when the first simple-signing layer is met: a `.sig` layer whose
    /// descriptor names one of them holds exactly these bytes (SHA-256 binds them as a read would), so its blob is
    /// not read.
    known: std::sync::OnceLock<Vec<(Digest, Bytes)>>,
}

/// What is stored for `digest` in `at`'s repository in the places `wanted` names (`.sig`, `.att`, referrers),
/// fetched concurrently within `budget`.
pub(crate) async fn gather(
    s: &Session,
    cfg: &RegistryConfig,
    at: &ImageRef,
    digest: &Digest,
    wanted: super::Wanted,
    budget: &Budget,
    deadline: Instant,
) -> Result<Artifacts, RegistryError> {
    let blobs = Mutex::new(HashMap::new());
    let f = Fetch { s, cfg, repo: at.repository(), budget, deadline, blobs, at, digest, known: Default::default() };
    let (sig_tag, att_tag) = (format!("{}.sig", digest.tag_form()), format!("{}.att", digest.tag_form()));
    // Each place is asked only when wanted: a place not asked costs no request.
    let refs = async { if wanted.storage.referrers { referrers(&f, digest).await } else { Ok(Vec::new()) } };
    let (sig, att, refs) = futures::try_join!(
        tagged_if(&f, wanted, &sig_tag, Origin::SigTag),
        tagged_if(&f, wanted, &att_tag, Origin::AttTag),
        refs
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

/// The payloads cosign writes by default for `digest` signed in `at`'s repository, under each name cosign may give
/// the repository (Docker Hub's as go-containerregistry writes it, and as written), with their digests.
fn default_payloads(at: &ImageRef, digest: &Digest) -> Vec<(Digest, Bytes)> {
    let mut names = vec![at.name()];
    if at.registry() == DOCKER_HUB {
        names.push(format!("index.docker.io/{}", at.repository()));
    }
    names
        .iter()
        .map(|name| {
            let payload = Bytes::from(artifact::default_payload(name, digest));
            (Digest::sha256_of(&payload), payload)
        })
        .collect()
}

/// The manifest a tag names, or None when the tag does not exist (404 is "nothing stored here", not an error).
async fn tagged_manifest(f: &Fetch<'_>, tag: &str, what: &str) -> Result<Option<Reply>, RegistryError> {
    let url = f.s.url(f.repo, &format!("manifests/{tag}"));
    let reply = f.s.request(Want::Manifest, f.repo, &url, what, f.budget, f.deadline).await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    expect_ok(f.s, &reply, what)?;
    check_header_digest(f.s, &reply, what)?;
    Ok(Some(reply))
}

/// [`tagged`] when `wanted` keeps what `origin` holds; nothing, and no request, when it does not.
async fn tagged_if(
    f: &Fetch<'_>,
    wanted: super::Wanted,
    tag: &str,
    origin: Origin,
) -> Result<Vec<Layer>, RegistryError> {
    if !wanted.keeps(&origin) {
        return Ok(Vec::new());
    }
    tagged(f, tag, origin).await
}

/// The layers of the cosign manifest at `tag`; none when the tag does not exist.
async fn tagged(f: &Fetch<'_>, tag: &str, origin: Origin) -> Result<Vec<Layer>, RegistryError> {
    let what = format!("manifest {}:{tag}", f.repo);
    let Some(reply) = tagged_manifest(f, tag, &what).await? else { return Ok(Vec::new()) };
    let manifest: OciImageManifest = parse(f.s, &reply.body, &what)?;
    drop(reply);
    layers(f, &manifest, &BTreeMap::new(), origin).await
}

/// Fetches the known-media-type layers of `manifest`, each blob once, each checked against its descriptor digest.
async fn layers(
    f: &Fetch<'_>,
    manifest: &OciImageManifest,
    inherited: &BTreeMap<String, String>,
    origin: Origin,
) -> Result<Vec<Layer>, RegistryError> {
    let wanted: Vec<&OciDescriptor> = manifest.layers.iter().filter(|l| kind(&l.media_type).is_some()).collect();
    let what = || format!("the layer list of a signature manifest in {} ({} layers)", f.repo, wanted.len());
    if wanted.len() > f.cfg.max_layers {
        return Err(RegistryError::TooLarge {
            registry: f.s.host().to_owned(),
            what: what(),
            limit: f.cfg.max_layers as u64,
        });
    }
    // Refuse before any download when the distinct blobs declared cannot fit the image's budget.
    let mut distinct = HashSet::new();
    let declared: u64 = wanted
        .iter()
        .filter(|d| distinct.insert(d.digest.as_str()) && !f.started(&d.digest))
        .map(|d| u64::try_from(d.size).unwrap_or(0))
        .fold(0, u64::saturating_add);
    f.budget.check(declared, f.s.host(), &what())?;
    let fetches: Vec<_> =
        wanted.into_iter().map(|desc| layer(f, desc.clone(), inherited.clone(), origin.clone())).collect();
    futures::stream::iter(fetches).buffered(PARALLEL).try_collect().await
}

async fn layer(
    f: &Fetch<'_>,
    desc: OciDescriptor,
    mut annotations: BTreeMap<String, String>,
    origin: Origin,
) -> Result<Layer, RegistryError> {
    let digest = parse_digest(f.s, &desc.digest, &format!("a layer descriptor in {}", f.repo))?;
    let data = match f.known(&desc.media_type, &digest, desc.size) {
        Some(payload) => payload,
        None => f.blob(&digest, desc.size).await?,
    };
    annotations.extend(desc.annotations.unwrap_or_default());
    let layer = Layer { origin, media_type: desc.media_type, digest, data, annotations };
    f.budget.charge_derived(layer.overhead(), f.s.host(), &format!("the annotations of layers in {}", f.repo))?;
    Ok(layer)
}

impl Fetch<'_> {
    /// The bytes of a simple-signing layer that is a default payload of this digest, known without reading them.
    fn known(&self, media_type: &str, digest: &Digest, declared: i64) -> Option<Bytes> {
        if media_type != media_type::SIMPLE_SIGNING {
            return None;
        }
        let known = self.known.get_or_init(|| default_payloads(self.at, self.digest));
        let (_, payload) = known.iter().find(|(d, payload)| d == digest && payload.len() as i64 == declared)?;
        Some(payload.clone())
    }

    /// Whether `digest` is already read (or being read) in this gather.
    fn started(&self, digest: &str) -> bool {
        let Ok(digest) = Digest::parse(digest) else { return false };
        self.blobs.lock().is_ok_and(|b| b.contains_key(&digest))
    }

    /// The blob `digest`, read once per gather however many layers list it.
    async fn blob(&self, digest: &Digest, declared: i64) -> Result<Bytes, RegistryError> {
        let cell = match self.blobs.lock() {
            Ok(mut blobs) => blobs.entry(digest.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let read =
            cell.get_or_try_init(|| blob(self.s, self.cfg, self.repo, digest, declared, self.budget, self.deadline));
        read.await.cloned()
    }
}

/// A blob, read within the cap and `budget`, and checked against its digest.
pub(crate) async fn blob(
    s: &Session,
    cfg: &RegistryConfig,
    repo: &str,
    digest: &Digest,
    declared: i64,
    budget: &Budget,
    deadline: Instant,
) -> Result<Bytes, RegistryError> {
    if declared > 0 && declared as u64 > cfg.max_blob_bytes {
        let what = format!("blob {repo}@{digest}");
        return Err(RegistryError::TooLarge { registry: s.host().to_owned(), what, limit: cfg.max_blob_bytes });
    }
    get_blob(s, Want::Blob, repo, digest, budget, deadline).await
}

/// GET the blob `digest` of `repo` as `want` caps it, within `budget`; the bytes must hash to the digest.
pub(crate) async fn get_blob(
    s: &Session,
    want: Want,
    repo: &str,
    digest: &Digest,
    budget: &Budget,
    deadline: Instant,
) -> Result<Bytes, RegistryError> {
    let what = format!("blob {repo}@{digest}");
    let url = s.url(repo, &format!("blobs/{digest}"));
    let reply = s.request(want, repo, &url, &what, budget, deadline).await?;
    expect_ok(s, &reply, &what)?;
    check_digest(s.host(), &what, digest, &reply.body)?;
    Ok(reply.body)
}

/// Layers of every referrer of `digest`: the referrers API, or the tag schema where the API is missing.
async fn referrers(f: &Fetch<'_>, digest: &Digest) -> Result<Vec<Layer>, RegistryError> {
    let api = if f.s.lacks_referrers_api() { None } else { referrers_api(f, digest).await? };
    let descriptors = match api {
        Some(found) => found,
        None => referrers_tag(f, digest).await?,
    };
    let manifests: Vec<_> = descriptors
        .into_iter()
        .filter(|d| d.media_type == oci_client::manifest::OCI_IMAGE_MEDIA_TYPE)
        .take(f.cfg.max_layers)
        .collect();
    let fetches: Vec<_> = manifests.into_iter().map(|desc| referrer_layers(f, digest, desc)).collect();
    let per_referrer: Vec<Vec<Layer>> = futures::stream::iter(fetches).buffered(PARALLEL).try_collect().await?;
    Ok(per_referrer.into_iter().flatten().collect())
}

async fn referrer_layers(
    f: &Fetch<'_>,
    subject: &Digest,
    desc: oci_client::manifest::ImageIndexEntry,
) -> Result<Vec<Layer>, RegistryError> {
    let (s, repo) = (f.s, f.repo);
    let digest = parse_digest(s, &desc.digest, &format!("a referrer of {repo}@{subject}"))?;
    let what = format!("referrer manifest {repo}@{digest}");
    let body = super::manifest_by_digest(s, repo, &digest, &what, f.budget, f.deadline).await?.body;
    let manifest: OciImageManifest = parse(s, &body, &what)?;
    drop(body);
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
    layers(f, &manifest, &inherited, origin).await
}

/// The referrers API, all `Link` pages; `None` when the registry does not offer the API.
async fn referrers_api(
    f: &Fetch<'_>,
    digest: &Digest,
) -> Result<Option<Vec<oci_client::manifest::ImageIndexEntry>>, RegistryError> {
    let (s, cfg, repo) = (f.s, f.cfg, f.repo);
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
        let reply = s.request(Want::Referrers, repo, &url, &what, f.budget, f.deadline).await?;
        if pages == 0 && matches!(reply.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
            // A registry with the API never answers 404 or 405 here (distribution-spec 1.1): it has none.
            s.note_no_referrers_api();
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
    f: &Fetch<'_>,
    digest: &Digest,
) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, RegistryError> {
    let tag = digest.tag_form();
    let what = format!("referrers index {}:{tag}", f.repo);
    let Some(reply) = tagged_manifest(f, &tag, &what).await? else { return Ok(Vec::new()) };
    if !super::media_type_of(&reply).is_some_and(|mt| INDEX_TYPES.contains(&mt.as_str())) {
        return Ok(Vec::new());
    }
    let index: OciImageIndex = parse(f.s, &reply.body, &what)?;
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
mod tests {
    use super::*;

    /// cosign names a Docker Hub repository as go-containerregistry does (`index.docker.io/library/nginx`); other
    /// registries by the name the Pod gives.
    #[test]
    fn default_payloads_name_the_repository_as_cosign_does() {
        let digest = Digest::sha256_of(b"an image manifest");
        let names = |image: &str| -> Vec<String> {
            let image = ImageRef::parse(&format!("{image}@{digest}")).unwrap();
            let known = default_payloads(&image, &digest);
            for (d, payload) in &known {
                assert_eq!(*d, Digest::sha256_of(payload));
            }
            let reference = |p: &Bytes| {
                let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                assert_eq!(v["critical"]["image"]["docker-manifest-digest"], digest.to_string());
                v["critical"]["identity"]["docker-reference"].as_str().unwrap().to_owned()
            };
            known.iter().map(|(_, p)| reference(p)).collect()
        };
        assert_eq!(names("nginx"), ["docker.io/library/nginx", "index.docker.io/library/nginx"]);
        assert_eq!(names("index.docker.io/acme/app"), ["docker.io/acme/app", "index.docker.io/acme/app"]);
        assert_eq!(names("127.0.0.1:5000/team/app"), ["127.0.0.1:5000/team/app"]);
        assert_eq!(names("ghcr.io/org/tool"), ["ghcr.io/org/tool"]);
    }

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

//! Image references (parsed and normalised as the kubelet does) and the one walk over every image field of every
//! pod-bearing kind.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

mod grammar;

/// A content digest such as `sha256:<64 lowercase hex>`. Held as its text, shared: a digest is cloned into every
/// key, record and decision that names it, and a clone is a count, not a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// `algorithm:hex`. The algorithms allowed are all six characters long, so the text orders as the pair does.
    text: Arc<str>,
}

impl Digest {
    /// Parses `alg:hex`, accepting the algorithms OCI allows (sha256, sha384, sha512) in lowercase hex.
    pub fn parse(s: &str) -> Result<Self, RefError> {
        let (algorithm, hex) =
            s.split_once(':').ok_or_else(|| RefError::Digest(format!("{s:?} is not of the form algorithm:hex")))?;
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            other => return Err(RefError::Digest(format!("unsupported digest algorithm {other:?}"))),
        };
        let lower_hex = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != want || !lower_hex {
            return Err(RefError::Digest(format!("{algorithm} digest must be {want} lowercase hex characters")));
        }
        Ok(Self { text: s.into() })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self { text: format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))).into() }
    }

    pub fn algorithm(&self) -> &str {
        self.text.split_once(':').map_or("", |(algorithm, _)| algorithm)
    }

    pub fn hex(&self) -> &str {
        self.text.split_once(':').map_or("", |(_, hex)| hex)
    }

    /// `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The tag cosign derives from this digest: `sha256-<hex>` (suffix `.sig`/`.att` added by callers).
    pub fn tag_form(&self) -> String {
        format!("{}-{}", self.algorithm(), self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why an image reference could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("the image reference is empty")]
    Empty,
    #[error("{0:?} is not a valid image reference: {1}")]
    Syntax(String, String),
    #[error("invalid digest: {0}")]
    Digest(String),
}

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";

/// A registry host the way the container runtime reaches it, so that aliases of one registry are one name: DNS
/// names are case-insensitive (`LOCALHOST:5000` is `localhost:5000`), `:443` is the HTTPS default port
/// (`host:443` is `host`), and Docker Hub answers under several names (`index.docker.io`, `registry-1.docker.io`,
/// `registry.hub.docker.com` are `docker.io`). Policies match, and credentials and host settings are looked up,
/// under this name only.
pub fn canonical_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    let host = lower.strip_suffix(":443").unwrap_or(&lower);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

/// A normalised image reference: `docker.io/library/` added, `latest` when neither tag nor digest is given, and the
/// digest, when present, is what identifies the image (the tag is kept only for display). Its parts are held
/// once, behind one count: a reference is cloned from the plan into the gathering, the decision and the record of
/// every review that names it, and a clone is one increment, not a copy (a reference made from another, pinned to a
/// digest, shares its registry and repository text). Its whole text, `registry/repository[:tag][@digest]`, is
/// written out once, when it is made: every review writes it into its record and matches policies against it. The
/// text determines the parts (a registry holds no `/`, a repository no `:` or `@`, a tag no `@`), so it alone is
/// compared and hashed. Its hash, and its name's, are taken once, when it is made: a review looks an image up in
/// several maps, and the text is about a hundred bytes.
#[derive(Debug, Clone)]
pub struct ImageRef(Arc<Parts>);

#[derive(Debug)]
struct Parts {
    registry: Arc<str>,
    repository: Arc<str>,
    tag: Option<Arc<str>>,
    digest: Option<Digest>,
    text: Box<str>,
    /// [`TEXT_HASH`] of `text`, and of its `registry/repository` part.
    hash: u64,
    name_hash: u64,
}

/// The hasher of references' texts, seeded at random once per process (as a map's own hasher would be), so that
/// the references a pod author writes cannot be chosen to collide.
static TEXT_HASH: std::sync::LazyLock<foldhash::quality::RandomState> = std::sync::LazyLock::new(Default::default);

impl PartialEq for ImageRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.text == other.0.text)
    }
}

impl Eq for ImageRef {}

impl std::hash::Hash for ImageRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

/// References parsed lately: parsing reads the reference grammar (a few µs), and the same few references
/// arrive in review after review. Bounded: at most [`PARSED_MAX`] entries of at most [`PARSED_KEY_MAX`] bytes,
/// dropped all at once when full. Parsing is a pure function of the text, so a remembered answer is the answer.
static PARSED: std::sync::LazyLock<std::sync::Mutex<Parsed>> = std::sync::LazyLock::new(Default::default);
type Parsed = HashMap<String, Result<ImageRef, RefError>, foldhash::quality::RandomState>;
const PARSED_MAX: usize = 1024;
const PARSED_KEY_MAX: usize = 512;

impl ImageRef {
    /// Parses a reference as written in a pod spec (remembering recent answers, see [`PARSED`]).
    pub fn parse(s: &str) -> Result<Self, RefError> {
        if s.len() > PARSED_KEY_MAX {
            return Self::parse_uncached(s);
        }
        let lock = || PARSED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = lock().get(s) {
            return known.clone();
        }
        let parsed = Self::parse_uncached(s);
        let mut parsed_map = lock();
        if parsed_map.len() >= PARSED_MAX {
            parsed_map.clear();
        }
        parsed_map.insert(s.to_owned(), parsed.clone());
        parsed
    }

    /// Parses a reference without remembering it: for bulk input read once (the entries of a release list), which
    /// would otherwise flush the references remembered for reviews.
    pub fn parse_uncached(s: &str) -> Result<Self, RefError> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if s.trim() != s {
            return Err(RefError::Syntax(s.to_owned(), "leading or trailing whitespace".into()));
        }
        let parts = grammar::split(s).map_err(|why| RefError::Syntax(s.to_owned(), why))?;
        let digest = parts.digest.map(Digest::parse).transpose()?;
        let registry = canonical_host(parts.registry);
        let mut repository = parts.repository;
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        Ok(Self::from_parts(registry.into(), repository.into(), parts.tag.map(Arc::from), digest))
    }

    fn from_parts(registry: Arc<str>, repository: Arc<str>, tag: Option<Arc<str>>, digest: Option<Digest>) -> Self {
        let (t, d) = (tag.as_deref(), digest.as_ref().map(Digest::as_str));
        let pieces = [Some(&*registry), Some("/"), Some(&*repository), t.map(|_| ":"), t, d.map(|_| "@"), d];
        let text: Box<str> = pieces.into_iter().flatten().collect::<String>().into();
        let hash = std::hash::BuildHasher::hash_one(&*TEXT_HASH, &*text);
        let name_hash = std::hash::BuildHasher::hash_one(&*TEXT_HASH, &text[..name_len(&registry, &repository)]);
        Self(Arc::new(Parts { registry, repository, tag, digest, text, hash, name_hash }))
    }

    /// Registry host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.0.registry
    }

    pub fn repository(&self) -> &str {
        &self.0.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.0.digest.as_ref()
    }

    /// `registry/repository`, the name globs match against together with the tag or digest.
    pub fn name(&self) -> String {
        self.name_str().to_owned()
    }

    /// `registry/repository`, borrowed.
    pub fn name_str(&self) -> &str {
        &self.0.text[..name_len(&self.0.registry, &self.0.repository)]
    }

    /// The hash of [`Self::name_str`], taken when this was made (equal names, equal hashes, in this process).
    pub fn name_hash(&self) -> u64 {
        self.0.name_hash
    }

    /// `registry/repository[:tag][@digest]`, as [`fmt::Display`] writes it.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The same image pinned to `digest`; the tag stays for display.
    pub fn with_digest(&self, digest: Digest) -> Self {
        if self.0.digest.as_ref() == Some(&digest) {
            return self.clone();
        }
        Self::from_parts(self.0.registry.clone(), self.0.repository.clone(), self.0.tag.clone(), Some(digest))
    }

    /// `registry/repository@digest`: the image `digest` names in this repository, whatever the tag.
    pub fn at_digest(&self, digest: Digest) -> Self {
        if self.0.tag.is_none() && self.0.digest.as_ref() == Some(&digest) {
            return self.clone();
        }
        Self::from_parts(self.0.registry.clone(), self.0.repository.clone(), None, Some(digest))
    }
}

/// The length of `registry/repository`, the start of a reference's text.
fn name_len(registry: &str, repository: &str) -> usize {
    registry.len() + 1 + repository.len()
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

/// The kinds whose objects carry a pod spec, and where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodKind {
    Pod,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl PodKind {
    /// The kind for an API group and kind name, if it is one that carries a pod spec.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        Some(match (group, kind) {
            ("", "Pod") => Self::Pod,
            ("apps", "Deployment") => Self::Deployment,
            ("apps", "ReplicaSet") => Self::ReplicaSet,
            ("apps", "StatefulSet") => Self::StatefulSet,
            ("apps", "DaemonSet") => Self::DaemonSet,
            ("batch", "Job") => Self::Job,
            ("batch", "CronJob") => Self::CronJob,
            _ => return None,
        })
    }

    fn spec_path(self) -> &'static [&'static str] {
        match self {
            Self::Pod => &["spec"],
            Self::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        }
    }
}

/// The pod spec inside an object of `kind`, if it has one.
pub fn pod_spec(kind: PodKind, object: &Value) -> Option<&Value> {
    kind.spec_path().iter().try_fold(object, |at, key| at.get(key))
}

/// One image field of an object: where it is, what it says, and whether that parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageField {
    /// JSON path as users read it, e.g. `spec.template.spec.initContainers[1].image`.
    pub path: Arc<str>,
    /// The reference exactly as written in the object.
    pub raw: Arc<str>,
    pub image: Result<ImageRef, RefError>,
}

/// How the kubelet uses an image: runs it as a container, or mounts its layers as an image volume (whose config,
/// with its entrypoint, user and environment, never runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Use {
    Run,
    Mount,
}

impl ImageField {
    /// [`Use::Mount`] for `volumes[*].image.reference`, [`Use::Run`] for every container image.
    pub fn usage(&self) -> Use {
        if self.path.ends_with(".image.reference") { Use::Mount } else { Use::Run }
    }
}

/// The object does not have the shape its kind requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ShapeError {
    pub path: String,
    pub problem: String,
}

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// Every image field of `object`, in a stable order: init containers, containers, ephemeral containers, image
/// volumes. A missing list is empty; a list or entry of the wrong JSON type is a [`ShapeError`].
pub fn extract(kind: PodKind, object: &Value) -> Result<Vec<ImageField>, ShapeError> {
    let mut spec = object;
    let mut path = String::new();
    for key in kind.spec_path() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        spec = spec
            .get(key)
            .filter(|v| v.is_object())
            .ok_or_else(|| ShapeError { path: path.clone(), problem: "missing or not an object".into() })?;
    }
    let mut fields = Vec::new();
    for list in CONTAINER_LISTS {
        for (i, entry) in array_at(spec, &path, list)?.iter().enumerate() {
            fields.push(image_field(entry, field_path(&path, list, i, "image"), "image")?);
        }
    }
    for (i, volume) in array_at(spec, &path, "volumes")?.iter().enumerate() {
        match volume.get("image") {
            None | Some(Value::Null) => {}
            Some(source) => {
                fields.push(image_field(source, field_path(&path, "volumes", i, "image.reference"), "reference")?);
            }
        }
    }
    Ok(fields)
}

/// The RFC 6901 JSON pointer of a field path that [`extract`] gives (`spec.volumes[1].image.reference` is
/// `/spec/volumes/1/image/reference`), each name escaped (`~` as `~0`, `/` as `~1`); `None` for a path of another
/// shape. [`extract`] builds paths from fixed field names and list indices only, so the split is exact.
pub fn json_pointer(path: &str) -> Option<json_patch::jsonptr::PointerBuf> {
    let mut pointer = json_patch::jsonptr::PointerBuf::new();
    for segment in path.split('.') {
        let (name, index) = match segment.strip_suffix(']').and_then(|s| s.split_once('[')) {
            Some((name, index)) => (name, Some(index)),
            None => (segment, None),
        };
        if name.is_empty() || name.contains(['[', ']']) {
            return None;
        }
        pointer.push_back(name);
        if let Some(index) = index {
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            pointer.push_back(index.parse::<usize>().ok()?);
        }
    }
    Some(pointer)
}

fn array_at<'a>(spec: &'a Value, path: &str, key: &str) -> Result<&'a [Value], ShapeError> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(ShapeError { path: format!("{path}.{key}"), problem: "not a list".into() }),
    }
}

/// `{path}.{list}[{i}].{rest}`, put together without the formatting machinery (every image of every review is
/// named by its field).
fn field_path(path: &str, list: &str, i: usize, rest: &str) -> String {
    let mut index = itoa::Buffer::new();
    [path, ".", list, "[", index.format(i), "].", rest].concat()
}

/// The field `key` of `entry`, at `path` (which ends in `.key`; the path is made once, as the field's name).
fn image_field(entry: &Value, path: String, key: &str) -> Result<ImageField, ShapeError> {
    if !entry.is_object() {
        let at = path.strip_suffix(key).and_then(|p| p.strip_suffix('.')).unwrap_or(&path);
        return Err(ShapeError { path: at.to_owned(), problem: "not an object".into() });
    }
    let raw: Arc<str> = match entry.get(key) {
        None | Some(Value::Null) => "".into(),
        Some(Value::String(s)) => s.as_str().into(),
        Some(_) => return Err(ShapeError { path, problem: "not a string".into() }),
    };
    let image = ImageRef::parse(&raw);
    Ok(ImageField { path: path.into(), raw, image })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_reference_is_its_text_however_it_was_made() {
        let other = Digest::sha256_of(b"another manifest");
        let hash = |r: &ImageRef| std::hash::BuildHasher::hash_one(&foldhash::quality::FixedState::default(), r);
        for written in ["nginx", "nginx:1.27", &format!("nginx@{D}"), &format!("r.example:5000/a/b:1@{D}")] {
            let parsed = ImageRef::parse(written).unwrap();
            for made in [parsed.clone(), parsed.with_digest(other.clone()), parsed.at_digest(other.clone())] {
                let reread = ImageRef::parse(made.as_str()).unwrap();
                assert_eq!(made.as_str(), made.to_string());
                assert_eq!((reread.registry(), reread.repository()), (made.registry(), made.repository()));
                assert_eq!((reread.tag(), reread.digest()), (made.tag(), made.digest()), "{made}");
                assert_eq!((&reread, hash(&reread)), (&made, hash(&made)));
                // Made apart (not read from the remembered parses), the same text hashes the same.
                let apart = ImageRef::parse_uncached(made.as_str()).unwrap();
                assert!(!Arc::ptr_eq(&apart.0, &made.0));
                assert_eq!((&apart, hash(&apart)), (&made, hash(&made)));
                // Whatever the tag or digest, the name hashes as the name.
                assert_eq!(made.name_hash(), parsed.name_hash());
            }
            assert_ne!(parsed, parsed.with_digest(other.clone()));
            assert_ne!(hash(&parsed), hash(&parsed.with_digest(other.clone())));
            let elsewhere = ImageRef::parse(&format!("elsewhere.example/{}", parsed.repository())).unwrap();
            assert_ne!(parsed.name_hash(), elsewhere.name_hash());
        }
        let hub = ImageRef::parse("nginx").unwrap();
        assert_eq!(hub.as_str(), "docker.io/library/nginx:latest");
        assert_eq!(hub.at_digest(other.clone()).as_str(), format!("docker.io/library/nginx@{other}"));
        assert_eq!(hub.with_digest(other.clone()).as_str(), format!("docker.io/library/nginx:latest@{other}"));
        assert_eq!(hub, ImageRef::parse("docker.io/library/nginx:latest").unwrap());
    }

    /// A pod author's references differing by one byte anywhere, written again and again: each is equal only to
    /// its own text (the stored hash only rejects early; the text decides), and no two share a map slot's identity.
    #[test]
    fn references_differing_by_one_byte_are_told_apart_and_the_same_text_made_twice_is_one() {
        let base = format!("registry.example.com/team/app:1.0@{D}");
        let mut seen = std::collections::HashSet::new();
        for at in 0..base.len() {
            for b in [b'0', b'a', b'z'] {
                let mut bytes = base.clone().into_bytes();
                bytes[at] = b;
                let Ok(text) = String::from_utf8(bytes) else { continue };
                let (Ok(one), Ok(again)) = (ImageRef::parse_uncached(&text), ImageRef::parse_uncached(&text)) else {
                    continue;
                };
                assert_eq!(one, again, "{text}");
                seen.insert(one.clone());
                seen.insert(again);
                assert_eq!(seen.iter().filter(|r| r.as_str() == one.as_str()).count(), 1, "{text}");
            }
        }
        let distinct: std::collections::HashSet<&str> = seen.iter().map(ImageRef::as_str).collect();
        assert_eq!(seen.len(), distinct.len());
        assert!(seen.len() > base.len(), "{}", seen.len());
        // The hash is seeded for this process, not foldhash's fixed default.
        let fixed = std::hash::BuildHasher::hash_one(&foldhash::quality::FixedState::default(), base.as_str());
        assert_ne!(ImageRef::parse(&base).unwrap().0.hash, fixed);
    }

    #[test]
    fn a_remembered_parse_is_the_parse_and_the_memory_stays_bounded() {
        let long = format!("registry.example.com/{}:1", "a/".repeat(300));
        let table = [
            "nginx".to_owned(),
            format!("registry.example.com/team/app@{D}"),
            "registry.example.com/team/app:1".to_owned(),
            "Registry.Example.com/team/app:1".to_owned(),
            "UPPER/case".to_owned(),
            " nginx".to_owned(),
            "app@sha256:short".to_owned(),
            long,
        ];
        for raw in &table {
            let fresh = ImageRef::parse_uncached(raw);
            assert_eq!(ImageRef::parse(raw), fresh, "{raw}");
            assert_eq!(ImageRef::parse(raw), fresh, "{raw}, remembered");
        }
        for i in 0..PARSED_MAX + 10 {
            ImageRef::parse(&format!("registry.example.com/team/app:{i}")).unwrap();
        }
        assert!(PARSED.lock().unwrap().len() <= PARSED_MAX);
        assert!(PARSED.lock().unwrap().keys().all(|k| k.len() <= PARSED_KEY_MAX));
    }

    #[test]
    fn references_normalise_like_the_kubelet() {
        let table: &[(&str, &str)] = &[
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
            ("acme/app", "docker.io/acme/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1"),
            ("test:5000/repo", "test:5000/repo:latest"),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest"),
            ("registry.example.com/team/app", "registry.example.com/team/app:latest"),
            ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080"),
            // Aliases of one registry are one name (the runtime reaches the same server under each).
            ("LOCALHOST:5000/x", "localhost:5000/x:latest"),
            ("Registry.Example.com/team/app", "registry.example.com/team/app:latest"),
            ("registry.example.com:443/team/app:1", "registry.example.com/team/app:1"),
            ("registry-1.docker.io/library/x", "docker.io/library/x:latest"),
            ("registry-1.docker.io/x", "docker.io/library/x:latest"),
            ("index.docker.io/x:1", "docker.io/library/x:1"),
            ("registry.hub.docker.com/acme/app", "docker.io/acme/app:latest"),
            ("Docker.IO/x", "docker.io/library/x:latest"),
            ("docker.io:443/x", "docker.io/library/x:latest"),
            ("registry.example.com:4443/team/app", "registry.example.com:4443/team/app:latest"),
        ];
        for (input, want) in table {
            let got = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), *want, "{input}");
            assert!(got.digest().is_none(), "{input}");
        }
    }

    #[test]
    fn digest_wins_over_tag_and_is_kept() {
        let r = ImageRef::parse(&format!("registry.example.com/app:1.0@{D}")).unwrap();
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.name(), "registry.example.com/app");
        let bare = ImageRef::parse(&format!("app@{D}")).unwrap();
        assert_eq!(bare.tag(), None, "no default tag when a digest is given");
        assert_eq!(bare.to_string(), format!("docker.io/library/app@{D}"));
    }

    #[test]
    fn bad_references_are_errors() {
        let short = "app@sha256:0123";
        let upper = "app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        for input in ["", " nginx", "nginx ", "team/UPPER", "app:tag:other", "app@md5:00", short, upper, "a//b"] {
            assert!(ImageRef::parse(input).is_err(), "{input:?} should not parse");
        }
        assert_eq!(ImageRef::parse(""), Err(RefError::Empty));
    }

    #[test]
    fn digest_parsing_and_tag_form() {
        let d = Digest::parse(D).unwrap();
        assert_eq!(d.tag_form(), format!("sha256-{}", &D[7..]));
        assert_eq!(Digest::sha256_of(b"").hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(Digest::parse("sha256-abc").is_err());
    }

    fn pod_spec() -> Value {
        json!({
            "initContainers": [{"name": "init", "image": "busybox"}, {"name": "side", "image": "envoy:1"}],
            "containers": [{"name": "app", "image": format!("registry.example.com/app@{D}")}],
            "ephemeralContainers": [{"name": "debug", "image": "alpine"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "models", "image": {"reference": "registry.example.com/models:v2"}}]
        })
    }

    #[test]
    fn every_kind_yields_every_field_with_its_path() {
        let spec = pod_spec();
        let table: &[(PodKind, Value, &str)] = &[
            (PodKind::Pod, json!({"spec": spec}), "spec"),
            (PodKind::Deployment, json!({"spec": {"template": {"spec": spec}}}), "spec.template.spec"),
            (PodKind::ReplicaSet, json!({"spec": {"template": {"spec": spec}}}), "spec.template.spec"),
            (PodKind::StatefulSet, json!({"spec": {"template": {"spec": spec}}}), "spec.template.spec"),
            (PodKind::DaemonSet, json!({"spec": {"template": {"spec": spec}}}), "spec.template.spec"),
            (PodKind::Job, json!({"spec": {"template": {"spec": spec}}}), "spec.template.spec"),
            (
                PodKind::CronJob,
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}}),
                "spec.jobTemplate.spec.template.spec",
            ),
        ];
        for (kind, object, prefix) in table {
            let fields = extract(*kind, object).unwrap();
            let got: Vec<(String, String)> = fields.iter().map(|f| (f.path.to_string(), f.raw.to_string())).collect();
            let want: Vec<(String, String)> = [
                ("initContainers[0].image", "busybox".to_owned()),
                ("initContainers[1].image", "envoy:1".to_owned()),
                ("containers[0].image", format!("registry.example.com/app@{D}")),
                ("ephemeralContainers[0].image", "alpine".to_owned()),
                ("volumes[1].image.reference", "registry.example.com/models:v2".to_owned()),
            ]
            .into_iter()
            .map(|(p, r)| (format!("{prefix}.{p}"), r))
            .collect();
            assert_eq!(got, want, "{kind:?}");
            assert!(fields.iter().all(|f| f.image.is_ok()), "{kind:?}");
            let uses: Vec<Use> = fields.iter().map(ImageField::usage).collect();
            assert_eq!(uses, [Use::Run, Use::Run, Use::Run, Use::Run, Use::Mount], "{kind:?}: only the volume mounts");
        }
    }

    #[test]
    fn group_and_kind_select_the_walk() {
        assert_eq!(PodKind::from_group_kind("", "Pod"), Some(PodKind::Pod));
        assert_eq!(PodKind::from_group_kind("batch", "CronJob"), Some(PodKind::CronJob));
        assert_eq!(PodKind::from_group_kind("apps", "Pod"), None, "group matters");
        assert_eq!(PodKind::from_group_kind("", "ConfigMap"), None);
    }

    #[test]
    fn missing_or_bad_images_are_fields_with_errors() {
        let object = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "image": "Bad Ref"}]}});
        let fields = extract(PodKind::Pod, &object).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].image, Err(RefError::Empty));
        assert_eq!(&*fields[0].path, "spec.containers[0].image");
        assert!(matches!(fields[1].image, Err(RefError::Syntax(..))));
    }

    #[test]
    fn wrong_shapes_are_errors_naming_the_path() {
        let table: &[(PodKind, Value, &str)] = &[
            (PodKind::Pod, json!({}), "spec"),
            (PodKind::Pod, json!({"spec": "x"}), "spec"),
            (PodKind::Deployment, json!({"spec": {}}), "spec.template"),
            (PodKind::Pod, json!({"spec": {"containers": {}}}), "spec.containers"),
            (PodKind::Pod, json!({"spec": {"containers": ["nginx"]}}), "spec.containers[0]"),
            (PodKind::Pod, json!({"spec": {"containers": [{"image": 5}]}}), "spec.containers[0].image"),
            (PodKind::Pod, json!({"spec": {"volumes": [{"image": "x"}]}}), "spec.volumes[0].image"),
            (
                PodKind::Pod,
                json!({"spec": {"volumes": [{"image": {"reference": []}}]}}),
                "spec.volumes[0].image.reference",
            ),
        ];
        for (kind, object, path) in table {
            let err = extract(*kind, object).unwrap_err();
            assert_eq!(err.path, *path, "{object}");
        }
    }

    #[test]
    fn field_paths_become_escaped_json_pointers() {
        let table: &[(&str, Option<&str>)] = &[
            ("spec.containers[0].image", Some("/spec/containers/0/image")),
            ("spec.volumes[12].image.reference", Some("/spec/volumes/12/image/reference")),
            (
                "spec.jobTemplate.spec.template.spec.initContainers[3].image",
                Some("/spec/jobTemplate/spec/template/spec/initContainers/3/image"),
            ),
            ("a~b.c/d[1]", Some("/a~0b/c~1d/1")),
            ("", None),
            ("spec..image", None),
            ("spec.containers[].image", None),
            ("spec.containers[-1].image", None),
            ("spec.containers[x].image", None),
            ("spec.containers[0][1]", None),
            ("[0]", None),
        ];
        for (path, want) in table {
            assert_eq!(json_pointer(path).as_ref().map(|p| p.as_str()), *want, "{path:?}");
        }
    }

    #[test]
    fn every_extracted_path_points_at_its_own_string() {
        let spec = pod_spec();
        for (kind, object) in [
            (PodKind::Pod, json!({"spec": spec})),
            (PodKind::Deployment, json!({"spec": {"template": {"spec": spec}}})),
            (PodKind::CronJob, json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}})),
        ] {
            for field in extract(kind, &object).unwrap() {
                let pointer = json_pointer(&field.path).unwrap();
                assert_eq!(object.pointer(pointer.as_str()).and_then(Value::as_str), Some(&*field.raw));
            }
        }
    }

    #[test]
    fn empty_pod_spec_has_no_images() {
        assert!(extract(PodKind::Pod, &json!({"spec": {}})).unwrap().is_empty());
    }
}

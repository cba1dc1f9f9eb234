//! The image reference grammar of the distribution project (`[domain[:port]/]path[:tag][@digest]`), read by hand.
//!
//! `oci_spec::distribution::Reference` reads the same grammar with one large regular expression whose `\w` is
//! Unicode-aware: compiling it costs about 12 MB of memory and a tenth of a second, and each parse of a new reference
//! some 150,000 instructions, on the admission path. This reader accepts the same references with the same parts
//! (a differential test holds it to the crate on a corpus and on random strings), except tags with non-ASCII
//! letters, which the distribution grammar does not allow and the crate's Unicode `\w` lets through.

/// A reference split into its parts, before the registry is normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The registry host (and port), Docker Hub's for a name without one.
    pub registry: &'a str,
    /// The repository path; `library/` is prefixed to a one-component Docker Hub name.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<&'a str>,
    /// The digest as written (`algorithm:hex`).
    pub digest: Option<&'a str>,
}

/// The longest repository path the grammar allows.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// The longest tag the grammar allows.
const TAG_MAX: usize = 128;

/// Splits `s` into its parts, or says which part breaks the grammar.
pub fn split(s: &str) -> Result<Parts<'_>, String> {
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    if let Some(d) = digest
        && !is_digest(d)
    {
        return Err("invalid reference format".into());
    }
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) || !is_name(name) {
        return Err("invalid reference format".into());
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(format!("repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"));
    }
    if let Some(d) = digest {
        check_digest_length(d)?;
    }
    let tag = if tag.is_none() && digest.is_none() { Some("latest") } else { tag };
    Ok(Parts { registry, repository, tag, digest })
}

/// `[domain[:port]/]component(/component)*`: the first of several components may be a domain.
fn is_name(name: &str) -> bool {
    let mut components = name.split('/');
    let Some(first) = components.next() else { return false };
    let rest: Vec<&str> = components.collect();
    let first_ok = if rest.is_empty() { is_component(first) } else { is_domain(first) || is_component(first) };
    first_ok && rest.iter().all(|c| is_component(c))
}

/// `host(.host)*(:port)?`, each host label alphanumeric with inner hyphens, the port decimal.
fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+((\.|_|__|-*)[a-z0-9]+)*`.
fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let separator = &b[start..i];
        let ok = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|c| *c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    !b.is_empty() && b.len() <= TAG_MAX && word(&b[0]) && b.iter().all(|c| word(c) || *c == b'.' || *c == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}`.
fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else { return false };
    let part = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(part) && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The hex length each algorithm must have.
fn check_digest_length(d: &str) -> Result<(), String> {
    let (algorithm, hex) = d.split_once(':').ok_or("invalid checksum digest format")?;
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm".into()),
    };
    if hex.len() == want { Ok(()) } else { Err("invalid checksum digest length".into()) }
}

/// The distribution project's rule: the first component is a registry when it has a `.` or a `:`, or is
/// `localhost`; otherwise the name is on Docker Hub, under `library/` when it has one component.
fn split_domain(name: &str) -> (&str, String) {
    let (mut domain, remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => (left, right),
        _ => ("docker.io", name),
    };
    if domain == "index.docker.io" {
        domain = "docker.io";
    }
    if domain == "docker.io" && !remainder.contains('/') {
        return (domain, format!("library/{remainder}"));
    }
    (domain, remainder.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `oci_spec` makes of `s`: (registry, repository, tag, digest), or `None` when it refuses it.
    fn oracle(s: &str) -> Option<(String, String, Option<String>, Option<String>)> {
        let r: oci_spec::distribution::Reference = s.parse().ok()?;
        Some((
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        ))
    }

    fn ours(s: &str) -> Option<(String, String, Option<String>, Option<String>)> {
        let p = split(s).ok()?;
        Some((p.registry.to_owned(), p.repository, p.tag.map(str::to_owned), p.digest.map(str::to_owned)))
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn agrees_with_oci_spec_on_a_corpus() {
        let digest = format!("sha256:{HEX}");
        let long = "a".repeat(256);
        let long_tag = "t".repeat(129);
        let corpus = [
            "busybox".to_owned(),
            "busybox:latest".into(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@{digest}"),
            format!("test:5000/repo:tag@{digest}"),
            format!("repo@{digest}"),
            "lowercase:Uppercase".into(),
            "Uppercase:tag".into(),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "localhost/foo".into(),
            "localhost:5000/foo/bar:v1".into(),
            "index.docker.io/nginx".into(),
            "docker.io/nginx".into(),
            "docker.io/team/nginx:1.25".into(),
            "Registry.Example.COM/team/app:v1".into(),
            "registry.example.com/team/app".into(),
            "a.b-c.d/e__f/g.h/i---j:k.l-m_n".into(),
            "a/b_/c".into(),
            "a/.b".into(),
            "a/b..c".into(),
            "a/b___c".into(),
            "a/b-".into(),
            "-a.com/b".into(),
            "a-.com/b".into(),
            "a.com:/b".into(),
            "a.com:x/b".into(),
            "a:1:2/b".into(),
            ":tag".into(),
            "repo:".into(),
            "repo@".into(),
            "repo@sha256:abc".into(),
            format!("repo@sha256:{HEX}0"),
            format!("repo@sha512:{HEX}"),
            format!("repo@md5:{HEX}"),
            format!("repo@SHA256:{HEX}"),
            format!("repo@sha256:{}", HEX.to_uppercase()),
            format!("repo:{long_tag}"),
            format!("repo:{}", &long_tag[..128]),
            "repo:-tag".into(),
            "repo:_tag".into(),
            long.clone(),
            format!("a.com/{}", &long[..255]),
            format!("a.com/{long}"),
            "a//b".into(),
            "/a".into(),
            "a/".into(),
            "a@b@c".into(),
            " a".into(),
            "a b".into(),
        ];
        for s in &corpus {
            assert_eq!(ours(s), oracle(s), "{s:?}");
        }
    }

    #[test]
    fn agrees_with_oci_spec_on_random_strings_except_non_ascii_tags() {
        let alphabet: Vec<char> = "ab0Z.-_:/@é".chars().collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..100_000 {
            let len = (next() % 14) as usize;
            let s: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let (mine, theirs) = (ours(&s), oracle(&s));
            if mine.is_some() {
                accepted += 1;
                assert_eq!(mine, theirs, "{s:?}");
            } else if theirs.is_some() {
                assert!(!s.is_ascii(), "only non-ASCII tags may be refused where oci_spec accepts: {s:?} {theirs:?}");
            }
        }
        assert!(accepted > 1_000, "the random strings exercise accepted references too ({accepted})");
    }

    #[test]
    fn huge_references_are_refused_in_one_pass() {
        // A Pod author controls the text; a megabyte of components or of tag is refused, never backtracked over.
        let components = format!("registry.example.com/{}", "a/".repeat(500_000) + "b");
        assert!(split(&components).unwrap_err().contains("255"));
        let tag = format!("registry.example.com/app:{}", "t".repeat(1 << 20));
        assert!(split(&tag).is_err());
        let separators = format!("registry.example.com/a{}b", "-".repeat(1 << 20));
        assert!(split(&separators).unwrap_err().contains("255"));
    }

    #[test]
    fn a_non_ascii_tag_is_refused() {
        assert!(oracle("busybox:café").is_some(), "oci_spec's Unicode \\w lets it through");
        assert!(split("busybox:café").is_err());
    }
}

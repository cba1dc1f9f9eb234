//! Which images and namespaces a policy governs: globs compiled once at load.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::images::{Digest, ImageRef};

/// Prefix globs of one policy compared as strings; any more go to the glob engine, whose prefix matching does not
/// slow down with their number (a policy file may list thousands).
const PREFIX_GLOBS: usize = 8;

/// Compiled `match` section of a policy.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The first [`PREFIX_GLOBS`] image globs of the form `literal/**` (or `**` alone), each as the prefix `literal/`
    /// (or the empty prefix): such a glob matches exactly the references that begin with its prefix, which a string
    /// comparison decides without running the glob engine, for every image of every review.
    prefixes: Vec<String>,
    /// Every other image glob; `None` when there is none.
    images: Option<GlobSet>,
    namespaces: Option<GlobSet>,
}

impl Matcher {
    /// Compiles the globs; the error names the glob that is wrong.
    pub fn new(images: &[String], namespaces: &[String]) -> Result<Self, String> {
        if images.is_empty() {
            return Err("match.images must list at least one glob (use \"**\" for every image)".into());
        }
        let (mut prefixes, mut set) = (Vec::new(), GlobSetBuilder::new());
        for written in images {
            let glob = &canonical_glob(written);
            let compiled = image_glob(glob).map_err(|e| format!("match.images: glob {glob:?}: {}", e.kind()))?;
            match literal_prefix(glob).filter(|_| prefixes.len() < PREFIX_GLOBS) {
                Some(prefix) => prefixes.push(prefix),
                None => {
                    set.add(compiled);
                }
            }
        }
        let engine = prefixes.len() < images.len();
        let images = engine.then(|| set.build()).transpose().map_err(|e| format!("match.images: {e}"))?;
        let namespaces = if namespaces.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for glob in namespaces {
                set.add(Glob::new(glob).map_err(|e| format!("match.namespaces: glob {glob:?}: {}", e.kind()))?);
            }
            Some(set.build().map_err(|e| format!("match.namespaces: {e}"))?)
        };
        Ok(Self { prefixes, images, namespaces })
    }

    /// True when the image (by name, name:tag, name@digest or name:tag@digest) and the namespace both match.
    pub fn matches(&self, image: &ImageRef, namespace: &str) -> bool {
        self.matches_any(&Candidates::of(image), namespace)
    }

    /// [`Matcher::matches`] over the forms of an image prepared once for every policy of a set.
    pub fn matches_any(&self, image: &Candidates<'_>, namespace: &str) -> bool {
        let namespace_ok = self.namespaces.as_ref().is_none_or(|set| set.is_match(namespace));
        let prefixed = || self.prefixes.iter().any(|p| image.forms().any(|c| c.starts_with(p.as_str())));
        let globbed = || self.images.as_ref().is_some_and(|set| image.forms().any(|c| set.is_match(c)));
        namespace_ok && (prefixed() || globbed())
    }
}

/// The forms of one image that globs are matched against (name, name:tag, name@digest, name:tag@digest), prepared
/// once: the forms that are prefixes of `name:tag@digest` are slices of it.
pub struct Candidates<'a> {
    /// `name[:tag][@digest]`.
    full: &'a str,
    /// Where `name` and `name[:tag]` end in `full`.
    name: usize,
    tagged: usize,
    /// `name@digest`, when the image has both a tag and a digest (otherwise it is `full` or absent).
    untagged: Option<String>,
}

impl<'a> Candidates<'a> {
    /// The reference's own text is the longest form; the shorter are its prefixes.
    pub fn of(image: &'a ImageRef) -> Self {
        let (tag, digest) = (image.tag(), image.digest().map(Digest::as_str));
        let full = image.as_str();
        let name = image.registry().len() + 1 + image.repository().len();
        let tagged = name + tag.map_or(0, |t| t.len() + 1);
        let untagged = digest.filter(|_| tag.is_some()).map(|d| [&full[..name], "@", d].concat());
        Self { full, name, tagged, untagged }
    }

    /// Every form, each once.
    fn forms(&self) -> impl Iterator<Item = &str> {
        let prefixes = [self.name, self.tagged, self.full.len()];
        let distinct = prefixes.into_iter().enumerate().filter(move |&(i, end)| i == 0 || end != prefixes[i - 1]);
        distinct.map(|(_, end)| &self.full[..end]).chain(self.untagged.as_deref())
    }
}

/// An image glob as policies mean it: `*` stays within a path segment, `**` crosses them.
fn image_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob).literal_separator(true).build()
}

/// The prefix that an image glob of the form `literal/**` stands for (`literal/`; `**` alone: the empty prefix), when
/// the literal part holds no glob syntax at all; `None` for any other glob.
fn literal_prefix(glob: &str) -> Option<String> {
    if glob == "**" {
        return Some(String::new());
    }
    let literal = glob.strip_suffix("/**")?;
    let plain = !literal.is_empty() && !literal.contains(['*', '?', '[', ']', '{', '}', '\\']);
    plain.then(|| format!("{literal}/"))
}

/// A glob whose registry part is written literally names that registry canonically (see
/// [`crate::images::canonical_host`]), so `Registry.Example.com:443/team/**` governs what the runtime pulls from
/// `registry.example.com/team/...`.
fn canonical_glob(glob: &str) -> String {
    match glob.split_once('/') {
        Some((host, rest))
            if !host.contains(['*', '?', '[', '{']) && (host.contains(['.', ':']) || host == "localhost") =>
        {
            format!("{}/{rest}", crate::images::canonical_host(host))
        }
        _ => glob.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn m(images: &[&str], namespaces: &[&str]) -> Matcher {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Matcher::new(&s(images), &s(namespaces)).unwrap()
    }

    fn img(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn candidates_are_every_form_of_the_name_once() {
        let forms = |s: &str| Candidates::of(&img(s)).forms().map(str::to_owned).collect::<Vec<_>>();
        let name = "registry.example.com/team/app";
        assert_eq!(
            forms(&format!("{name}:v1@{D}")),
            [name.to_owned(), format!("{name}:v1"), format!("{name}:v1@{D}"), format!("{name}@{D}")]
        );
        assert_eq!(forms(&format!("{name}:v1")), [name.to_owned(), format!("{name}:v1")]);
        assert_eq!(forms(&format!("{name}@{D}")), [name.to_owned(), format!("{name}@{D}")]);
        assert_eq!(forms("app"), ["docker.io/library/app", "docker.io/library/app:latest"]);
    }

    #[test]
    fn image_globs() {
        let table: &[(&[&str], &str, bool)] = &[
            (&["registry.example.com/team/**"], "registry.example.com/team/app:1", true),
            (&["registry.example.com/team/**"], "registry.example.com/team/sub/app", true),
            (&["registry.example.com/team/**"], "registry.example.com/other/app", false),
            (&["registry.example.com/team/*"], "registry.example.com/team/app:1", true),
            (&["registry.example.com/team/*"], "registry.example.com/team/sub/app", false),
            (&["registry.example.com/team/app"], "registry.example.com/team/app:v2", true),
            (&["registry.example.com/team/app:v*"], "registry.example.com/team/app:v2", true),
            (&["registry.example.com/team/app:v*"], "registry.example.com/team/app:latest", false),
            (&["docker.io/library/*"], "nginx", true),
            (&["nginx"], "nginx", false),
            (&["**"], "ghcr.io/x/y/z:1", true),
            (&["registry.example.com/team/app@sha256:*"], &*format!("registry.example.com/team/app@{D}"), true),
            (&["ghcr.io/a/**", "quay.io/**"], "quay.io/b/c", true),
        ];
        for (globs, image, want) in table {
            assert_eq!(m(globs, &[]).matches(&img(image), "default"), *want, "{globs:?} vs {image}");
        }
    }

    /// What the glob engine alone answers for `glob` against `image`.
    fn by_glob_engine(glob: &str, image: &ImageRef) -> bool {
        let set = GlobSetBuilder::new().add(image_glob(&canonical_glob(glob)).unwrap()).build().unwrap();
        Candidates::of(image).forms().any(|c| set.is_match(c))
    }

    #[test]
    fn only_plain_literal_globs_ending_in_a_double_star_segment_are_prefixes() {
        let table: &[(&str, Option<&str>)] = &[
            ("**", Some("")),
            ("registry.example.com/**", Some("registry.example.com/")),
            ("localhost:5000/team/**", Some("localhost:5000/team/")),
            ("registry.example.com/team*/**", None),
            ("registry.example.com/t?am/**", None),
            ("registry.example.com/[ab]/**", None),
            ("registry.example.com/{a,b}/**", None),
            ("registry.example.com/a\\*/**", None),
            ("registry.example.com/**/app", None),
            ("registry.example.com/app**", None),
            ("registry.example.com/*", None),
            ("/**", None),
            ("***", None),
        ];
        for (glob, want) in table {
            assert_eq!(literal_prefix(glob).as_deref(), *want, "{glob}");
        }
    }

    #[test]
    fn prefix_globs_match_exactly_what_the_glob_engine_matches() {
        let globs = [
            "**",
            "registry.example.com/**",
            "registry.example.com/team/**",
            "registry.example.com/team/app/**",
            "example.com/**",
            "team/**",
            "app/**",
            "Registry.Example.com:443/team/**",
            "registry.example.com:4443/**",
            "localhost:5000/**",
            "docker.io/library/**",
            "library/**",
            "index.docker.io/**",
            "registry.example.com/team/app:v1/**",
            "registry.example.com/team/app@sha256/**",
        ];
        let images = [
            "registry.example.com/team/app".to_owned(),
            "registry.example.com/team/app:v1".to_owned(),
            format!("registry.example.com/team/app@{D}"),
            format!("registry.example.com/team/app:v1@{D}"),
            "registry.example.com/teamx/app".to_owned(),
            "registry.example.com/team".to_owned(),
            "registry.example.com/team/app/sub:2".to_owned(),
            "registry.example.com:4443/team/app".to_owned(),
            "registry.example.comx/team/app".to_owned(),
            "myregistry.example.com/team/app".to_owned(),
            "localhost:5000/x".to_owned(),
            "localhost/x".to_owned(),
            "nginx".to_owned(),
            "team/app".to_owned(),
            "library/nginx:1.27".to_owned(),
            format!("ghcr.io/org/tool@{D}"),
        ];
        let mut matched = 0;
        for glob in globs {
            assert!(literal_prefix(&canonical_glob(glob)).is_some(), "{glob} is meant to take the prefix path");
            let matcher = m(&[glob], &[]);
            for image in &images {
                let image = img(image);
                let want = by_glob_engine(glob, &image);
                assert_eq!(matcher.matches(&image, "ns"), want, "{glob} vs {image}");
                matched += usize::from(want);
            }
        }
        assert!(matched > 20 && matched < globs.len() * images.len() / 2, "{matched}: the table has both answers");
    }

    proptest::proptest! {
        /// Prefix globs and other globs in one policy: the policy matches an image exactly when the glob engine
        /// would have matched one of them.
        #[test]
        fn a_mix_of_prefix_and_other_globs_matches_as_the_glob_engine_does(
            prefix in "(\\*\\*|(r\\.io(:5000)?/)?[a-c]{1,2}(/[a-c]{1,2}){0,2})",
            other in proptest::sample::select(vec!["r.io/a/*", "r.io/b/**/c", "r.io/*/b*", "r.io/c/a:v*",
                "r.io/a/b@sha256:*", "*.io/**"]),
            port in proptest::bool::ANY,
            repo in "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
            tag in proptest::option::of("v[0-9]"),
            digest in proptest::bool::ANY,
        ) {
            let prefix_glob = if prefix == "**" { prefix.clone() } else { format!("{prefix}/**") };
            let host = if port { "r.io:5000" } else { "r.io" };
            let tag = tag.map(|t| format!(":{t}")).unwrap_or_default();
            let digest = if digest { format!("@{D}") } else { String::new() };
            let image = img(&format!("{host}/{repo}{tag}{digest}"));
            let want = by_glob_engine(&prefix_glob, &image) || by_glob_engine(other, &image);
            for matcher in [m(&[&prefix_glob, other], &[]), m(&[other, &prefix_glob], &[])] {
                proptest::prop_assert_eq!(matcher.matches(&image, "ns"), want, "{} + {} vs {}", prefix_glob, other, image);
            }
        }
    }

    #[test]
    fn thousands_of_prefix_globs_compare_a_few_as_strings_and_leave_the_rest_to_the_glob_engine() {
        let globs: Vec<String> = (0..5000).map(|i| format!("registry.example.com/team-{i}/**")).collect();
        let matcher = Matcher::new(&globs, &[]).unwrap();
        assert_eq!(matcher.prefixes.len(), PREFIX_GLOBS);
        assert_eq!(matcher.images.as_ref().map(GlobSet::len), Some(5000 - PREFIX_GLOBS));
        for (image, want) in [
            ("registry.example.com/team-0/app", true),
            ("registry.example.com/team-7/app:v1", true),
            ("registry.example.com/team-8/app", true),
            ("registry.example.com/team-4999/a/b", true),
            ("registry.example.com/team-5000/app", false),
            ("other.example.com/team-0/app", false),
        ] {
            assert_eq!(matcher.matches(&img(image), "ns"), want, "{image}");
        }
    }

    #[test]
    fn globs_name_registries_canonically() {
        let table: &[(&str, &str, bool)] = &[
            ("Registry.Example.com:443/team/**", "registry.example.com/team/app:1", true),
            ("index.docker.io/library/*", "nginx", true),
            ("registry.example.com/team/**", "REGISTRY.example.com:443/team/app", true),
            ("localhost:5000/**", "LOCALHOST:5000/x", true),
            ("registry.example.com:4443/**", "registry.example.com/team/app", false),
        ];
        for (glob, image, want) in table {
            assert_eq!(m(&[glob], &[]).matches(&img(image), "default"), *want, "{glob} vs {image}");
        }
    }

    proptest::proptest! {
        /// References that make the runtime pull the same thing are governed by the same policies.
        #[test]
        fn aliases_of_one_image_match_the_same_policies(
            host in proptest::sample::select(vec!["docker.io", "index.docker.io", "registry-1.docker.io",
                "registry.hub.docker.com", "registry.example.com", "localhost:5000"]),
            upper in proptest::collection::vec(proptest::bool::ANY, 24),
            port in proptest::bool::ANY,
            library in proptest::bool::ANY,
            repo in "[a-z][a-z0-9]{0,6}(/[a-z][a-z0-9]{0,6}){0,2}",
            tag in proptest::option::of("[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,8}"),
        ) {
            let hub = host.ends_with("docker.io") || host.ends_with("docker.com");
            let canonical_host = if hub { "docker.io" } else { host };
            let path = if hub && !repo.contains('/') { format!("library/{repo}") } else { repo.clone() };
            let suffix = tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default();
            let canonical = format!("{canonical_host}/{path}{suffix}");
            // The same image written another way: host case, the HTTPS default port, Hub's aliases and `library/`.
            let cased: String = host
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            let with_port = if port && !host.contains(':') { format!("{cased}:443") } else { cased };
            let written_path = if hub && library && !repo.contains('/') { path.clone() } else { repo.clone() };
            let alias = format!("{with_port}/{written_path}{suffix}");
            let (a, b) = (img(&canonical), img(&alias));
            proptest::prop_assert_eq!(a.to_string(), b.to_string());
            let globs = ["docker.io/library/**", "docker.io/*/*", "registry.example.com/**", "localhost:5000/*",
                "**/app*", "*.io/**", "registry.example.com/a/**:v*"];
            for g in globs {
                let matcher = m(&[g], &[]);
                proptest::prop_assert_eq!(matcher.matches(&a, "ns"), matcher.matches(&b, "ns"), "{} vs {} under {}", canonical, alias, g);
            }
        }
    }

    #[test]
    fn namespace_globs() {
        let matcher = m(&["**"], &["prod-*", "payments"]);
        assert!(matcher.matches(&img("nginx"), "prod-eu"));
        assert!(matcher.matches(&img("nginx"), "payments"));
        assert!(!matcher.matches(&img("nginx"), "dev"));
        assert!(m(&["**"], &[]).matches(&img("nginx"), "anything"));
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(Matcher::new(&[], &[]).unwrap_err().contains("at least one"));
        assert!(Matcher::new(&["a/[b".into()], &[]).unwrap_err().contains("a/[b"));
        assert!(Matcher::new(&["**".into()], &["{x".into()]).unwrap_err().contains("namespaces"));
    }
}

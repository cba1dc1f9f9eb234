//! Which images and namespaces a policy governs: globs compiled once at load.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::images::ImageRef;

/// Compiled `match` section of a policy.
#[derive(Debug, Clone)]
pub struct Matcher {
    images: GlobSet,
    namespaces: Option<GlobSet>,
}

impl Matcher {
    /// Compiles the globs; the error names the glob that is wrong.
    pub fn new(images: &[String], namespaces: &[String]) -> Result<Self, String> {
        if images.is_empty() {
            return Err("match.images must list at least one glob (use \"**\" for every image)".into());
        }
        let mut set = GlobSetBuilder::new();
        for glob in images {
            let compiled = GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("match.images: glob {glob:?}: {}", e.kind()))?;
            set.add(compiled);
        }
        let images = set.build().map_err(|e| format!("match.images: {e}"))?;
        let namespaces = if namespaces.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for glob in namespaces {
                set.add(Glob::new(glob).map_err(|e| format!("match.namespaces: glob {glob:?}: {}", e.kind()))?);
            }
            Some(set.build().map_err(|e| format!("match.namespaces: {e}"))?)
        };
        Ok(Self { images, namespaces })
    }

    /// True when the image (by name, name:tag, name@digest or name:tag@digest) and the namespace both match.
    pub fn matches(&self, image: &ImageRef, namespace: &str) -> bool {
        let namespace_ok = self.namespaces.as_ref().is_none_or(|set| set.is_match(namespace));
        namespace_ok && candidates(image).iter().any(|c| self.images.is_match(c))
    }
}

fn candidates(image: &ImageRef) -> Vec<String> {
    let name = image.name();
    let mut out = vec![name.clone()];
    if let Some(tag) = image.tag() {
        out.push(format!("{name}:{tag}"));
    }
    if let Some(digest) = image.digest() {
        out.push(format!("{name}@{digest}"));
        if let Some(tag) = image.tag() {
            out.push(format!("{name}:{tag}@{digest}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

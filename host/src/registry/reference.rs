//! Image references as docker reads them: `redis:7-alpine` is
//! `docker.io/library/redis:7-alpine`, `user/app` is `docker.io/user/app:latest`,
//! and a first component with a `.` or `:` (or `localhost`) is a registry host.

use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, ... (lower-cased).
    pub registry: String,
    pub repository: String,
    /// A tag, or a digest (`sha256:...`).
    pub reference: String,
}

impl ImageRef {
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        let s = image.trim();
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(format!("invalid image reference {image:?}"));
        }
        let (name, reference) = match s.split_once('@') {
            Some((name, digest)) => {
                let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
                    !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !ok {
                    return Err(format!("invalid digest in image reference {image:?}"));
                }
                // A tag beside a digest is ignored, as docker does.
                (
                    name.rsplit_once(':')
                        .filter(|(_, t)| !t.contains('/'))
                        .map_or(name, |(n, _)| n),
                    digest.to_string(),
                )
            }
            None => match s.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_string()),
                _ => (s, "latest".to_string()),
            },
        };
        if reference.is_empty() || (!reference.contains(':') && !valid_tag(&reference)) {
            return Err(format!("invalid tag in image reference {image:?}"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(format!(
                "invalid repository name in image reference {image:?}"
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

fn valid_tag(t: &str) -> bool {
    t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !t.starts_with(['.', '-'])
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_resolve_as_docker_does() {
        assert_eq!(p("redis:7-alpine"), "docker.io/library/redis:7-alpine");
        assert_eq!(p("redis"), "docker.io/library/redis:latest");
        assert_eq!(p("user/app"), "docker.io/user/app:latest");
        assert_eq!(p("docker.io/library/redis:7"), "docker.io/library/redis:7");
        assert_eq!(p("ghcr.io/org/web:main"), "ghcr.io/org/web:main");
        assert_eq!(p("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app:1");
        assert_eq!(p("localhost/app"), "localhost/app:latest");
        assert_eq!(
            p("Registry.Example.com:5000/a/b/c:v1.2"),
            "registry.example.com:5000/a/b/c:v1.2"
        );
        let pinned = format!("nginx@sha256:{}", "a".repeat(64));
        assert_eq!(
            p(&pinned),
            format!("docker.io/library/nginx@sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            ImageRef::parse("redis").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn bad_references_are_refused_by_name() {
        for bad in [
            "",
            "UPPER/app",
            "app:bad tag",
            "app@sha256:xyz",
            "app:",
            "-app",
            "a//b",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.contains("invalid"), "{bad}: {err}");
        }
    }
}

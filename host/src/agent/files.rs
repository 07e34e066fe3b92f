//! The compose files the agent writes next to a project: a one-service file
//! for image projects, a build file for deployment projects, and the pins
//! override that makes every decided image run by digest.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

/// The generated files' names, inside the project's directory.
pub const IMAGE_FILE: &str = "autodeploy-image.yml";
pub const BUILD_FILE: &str = "autodeploy-build.yml";
pub const PINS_FILE: &str = "autodeploy-pins.yml";

/// The one service of image and deployment projects.
pub const APP_SERVICE: &str = "app";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0} is not a compose file: {1}")]
    Yaml(String, serde_yaml::Error),
    #[error("{0} has no services mapping")]
    NoServices(String),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// Compose interpolates `${...}` in an image reference, so a digest is
    /// taken only in the form a registry gives one.
    #[error("the decided digest for {0} is not a sha256 or sha512 digest")]
    BadDigest(String),
}

/// `sha256:` and 64, or `sha512:` and 128, lowercase hex digits: the
/// digests registries answer with.
pub fn is_digest(d: &str) -> bool {
    let hex_of = |rest: &str, len: usize| {
        rest.len() == len && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match d.split_once(':') {
        Some(("sha256", rest)) => hex_of(rest, 64),
        Some(("sha512", rest)) => hex_of(rest, 128),
        _ => false,
    }
}

/// An image project: `image`, its `container_port` published on `host_port`.
pub fn image_compose(image: &str, host_port: i64, container_port: i64) -> String {
    let mut service = Mapping::new();
    service.insert("image".into(), image.into());
    service.insert("ports".into(), ports(host_port, container_port));
    service.insert("restart".into(), "unless-stopped".into());
    one_service(service)
}

/// A deployment project: built by compose from the checkout's `dockerfile`,
/// tagged `tag`, with `(host, container)` ports published.
pub fn build_compose(dockerfile: &str, tag: &str, ports: Option<(i64, i64)>) -> String {
    let mut build = Mapping::new();
    build.insert("context".into(), ".".into());
    build.insert("dockerfile".into(), dockerfile.into());
    let mut service = Mapping::new();
    service.insert("build".into(), Value::Mapping(build));
    service.insert("image".into(), tag.into());
    if let Some((host, container)) = ports {
        service.insert("ports".into(), self::ports(host, container));
    }
    service.insert("restart".into(), "unless-stopped".into());
    one_service(service)
}

fn ports(host: i64, container: i64) -> Value {
    Value::Sequence(vec![format!("{host}:{container}").into()])
}

fn one_service(service: Mapping) -> String {
    let mut services = Mapping::new();
    services.insert(APP_SERVICE.into(), Value::Mapping(service));
    let mut root = Mapping::new();
    root.insert("services".into(), Value::Mapping(services));
    serde_yaml::to_string(&Value::Mapping(root)).expect("a mapping of strings serializes")
}

/// An override file's text, and each pinned `repo@digest` → the reference
/// the compose file names.
#[derive(Debug)]
pub struct Pins {
    pub text: String,
    pub originals: BTreeMap<String, String>,
}

/// The override pinning each service of `compose` (the text of `name`)
/// whose image is a key of `digests` to `repo@digest`; `None` when no
/// service's image is.
pub fn pins_override(
    name: &str,
    compose: &str,
    digests: &BTreeMap<String, String>,
) -> Result<Option<Pins>, FilesError> {
    let root: Value =
        serde_yaml::from_str(compose).map_err(|e| FilesError::Yaml(name.to_string(), e))?;
    let Some(services) = root.get("services").and_then(Value::as_mapping) else {
        return Err(FilesError::NoServices(name.to_string()));
    };
    let mut pinned = Mapping::new();
    let mut originals = BTreeMap::new();
    for (service, body) in services {
        let Some(image) = body.get("image").and_then(Value::as_str) else {
            continue;
        };
        let Some(digest) = digests.get(image) else {
            continue;
        };
        if !is_digest(digest) {
            return Err(FilesError::BadDigest(image.to_string()));
        }
        let by_digest = format!("{}@{digest}", repository(image));
        let mut over = Mapping::new();
        over.insert("image".into(), by_digest.clone().into());
        pinned.insert(service.clone(), Value::Mapping(over));
        originals.insert(by_digest, image.to_string());
    }
    if pinned.is_empty() {
        return Ok(None);
    }
    let mut out = Mapping::new();
    // Compose refuses files of different versions together.
    if let Some(version) = root.get("version") {
        out.insert("version".into(), version.clone());
    }
    out.insert("services".into(), Value::Mapping(pinned));
    let text = serde_yaml::to_string(&Value::Mapping(out)).expect("a mapping serializes");
    Ok(Some(Pins { text, originals }))
}

/// `image` without its tag or digest: `host:5000/a/b:1` → `host:5000/a/b`.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// Writes `text` as `dir/name`.
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> Result<(), FilesError> {
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(dir.join(name), text))
        .map_err(|e| FilesError::Write(name.to_string(), e))
}

/// Reads `dir/name`.
pub fn read(dir: &std::path::Path, name: &str) -> Result<String, FilesError> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| FilesError::Read(name.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AA: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BB: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn digests(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn repository_drops_the_tag_or_digest_but_keeps_a_registry_port() {
        assert_eq!(repository("127.0.0.1:5000/a/web:1"), "127.0.0.1:5000/a/web");
        assert_eq!(repository("127.0.0.1:5000/web"), "127.0.0.1:5000/web");
        assert_eq!(repository("nginx"), "nginx");
        assert_eq!(repository("nginx:1.25"), "nginx");
        assert_eq!(repository("r:5000/web:1@sha256:ab"), "r:5000/web");
    }

    #[test]
    fn every_service_whose_image_was_decided_is_pinned_and_the_others_are_left_alone() {
        let compose = "version: \"3.8\"\nservices:\n  web:\n    image: r:5000/web:1\n    ports: [\"80:80\"]\n  db:\n    image: postgres:15\n  worker:\n    image: r:5000/web:1\n  built:\n    build: .\n";
        let Pins { text, originals } = pins_override(
            "docker-compose.yml",
            compose,
            &digests(&[("r:5000/web:1", AA), ("other:1", BB)]),
        )
        .unwrap()
        .unwrap();
        let v: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["version"], Value::from("3.8"));
        let services = v["services"].as_mapping().unwrap();
        assert_eq!(services.len(), 2, "{text}");
        assert_eq!(
            v["services"]["web"]["image"],
            Value::from(format!("r:5000/web@{AA}"))
        );
        assert_eq!(
            v["services"]["worker"]["image"],
            Value::from(format!("r:5000/web@{AA}"))
        );
        // Only the image: the rest stays the compose file's.
        assert_eq!(v["services"]["web"].as_mapping().unwrap().len(), 1);
        assert_eq!(
            originals,
            digests(&[(format!("r:5000/web@{AA}").as_str(), "r:5000/web:1")])
        );
    }

    #[test]
    fn no_override_when_no_service_image_was_decided() {
        let compose = "services:\n  web:\n    image: r/web:1\n";
        assert!(
            pins_override("c.yml", compose, &digests(&[("r/web:2", AA)]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_digest_not_in_a_registrys_form_is_refused_naming_the_image() {
        let compose = "services:\n  web:\n    image: r/web:1\n";
        for bad in [
            "sha256:aa",
            "sha256:${AUTODEPLOY_NODE_TOKEN}",
            "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "latest",
            "",
        ] {
            let e = pins_override("c.yml", compose, &digests(&[("r/web:1", bad)])).unwrap_err();
            assert!(
                matches!(&e, FilesError::BadDigest(image) if image == "r/web:1"),
                "{bad}: {e}"
            );
        }
        let sha512 = format!("sha512:{}", "0".repeat(128));
        assert!(pins_override("c.yml", compose, &digests(&[("r/web:1", &sha512)])).is_ok());
    }

    #[test]
    fn a_file_that_is_not_compose_is_an_error_naming_it() {
        let e = pins_override("c.yml", "services: [1, 2", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("c.yml"), "{e}");
        let e = pins_override("c.yml", "x: 1\n", &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, FilesError::NoServices(_)), "{e}");
    }

    #[test]
    fn generated_files_parse_as_the_services_they_describe() {
        let v: Value = serde_yaml::from_str(&build_compose(
            "docker/App file",
            "autodeploy-x-1:abc",
            Some((9000, 80)),
        ))
        .unwrap();
        let app = &v["services"]["app"];
        assert_eq!(app["build"]["context"], Value::from("."));
        assert_eq!(app["build"]["dockerfile"], Value::from("docker/App file"));
        assert_eq!(app["image"], Value::from("autodeploy-x-1:abc"));
        assert_eq!(app["ports"][0], Value::from("9000:80"));
        let worker: Value =
            serde_yaml::from_str(&build_compose("Dockerfile", "t:1", None)).unwrap();
        assert!(worker["services"]["app"].get("ports").is_none());
        let v: Value = serde_yaml::from_str(&image_compose("r:5000/web:1", 9000, 80)).unwrap();
        assert_eq!(v["services"]["app"]["image"], Value::from("r:5000/web:1"));
        assert_eq!(v["services"]["app"]["ports"][0], Value::from("9000:80"));
    }
}

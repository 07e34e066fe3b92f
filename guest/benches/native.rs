//! The native side of the fresh-instance-versus-native comparison: the same
//! parse-compose + decide-images on the same 20-service file as the daemon's
//! `policy` bench, run as plain Rust ("a native"). The daemon does not link
//! this crate, so the native figure is taken here; run both benches in one
//! session to compare them.

use std::collections::BTreeMap;
use std::hint::black_box;

use autodeploy_guest::model::{Facts, Lookup, Project, ProjectKind};
use criterion::{Criterion, criterion_group, criterion_main};

/// Byte for byte the file of host/benches/policy.rs.
fn compose_file() -> String {
    let mut yaml = String::from(
        "x-defaults: &defaults\n  restart: unless-stopped\n  logging: {driver: json-file}\nservices:\n",
    );
    for i in 0..20 {
        yaml.push_str(&format!(
            "  svc{i}:\n    <<: *defaults\n    image: registry.example.com/acme/svc{i}:1.{i}\n    \
             environment:\n      PORT: \"80{i:02}\"\n    ports: [\"80{i:02}:80\"]\n"
        ));
    }
    yaml
}

fn digest(seed: usize) -> String {
    format!("sha256:{seed:064x}")
}

fn bench(c: &mut Criterion) {
    let yaml = compose_file();
    let project = Project {
        kind: ProjectKind::Compose,
        auto_deploy_enabled: true,
        ..Project::default()
    };
    let facts = Facts::default();
    let images = autodeploy_guest::parse_compose(&yaml).unwrap().images;
    assert_eq!(images.len(), 20);
    let prior: BTreeMap<String, String> = images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.clone(), digest(i)))
        .collect();
    // One image moved upstream: the decision deploys.
    let lookups: BTreeMap<String, Lookup> = images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            (
                im.clone(),
                Lookup::Digest(digest(if i == 7 { 1000 } else { i })),
            )
        })
        .collect();

    let mut group = c.benchmark_group("parse-compose+decide-images/20 services");
    group.bench_function("a native", |b| {
        b.iter(|| {
            let found = autodeploy_guest::parse_compose(black_box(&yaml)).unwrap();
            assert_eq!(found.images.len(), 20);
            let d = autodeploy_guest::decide_images(&project, &facts, &prior, &lookups);
            assert!(d.trigger);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

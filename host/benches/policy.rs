//! parse-compose + decide-images on a 20-service compose file:
//! (a) the guest's functions as native Rust: measured by the guest's own
//!     bench (`cargo bench -p autodeploy-guest --bench native`, the same file
//!     and inputs), since the daemon does not link the guest,
//! (b) through the component with a fresh instance per decision (what the
//!     daemon does),
//! (c) through the component on one reused instance;
//! (b) and (c) with the instruction budget (fuel, what the daemon runs) and
//! with the wall-clock deadline alone, to show what metering costs.

use std::collections::BTreeMap;
use std::hint::black_box;

use autodeploy::policy::{Facts, Lookup, PolicyConfig, PolicyRuntime, Project, ProjectKind};
use criterion::{Criterion, criterion_group, criterion_main};

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

fn inputs(images: &[String]) -> (BTreeMap<String, String>, BTreeMap<String, Lookup>) {
    let prior = images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.clone(), digest(i)))
        .collect();
    // One image moved upstream: the decision deploys.
    let lookups = images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            (
                im.clone(),
                Lookup::Digest(digest(if i == 7 { 1000 } else { i })),
            )
        })
        .collect();
    (prior, lookups)
}

fn bench(c: &mut Criterion) {
    let yaml = compose_file();
    let project = Project {
        kind: ProjectKind::Compose,
        auto_deploy_enabled: true,
        ..Project::default()
    };
    let facts = Facts::default();
    let runtime = PolicyRuntime::new(PolicyConfig::default()).unwrap();
    let policy = runtime.load_bundled().unwrap();
    let images = policy.parse_compose(&yaml).unwrap().images;
    assert_eq!(images.len(), 20);
    let (prior, lookups) = inputs(&images);

    let unmetered_runtime = PolicyRuntime::new(PolicyConfig {
        fuel: None,
        ..PolicyConfig::default()
    })
    .unwrap();
    let unmetered = unmetered_runtime.load_bundled().unwrap();
    {
        let mut session = policy.session().unwrap();
        session.parse_compose(&yaml).unwrap();
        let parse = session.last_fuel().unwrap();
        session
            .decide_images(&project, &facts, &prior, &lookups)
            .unwrap();
        let decide = session.last_fuel().unwrap();
        println!("instructions: parse-compose {parse}, decide-images {decide}");
    }

    let mut group = c.benchmark_group("parse-compose+decide-images/20 services");
    group.bench_function("b component, fresh instance per decision", |b| {
        b.iter(|| {
            let found = policy.parse_compose(black_box(&yaml)).unwrap();
            assert_eq!(found.images.len(), 20);
            let d = policy
                .decide_images(&project, &facts, &prior, &lookups)
                .unwrap();
            assert!(d.trigger);
        })
    });
    let mut session = policy.session().unwrap();
    group.bench_function("c component, reused instance", |b| {
        b.iter(|| {
            let found = session.parse_compose(black_box(&yaml)).unwrap();
            assert_eq!(found.images.len(), 20);
            let d = session
                .decide_images(&project, &facts, &prior, &lookups)
                .unwrap();
            assert!(d.trigger);
        })
    });
    group.bench_function("instantiate only", |b| b.iter(|| policy.session().unwrap()));
    group.bench_function("b' fresh instance, deadline only (no fuel)", |b| {
        b.iter(|| {
            let found = unmetered.parse_compose(black_box(&yaml)).unwrap();
            assert_eq!(found.images.len(), 20);
            let d = unmetered
                .decide_images(&project, &facts, &prior, &lookups)
                .unwrap();
            assert!(d.trigger);
        })
    });
    let mut bare = unmetered.session().unwrap();
    group.bench_function("c' reused instance, deadline only (no fuel)", |b| {
        b.iter(|| {
            let found = bare.parse_compose(black_box(&yaml)).unwrap();
            assert_eq!(found.images.len(), 20);
            let d = bare
                .decide_images(&project, &facts, &prior, &lookups)
                .unwrap();
            assert!(d.trigger);
        })
    });
    group.finish();

    // A parse that runs ~430 million guest instructions: the host's share
    // (instantiation, copying the file in) is negligible, so the ratio is
    // what metering costs the guest's own code, even in a debug host build.
    let mut big = String::from("services:\n");
    for i in 0..10_000 {
        big.push_str(&format!("  s{i}:\n    image: r/app{i}:1\n"));
    }
    let mut group = c.benchmark_group("parse-compose/10,000 services");
    group.sample_size(10);
    group.bench_function("fuel", |b| {
        b.iter(|| assert_eq!(policy.parse_compose(&big).unwrap().images.len(), 10_000))
    });
    group.bench_function("deadline only (no fuel)", |b| {
        b.iter(|| assert_eq!(unmetered.parse_compose(&big).unwrap().images.len(), 10_000))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The policy runtime against hostile guests and hostile input: each failure
//! costs one call, names what went wrong, and the host goes on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use autodeploy::policy::{
    BUNDLED_POLICY, DEFAULT_FUEL, Facts, MIN_FUEL, PolicyConfig, PolicyError, PolicyRuntime,
    Project, TriggerSource,
};
use common::load::CpuLoad;
use common::*;
use wit_component::DecodedWasm;

#[test]
fn bundled_component_imports_nothing_and_exports_the_contract() {
    let DecodedWasm::Component(resolve, world) =
        wit_component::decode(BUNDLED_POLICY).expect("the bundled policy decodes")
    else {
        panic!("the bundled policy is not a component");
    };
    let world = &resolve.worlds[world];
    let imports: Vec<String> = world
        .imports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    assert_eq!(
        imports,
        Vec::<String>::new(),
        "the default policy must import nothing"
    );
    let exports: Vec<String> = world
        .exports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    assert_eq!(exports, ["autodeploy:policy/decisions@0.2.0"]);
}

/// A runtime with an instruction budget of `fuel` and a wall-clock
/// backstop of `deadline_ms`.
fn metered(fuel: Option<u64>, deadline_ms: u64) -> Arc<PolicyRuntime> {
    PolicyRuntime::new(PolicyConfig {
        fuel,
        deadline: Duration::from_millis(deadline_ms),
        ..PolicyConfig::default()
    })
    .expect("policy runtime")
}

#[test]
fn endless_loop_ends_with_its_instruction_budget_and_the_host_goes_on() {
    // A backstop of a minute: only the budget can end this loop in time.
    let rt = metered(Some(50_000_000), 60_000);
    let hostile = rt
        .load(&hostile_policy(LOOP_BODY), "loop")
        .expect("loads: policy-info behaves");
    assert_eq!(hostile.info().name, "hostile");
    for _ in 0..2 {
        let err = hostile.parse_compose("services: {}").unwrap_err();
        assert!(
            matches!(
                err,
                PolicyError::Budget {
                    call: "parse-compose",
                    fuel: 50_000_000
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "policy call parse-compose exceeded its instruction budget of 50000000"
        );
    }
    // The same policy still answers on a fresh instance, and so does another
    // policy on the same engine.
    assert_eq!(
        hostile.session().unwrap().policy_info().unwrap().0,
        "hostile"
    );
    let bundled = rt.load_bundled().unwrap();
    assert_eq!(
        bundled
            .parse_compose("services: {a: {image: x:1}}")
            .unwrap()
            .images,
        ["x:1"]
    );
}

#[test]
fn the_wall_clock_backstop_still_ends_a_loop() {
    // A budget too large to burn in 50 ms: the backstop decides.
    let rt = metered(Some(1_000_000_000_000), 50);
    let hostile = rt.load(&hostile_policy(LOOP_BODY), "loop").unwrap();
    let err = hostile.parse_compose("services: {}").unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Deadline {
                call: "parse-compose",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("deadline of 50ms"), "{err}");
    assert_eq!(
        hostile.session().unwrap().policy_info().unwrap().0,
        "hostile"
    );
}

#[test]
fn the_default_limits_are_a_budget_with_a_generous_backstop() {
    let config = PolicyConfig::default();
    assert_eq!(config.fuel, Some(DEFAULT_FUEL));
    assert!(config.deadline >= Duration::from_secs(10), "{config:?}");
}

#[test]
fn memory_bomb_fails_with_the_memory_limit() {
    let rt = runtime(1000, 16);
    let hostile = rt.load(&hostile_policy(MEMORY_BOMB_BODY), "bomb").unwrap();
    let err = hostile
        .decide_commit(
            &Project::default(),
            &Facts::default(),
            TriggerSource::Manual,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(err, PolicyError::Memory { call: "decide-commit", limit } if limit == 16 << 20),
        "{err}"
    );
    assert_eq!(
        hostile.session().unwrap().policy_info().unwrap().0,
        "hostile"
    );
}

#[test]
fn memory_limit_is_configurable() {
    // 100 pages (6.25 MiB) is over a 4 MiB cap and under a 64 MiB one, where
    // the body's `unreachable` is what stops it.
    let grow = "(drop (memory.grow (i32.const 100))) unreachable";
    let small = runtime(1000, 4)
        .load(&hostile_policy(grow), "grow")
        .unwrap();
    assert!(matches!(
        small.check_deployable(
            &Project::default(),
            &Facts::default(),
            TriggerSource::Manual
        ),
        Err(PolicyError::Memory { .. })
    ));
    let large = runtime(1000, 64)
        .load(&hostile_policy(grow), "grow")
        .unwrap();
    assert!(matches!(
        large.check_deployable(
            &Project::default(),
            &Facts::default(),
            TriggerSource::Manual
        ),
        Err(PolicyError::Trap { .. })
    ));
}

#[test]
fn trap_fails_one_call_with_a_clear_error() {
    let hostile = runtime(100, 64)
        .load(&hostile_policy(TRAP_BODY), "trap")
        .unwrap();
    let err = hostile
        .check_auto_deploy(&Project::default(), &Facts::default(), true)
        .unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Trap {
                call: "check-auto-deploy",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[test]
fn a_session_refuses_calls_after_a_trap() {
    let hostile = runtime(100, 64)
        .load(&hostile_policy(TRAP_BODY), "trap")
        .unwrap();
    let mut session = hostile.session().unwrap();
    assert!(
        session
            .check_deployable(
                &Project::default(),
                &Facts::default(),
                TriggerSource::Manual
            )
            .is_err()
    );
    let err = session.policy_info().unwrap_err();
    assert!(err.to_string().contains("failed an earlier call"), "{err}");
}

#[test]
fn missing_functions_are_named() {
    let partial = r#"package autodeploy:policy@0.1.0;
interface decisions {
    record policy-meta { name: string, version: string }
    policy-info: func() -> policy-meta;
}
world policy { export decisions; }"#;
    let bytes = component(partial, "policy", "", |_| POLICY_INFO_BODY.into());
    let err = runtime(100, 64)
        .load(&bytes, "partial")
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::Missing { .. }), "{msg}");
    for f in [
        "parse-compose",
        "decide-commit",
        "decide-images",
        "check-auto-deploy",
        "check-deployable",
    ] {
        assert!(msg.contains(f), "{msg} should name {f}");
    }
    assert!(!msg.contains("policy-info"), "{msg}");
}

#[test]
fn missing_functions_are_named_for_the_version_exported() {
    let partial = r#"package autodeploy:policy@0.2.0;
interface decisions {
    record policy-meta { name: string, version: string }
    record compose-images { images: list<string>, skipped: list<string> }
    policy-info: func() -> policy-meta;
    parse-compose: func(yaml: string) -> result<compose-images, string>;
}
world policy { export decisions; }"#;
    let bytes = component(partial, "policy", "", |_| POLICY_INFO_BODY.into());
    let err = runtime(100, 64)
        .load(&bytes, "partial")
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("does not implement autodeploy:policy/decisions@0.2.0"),
        "{msg}"
    );
    for f in ["watch-plan", "decide-commit", "check-deployable"] {
        assert!(msg.contains(f), "{msg} should name {f}");
    }
    assert!(!msg.contains("parse-compose"), "{msg}");
}

#[test]
fn an_unknown_contract_version_is_named() {
    let future = r#"package autodeploy:policy@0.3.0;
interface decisions {
    record policy-meta { name: string, version: string }
    policy-info: func() -> policy-meta;
}
world policy { export decisions; }"#;
    let bytes = component(future, "policy", "", |_| POLICY_INFO_BODY.into());
    let msg = runtime(100, 64)
        .load(&bytes, "future")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        msg.contains("autodeploy:policy/decisions@0.3.0") && msg.contains("does not know"),
        "{msg}"
    );
    assert!(
        msg.contains("autodeploy:policy/decisions@0.2.0 or autodeploy:policy/decisions@0.1.0"),
        "{msg}"
    );
}

#[test]
fn a_component_for_another_interface_is_refused() {
    let other = "package acme:other@1.0.0;\ninterface api { hello: func() -> u32; }\nworld w { export api; }";
    let bytes = component(other, "w", "", |_| "(i32.const 1)".into());
    let err = runtime(100, 64)
        .load(&bytes, "other")
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("autodeploy:policy/decisions@0.1.0"),
        "{err}"
    );
}

#[test]
fn imports_are_refused_by_name() {
    let wit = CONTRACT.replace(
        "world policy {",
        "world policy {\n    import log: func(message: string);",
    );
    let bytes = component(
        &wit,
        "policy",
        r#"(import "$root" "log" (func (param i32 i32)))"#,
        |name| {
            if name == "policy-info" {
                POLICY_INFO_BODY.into()
            } else {
                TRAP_BODY.into()
            }
        },
    );
    let err = runtime(100, 64)
        .load(&bytes, "imports")
        .err()
        .expect("refused");
    assert!(
        matches!(&err, PolicyError::Imports(names) if names == &["log"]),
        "{err}"
    );
    assert!(err.to_string().contains("no WASI"), "{err}");
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let rt = runtime(100, 64);
    assert!(matches!(
        rt.load(b"not wasm", "junk"),
        Err(PolicyError::Invalid(_))
    ));
    let core_module = wat::parse_str("(module)").unwrap();
    assert!(matches!(
        rt.load(&core_module, "core"),
        Err(PolicyError::Invalid(_))
    ));
}

/// `open` repeated `depth` times around `x`, each closed again.
fn nested(open: &str, depth: usize) -> String {
    let closers: String = open
        .chars()
        .rev()
        .filter_map(|c| match c {
            '[' => Some(']'),
            '{' => Some('}'),
            _ => None,
        })
        .collect();
    format!("{}x{}", open.repeat(depth), closers.repeat(depth))
}

/// Nine levels of anchors, each nine aliases of the level below; `merge`
/// puts the aliases in `<<` merge lists instead of plain lists.
fn bomb(merge: bool) -> String {
    let mut yaml = if merge {
        String::from("m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\n")
    } else {
        String::from("m0: &m0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
    };
    for i in 1..10 {
        let refs = vec![format!("*m{}", i - 1); 9].join(", ");
        if merge {
            yaml.push_str(&format!("m{i}: &m{i} {{<<: [{refs}], k{i}: 1}}\n"));
        } else {
            yaml.push_str(&format!("m{i}: &m{i} [{refs}]\n"));
        }
    }
    yaml.push_str("services:\n  web:\n    image: x:1\n");
    yaml
}

/// Every hostile shape the bundled policy must refuse with its own words,
/// with what those words contain.
fn hostile_files() -> Vec<(&'static str, String, &'static str)> {
    let mut files = vec![
        ("alias bomb", bomb(false), "repetition limit"),
        ("merge bomb", bomb(true), "repetition limit"),
    ];
    // Padding raises serde_yaml's own repetition limit far past the memory
    // cap; the policy's expansion limit must answer instead.
    let pad = format!("x-pad:\n{}", "- a\n".repeat(200_000));
    files.push((
        "padded alias bomb",
        format!("{pad}{}", bomb(false)),
        "aliases expand the file to more than",
    ));
    files.push((
        "padded merge bomb",
        format!("{pad}{}", bomb(true)),
        "aliases expand the file to more than",
    ));
    for (name, open) in [
        ("deep flow nesting", "["),
        ("deep flow nesting behind tags", "!t ["),
        ("deep flow nesting behind anchors", "&a ["),
        ("deep flow nesting behind both", "!t &a {k: "),
    ] {
        files.push((
            name,
            format!("services:\n  web: {}\n", nested(open, 10_000)),
            "nest deeper than 128 levels",
        ));
    }
    // As deep as indentation allows within the 1 MiB cap.
    let block_deep: String = (0..1400)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    assert!(block_deep.len() < 1 << 20);
    files.push(("deep block nesting", block_deep, "recursion limit"));
    let tagged_block_deep: String = (0..1400)
        .map(|i| format!("{}- !t &a{i}\n", " ".repeat(2 * i)))
        .take_while({
            let mut len = 0;
            move |line| {
                len += line.len();
                len < 1 << 20
            }
        })
        .collect();
    files.push((
        "deep block nesting behind tags and anchors",
        tagged_block_deep,
        "recursion limit",
    ));
    files.push((
        "10 MB file",
        format!(
            "services:\n  web:\n    image: x:1\n{}",
            "# padding\n".repeat(1024 * 1024)
        ),
        "the limit is 1048576 bytes",
    ));
    files
}

#[test]
fn hostile_compose_files_fail_one_call_each_with_their_own_error() {
    // The daemon's default limits: the answer must be the policy's own
    // refusal, never its budget, memory cap or deadline.
    let policy = bundled();
    for (name, yaml, wanted) in hostile_files() {
        match policy.parse_compose(&yaml) {
            Err(PolicyError::Rejected { message, .. }) => {
                assert!(message.contains(wanted), "{name}: {message}")
            }
            other => panic!("{name}: expected the policy to reject it, got {other:?}"),
        }
    }
    assert_eq!(
        policy
            .parse_compose("services: {a: {image: x:1}}")
            .unwrap()
            .images,
        ["x:1"]
    );
}

/// `n` services, one short image each: 10,000 make ~300 KB.
fn many_services(n: usize) -> String {
    let mut yaml = String::from("services:\n");
    for i in 0..n {
        yaml.push_str(&format!("  s{i}:\n    image: r/app{i}:1\n"));
    }
    yaml
}

/// Services as people write them, as many as fit just under the 1 MiB limit.
fn near_the_size_limit() -> (String, usize) {
    let mut yaml = String::from(
        "x-defaults: &defaults\n  restart: unless-stopped\n  logging: {driver: json-file}\nservices:\n",
    );
    let mut n = 0;
    loop {
        let service = format!(
            "  svc{n}:\n    <<: *defaults\n    image: registry.example.com/team/svc{n}:1.{n}\n    \
             environment:\n      PORT: \"8080\"\n      NAME: svc{n}\n    ports: [\"{}:8080\"]\n    \
             labels: {{tier: web, index: \"{n}\"}}\n",
            10_000 + n % 50_000
        );
        if yaml.len() + service.len() > (1 << 20) - 64 {
            return (yaml, n);
        }
        yaml.push_str(&service);
        n += 1;
    }
}

/// One list of tiny items up to the 1 MiB limit: of the shapes measured,
/// the one that costs the most instructions and still fits the default
/// 64 MiB memory cap.
fn one_long_list() -> String {
    let mut yaml = String::from("services:\n  web:\n    image: x:1\nx-list:\n");
    yaml.push_str(&"- a\n".repeat(((1 << 20) - 64 - yaml.len()) / 4));
    yaml
}

#[test]
fn every_valid_compose_file_up_to_the_size_limit_parses_within_the_budget() {
    let policy = bundled();
    let ten_thousand = many_services(10_000);
    assert!(
        (250_000..400_000).contains(&ten_thousand.len()),
        "{}",
        ten_thousand.len()
    );
    let (near, n) = near_the_size_limit();
    assert!(
        near.len() > 1_040_000 && near.len() <= 1 << 20,
        "{}",
        near.len()
    );
    let list = one_long_list();
    for (name, yaml, images) in [
        ("10,000 services", &ten_thousand, 10_000),
        ("1 MiB of services", &near, n),
        ("1 MiB of one list", &list, 1),
    ] {
        let mut session = policy.session().unwrap();
        let found = session
            .parse_compose(yaml)
            .unwrap_or_else(|e| panic!("{name} ({} bytes): {e}", yaml.len()));
        assert_eq!(found.images.len(), images, "{name}");
        let fuel = session.last_fuel().expect("metered");
        eprintln!("{name}: {} bytes, {fuel} instructions", yaml.len());
        // The documented minimum budget covers it, and the default doubles
        // that.
        assert!(fuel < MIN_FUEL, "{name}: {fuel} instructions");
    }
}

#[test]
fn the_same_input_costs_the_same_instructions_idle_and_under_load() {
    let policy = bundled();
    let inputs = [
        ("20 services", many_services(20)),
        ("10,000 services", many_services(10_000)),
        ("alias bomb", bomb(false)),
        ("deep flow nesting behind tags", nested("!t [", 10_000)),
    ];
    let measure = || {
        inputs
            .iter()
            .map(|(name, yaml)| {
                let mut session = policy.session().unwrap();
                let answer = format!("{:?}", session.parse_compose(yaml));
                (*name, answer, session.last_fuel().expect("metered"))
            })
            .collect::<Vec<_>>()
    };
    let idle = measure();
    assert_eq!(idle, measure(), "two idle runs differ");
    let load = CpuLoad::saturate();
    let loaded = measure();
    assert!(load.spins() > 0, "the load threads never ran");
    drop(load);
    assert_eq!(idle, loaded, "the answer or its cost changed under load");
}

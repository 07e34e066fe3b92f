//! The policy runtime against hostile guests and hostile input: each failure
//! costs one call, names what went wrong, and the host goes on.

mod common;

use autodeploy::policy::{BUNDLED_POLICY, PolicyError, Project};
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
    assert_eq!(exports, ["autodeploy:policy/decisions@0.1.0"]);
}

#[test]
fn endless_loop_fails_one_call_and_the_host_goes_on() {
    let rt = runtime(50, 64);
    let hostile = rt
        .load(&hostile_policy(LOOP_BODY), "loop")
        .expect("loads: policy-info behaves");
    assert_eq!(hostile.info().name, "hostile");
    for _ in 0..2 {
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
fn memory_bomb_fails_with_the_memory_limit() {
    let rt = runtime(1000, 16);
    let hostile = rt.load(&hostile_policy(MEMORY_BOMB_BODY), "bomb").unwrap();
    let err = hostile
        .decide_commit(&Project::default(), None)
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
        small.check_deployable(&Project::default()),
        Err(PolicyError::Memory { .. })
    ));
    let large = runtime(1000, 64)
        .load(&hostile_policy(grow), "grow")
        .unwrap();
    assert!(matches!(
        large.check_deployable(&Project::default()),
        Err(PolicyError::Trap { .. })
    ));
}

#[test]
fn trap_fails_one_call_with_a_clear_error() {
    let hostile = runtime(100, 64)
        .load(&hostile_policy(TRAP_BODY), "trap")
        .unwrap();
    let err = hostile
        .check_auto_deploy(&Project::default(), true)
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
    assert!(session.check_deployable(&Project::default()).is_err());
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
    assert!(matches!(err, PolicyError::Missing(_)), "{msg}");
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

#[test]
fn hostile_compose_files_fail_one_call_each() {
    // A generous deadline: this asserts the policy's own answer, and a loaded
    // CI machine must not turn it into a timeout.
    let policy = runtime(5000, 64).load_bundled().unwrap();
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("services:\n  web:\n    image: x:1\n    labels: *a9\n");
    let deep = format!(
        "services:\n  web: {}x{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // As deep as indentation allows within the 1 MiB cap.
    let block_deep: String = (0..1400)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    assert!(block_deep.len() < 1 << 20);
    let huge = format!(
        "services:\n  web:\n    image: x:1\n{}",
        "# padding\n".repeat(1024 * 1024)
    );

    for (name, yaml, wanted) in [
        ("alias bomb", bomb, "repetition limit"),
        ("deep flow nesting", deep, "nest deeper than 128 levels"),
        ("deep block nesting", block_deep, "recursion limit"),
        ("10 MB file", huge, "the limit is 1048576 bytes"),
    ] {
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

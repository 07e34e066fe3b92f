//! Builds small hostile policy components for the tests: a core module written
//! in WAT, with one body per exported function, componentized against a WIT
//! world with wit-component, exactly as a real guest would be.

#![allow(dead_code)]

pub mod agent;
pub mod browser;
pub mod chaos;
pub mod daemon;
pub mod db;
pub mod fake_registry;
pub mod git;
pub mod load;
pub mod netns;
pub mod reap;
pub mod receiver;
pub mod registry;
pub mod replicas;
pub mod smtp;
pub mod token_issuer;
pub mod trickle;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autodeploy::policy::{Policy, PolicyConfig, PolicyRuntime};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::abi::{AbiVariant, WasmType};
use wit_parser::{Resolve, WorldItem};

/// The contract itself.
pub const CONTRACT: &str = include_str!("../../../wit/policy@0.1.0/policy.wit");

/// `policy-info` answers {name: "hostile", version: "0"} from a static record
/// at address 16; the name and version bytes sit at 64 and 80.
pub const POLICY_INFO_BODY: &str = "(i32.const 16)";
/// Spins until its instruction budget (or the deadline) stops it.
pub const LOOP_BODY: &str = "(loop $spin (br $spin)) unreachable";
/// Asks for 200 MiB more memory.
pub const MEMORY_BOMB_BODY: &str = "(drop (memory.grow (i32.const 3200))) unreachable";
pub const TRAP_BODY: &str = "unreachable";

/// A component for `wit`'s `world`; `body(name)` gives each exported function's
/// core body, `core_imports` the module's import declarations.
pub fn component(
    wit: &str,
    world: &str,
    core_imports: &str,
    body: impl Fn(&str) -> String,
) -> Vec<u8> {
    let mut resolve = Resolve::new();
    let pkg = resolve
        .push_str("fixture.wit", wit)
        .expect("fixture WIT parses");
    let world = resolve
        .select_world(&[pkg], Some(world))
        .expect("fixture world");
    let mut funcs = String::new();
    for (key, item) in &resolve.worlds[world].exports {
        let WorldItem::Interface { id, .. } = item else {
            continue;
        };
        let interface = resolve.name_world_key(key);
        for (name, func) in &resolve.interfaces[*id].functions {
            let sig = resolve.wasm_signature(AbiVariant::GuestExport, func);
            let types = |list: &[WasmType]| -> String {
                list.iter()
                    .map(|t| match t {
                        WasmType::I64 | WasmType::PointerOrI64 => " i64",
                        WasmType::F32 => " f32",
                        WasmType::F64 => " f64",
                        _ => " i32",
                    })
                    .collect()
            };
            let params = types(&sig.params);
            let results = types(&sig.results);
            let params = if params.is_empty() {
                String::new()
            } else {
                format!("(param{params})")
            };
            let results = if results.is_empty() {
                String::new()
            } else {
                format!("(result{results})")
            };
            funcs.push_str(&format!(
                "(func (export \"{interface}#{name}\") {params} {results} {})\n",
                body(name)
            ));
        }
    }
    let wat = format!(
        r#"(module
  {core_imports}
  (memory (export "memory") 1)
  (data (i32.const 16) "\40\00\00\00\07\00\00\00\50\00\00\00\01\00\00\00")
  (data (i32.const 64) "hostile")
  (data (i32.const 80) "0")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.const 1)
        (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)))))))
    (local.get $p))
  {funcs})"#
    );
    let mut module = wat::parse_str(&wat).expect("fixture WAT parses");
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("embed metadata");
    ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .expect("componentize fixture")
}

/// A full implementation of the contract whose `policy-info` behaves and whose
/// other functions all run `hostile_body`.
pub fn hostile_policy(hostile_body: &str) -> Vec<u8> {
    component(CONTRACT, "policy", "", |name| {
        if name == "policy-info" {
            POLICY_INFO_BODY.into()
        } else {
            hostile_body.into()
        }
    })
}

pub fn runtime(deadline_ms: u64, memory_mib: usize) -> Arc<PolicyRuntime> {
    PolicyRuntime::new(PolicyConfig {
        deadline: Duration::from_millis(deadline_ms),
        memory_limit: memory_mib << 20,
        ..PolicyConfig::default()
    })
    .expect("policy runtime")
}

/// The bundled policy under the daemon's default limits.
pub fn bundled() -> Policy {
    PolicyRuntime::new(PolicyConfig::default())
        .expect("policy runtime")
        .load_bundled()
        .expect("bundled policy loads")
}

/// A loopback HTTP server that answers every request with 500; serves a
/// bounded number of connections, then stops by itself.
pub fn http_500_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(32) {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    port
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `timeout`.
/// The timeout only bounds a hang: pick it generously, never as an assertion.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wait_until` for code outside an async runtime.
pub fn wait_until_blocking(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bundled policy with a custom section appended: decides the same, has
/// another sha256 (so it is neither the active nor the built-in one).
pub fn policy_variant(tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"variant");
    let mut bytes = autodeploy::policy::BUNDLED_POLICY.to_vec();
    bytes.push(0); // custom section id
    bytes.push(payload.len() as u8); // fits one LEB128 byte
    bytes.extend_from_slice(&payload);
    bytes
}

/// Runs the CLI against `d` with the admin token and JSON output (as a
/// script sets `AUTODEPLOY_OUTPUT=json` or passes `-o json`); its JSON
/// answer, or its stderr when it fails.
pub fn cli(d: &daemon::Daemon, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = d
        .cli(args)
        .env("AUTODEPLOY_OUTPUT", "json")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `cmd` (spawned with a piped stdin, stdout and stderr) with `stdin`
/// written to it; its output.
pub fn output_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// An external image project on `git_url` (a kind the agents run, so an
/// aligning tick deploys it): the benches' many projects.
pub fn external_image_project(name: String, git_url: String) -> autodeploy::store::ProjectFields {
    use autodeploy::store::{GitSource, ProjectFields, ProjectType};
    ProjectFields {
        name,
        project_type: ProjectType::Image,
        git_source: GitSource::External,
        git_url: Some(git_url),
        git_branch: "main".into(),
        compose_file_path: "docker-compose.yml".into(),
        expose_service: None,
        expose_port: None,
        auto_deploy_enabled: true,
        image_ref: Some("example.com/app:1".into()),
        container_port: Some(80),
        labels: Default::default(),
        deploy: Default::default(),
    }
}

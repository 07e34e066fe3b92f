//! With the feature `precompiled-policy`: precompiles the bundled policy for
//! the daemon's engine, so that start-up and each CLI call load native code
//! instead of compiling the component.

use std::path::Path;

include!("../src/policy/engine_config.rs");

/// Writes `default-policy.cwasm` beside the component. It is empty when the
/// daemon is built for another target than the one this script runs on: the
/// code would not fit that machine, and the daemon then compiles at start.
pub fn bundled(component: &[u8], out_dir: &Path) {
    println!("cargo:rerun-if-changed=src/policy/engine_config.rs");
    println!("cargo:rerun-if-changed=build/precompile.rs");
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let bytes = if host == target {
        let engine = wasmtime::Engine::new(&policy_engine_config(true))
            .unwrap_or_else(|e| panic!("create the policy engine: {e:#}"));
        engine
            .precompile_component(component)
            .unwrap_or_else(|e| panic!("precompile the bundled policy: {e:#}"))
    } else {
        Vec::new()
    };
    std::fs::write(out_dir.join("default-policy.cwasm"), bytes)
        .expect("write the precompiled bundled policy");
}

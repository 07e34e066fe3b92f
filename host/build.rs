//! Builds the policies in this repository for wasm32-unknown-unknown and turns
//! them into components, so the daemon ships its default policy inside the
//! binary with no manual step and no tool to install.
//!
//! - the default policy (`guest/`, contract 0.2.0): embedded as BUNDLED_POLICY
//!   and written to `<target>/policies/default-0.2.0.wasm`;
//! - the same policy built for contract 0.1.0 (`--features wit-0-1-0`):
//!   `<target>/policies/default-0.1.0.wasm`, for tests and operators of old
//!   setups;
//! - the sync-windows policy (`policies/sync-windows/`), when it is in the
//!   tree: `<target>/policies/sync-windows.wasm`.
//!
//! Each path is passed to the package's tests and benches as an environment
//! variable at compile time: AUTODEPLOY_POLICY_V020_WASM,
//! AUTODEPLOY_POLICY_V010_WASM and AUTODEPLOY_POLICY_SYNC_WINDOWS_WASM.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[cfg(feature = "precompiled-policy")]
#[path = "build/precompile.rs"]
mod precompile;

const GUEST_TARGET: &str = "wasm32-unknown-unknown";

struct Build {
    /// The policy crate's folder, relative to the workspace root.
    dir: &'static str,
    /// The core module's file name (the crate name with underscores).
    module: &'static str,
    features: &'static [&'static str],
    file: &'static str,
    env: &'static str,
}

const DEFAULT_V020: Build = Build {
    dir: "guest",
    module: "autodeploy_guest.wasm",
    features: &[],
    file: "default-0.2.0.wasm",
    env: "AUTODEPLOY_POLICY_V020_WASM",
};

const DEFAULT_V010: Build = Build {
    dir: "guest",
    module: "autodeploy_guest.wasm",
    features: &["wit-0-1-0"],
    file: "default-0.1.0.wasm",
    env: "AUTODEPLOY_POLICY_V010_WASM",
};

const SYNC_WINDOWS: Build = Build {
    dir: "policies/sync-windows",
    module: "autodeploy_sync_windows.wasm",
    features: &[],
    file: "sync-windows.wasm",
    env: "AUTODEPLOY_POLICY_SYNC_WINDOWS_WASM",
};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace");
    let sync_windows = root.join(SYNC_WINDOWS.dir).join("Cargo.toml").is_file();
    let mut watched = vec!["policy-contract", "guest", "Cargo.toml", "Cargo.lock"];
    // A path that does not exist would make cargo rerun this script on every
    // build; a new policies/ folder comes with a workspace Cargo.toml change.
    if root.join("policies").is_dir() {
        watched.push("policies");
    }
    for path in watched {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target = workspace_target_dir(&out_dir);
    // A target dir of its own: the outer cargo holds the lock on its own.
    let guest_target = target.join("policy-guest");
    let policies = target.join("policies");
    std::fs::create_dir_all(&policies)
        .unwrap_or_else(|e| panic!("create {}: {e}", policies.display()));

    let mut builds = vec![DEFAULT_V020, DEFAULT_V010];
    if sync_windows {
        builds.push(SYNC_WINDOWS);
    }
    for build in &builds {
        let component = componentize(root, &guest_target, build);
        let path = policies.join(build.file);
        std::fs::write(&path, &component)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("cargo:rustc-env={}={}", build.env, path.display());
        if build.file == DEFAULT_V020.file {
            std::fs::write(out_dir.join("default-policy.wasm"), &component)
                .expect("write the default policy component");
            #[cfg(feature = "precompiled-policy")]
            precompile::bundled(&component, &out_dir);
        }
    }
}

/// Builds one policy crate for wasm32 and returns it as a component. Builds
/// run one after the other in one target dir, so the module file is read
/// before the next build replaces it.
fn componentize(root: &Path, target_dir: &Path, build: &Build) -> Vec<u8> {
    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The crate's own manifest selects it whether or not it is a workspace
    // member.
    cargo
        .args(["build", "--release", "--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(root.join(build.dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if !build.features.is_empty() {
        cargo.arg("--features").arg(build.features.join(","));
    }
    cargo
        // Flags and wrappers meant for the host build (clippy, coverage) must
        // not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Every decision runs this code: optimize it fully. Set here rather
        // than in the workspace profile so the host's own build is unaffected.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("run cargo for {}: {e}", build.dir));
    if !status.success() {
        panic!(
            "building the policy in {} ({}) failed; is the wasm target installed? \
             run `rustup target add {GUEST_TARGET}`",
            build.dir, build.file
        );
    }

    let module_path = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(build.module);
    let module = std::fs::read(&module_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", module_path.display()));
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|enc| enc.validate(true).encode())
        .unwrap_or_else(|e| panic!("componentize {}: {e:#}", build.file))
}

/// The target directory this build runs in: the nearest ancestor of OUT_DIR
/// that cargo marked with CACHEDIR.TAG.
fn workspace_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out_dir)
        .to_path_buf()
}

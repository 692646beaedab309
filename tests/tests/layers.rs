//! The folders are floors (README.md, "Layout"; docs/ARCHITECTURE.md, "The layers"): `crates/` (the ground:
//! embedded-pg, store, template-db, engine, test-utils), `sagas/` (the Nexus world and the example saga),
//! `fault-injection/` (the harness and its wire proxy), `bench/`, `cli/` and `examples/` (the top), and
//! `tests/`. A crate's dependencies (not its dev-dependencies) come from its own floor or the floors below;
//! and no crate depends on `ratchet-test-utils` (the test kit) outside `[dev-dependencies]`: production code
//! never runs test code.

use std::process::Command;

/// A package's floor, by the folder its manifest is in.
fn floor(root: &str, manifest: &str) -> (usize, &'static str) {
    let relative = manifest
        .strip_prefix(root)
        .unwrap_or(manifest)
        .trim_start_matches('/');
    const FLOORS: [(&str, usize, &str); 7] = [
        ("crates/", 0, "crates/"),
        ("sagas/", 1, "sagas/"),
        ("fault-injection/", 2, "fault-injection/"),
        ("bench/", 3, "bench/"),
        ("cli/", 3, "cli/"),
        ("examples/", 3, "examples/"),
        ("tests/", 4, "tests/"),
    ];
    FLOORS
        .iter()
        .find(|(prefix, _, _)| relative.starts_with(prefix))
        .map(|(_, floor, name)| (*floor, *name))
        .unwrap_or_else(|| {
            panic!("{relative} is on no floor: add its folder to this test and the docs")
        })
}

#[test]
fn no_crate_imports_from_a_higher_floor() {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let root = metadata["workspace_root"].as_str().expect("workspace root");
    let packages = metadata["packages"].as_array().expect("packages");
    let manifest_of = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["manifest_path"].as_str())
    };
    let mut checked = 0;
    let mut test_kit_users = 0;
    let mut upward = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("name");
        let (floor_of_package, folder) =
            floor(root, package["manifest_path"].as_str().expect("path"));
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let Some(manifest) = dependency["name"].as_str().and_then(manifest_of) else {
                continue; // not a workspace crate
            };
            let dependency_name = dependency["name"].as_str().unwrap_or_default();
            if dependency_name == "ratchet-test-utils" {
                test_kit_users += 1;
                if dependency["kind"] != "dev" {
                    upward.push(format!(
                        "{name} depends on the test kit (ratchet-test-utils) outside [dev-dependencies]"
                    ));
                }
            }
            if !dependency["kind"].is_null() {
                continue; // a dev- or build-dependency
            }
            checked += 1;
            let (floor_of_dependency, dependency_folder) = floor(root, manifest);
            if floor_of_dependency > floor_of_package {
                upward.push(format!(
                    "{name} ({folder}) depends on {dependency_name} ({dependency_folder})"
                ));
            }
        }
    }
    assert!(checked > 10, "only {checked} workspace dependencies found");
    assert!(
        test_kit_users > 3,
        "only {test_kit_users} crates use ratchet-test-utils: was it renamed? (update this test)"
    );
    assert!(
        upward.is_empty(),
        "imports from a higher floor, or of the test kit:\n{}",
        upward.join("\n")
    );
}

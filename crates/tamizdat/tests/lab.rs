//! The censorship lab (`lab/run`) as part of the test suite: every scenario against this
//! build's `tamizdat` binary, in network namespaces with a censor in the middle.
//!
//! It needs root (namespaces, nftables, tc). Under CI it must run; elsewhere, without root,
//! it says so and passes, so a developer's `cargo test` still works.

use std::{path::Path, process::Command};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn every_censorship_scenario_gets_messages_through() {
    if !is_root() {
        assert!(std::env::var("CI").is_err(), "the censorship lab needs root, and CI must run it");
        eprintln!("skipped: the censorship lab needs root (run `sudo lab/run`)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(root.join("lab/run"))
        .current_dir(&root)
        .env("TAMIZDAT_BIN", env!("CARGO_BIN_EXE_tamizdat"))
        .status()
        .expect("lab/run starts");
    assert!(status.success(), "lab/run failed: see the scenario lines above");
}

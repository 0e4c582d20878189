//! Runs the blaster binary built for these tests.

#![allow(dead_code)]

use std::process::Command;

/// Blaster's exit code, and everything it printed.
pub fn blaster_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blaster"))
        .args(args)
        .output()
        .expect("run blaster");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Whether blaster exited 0, and everything it printed.
pub fn blaster(args: &[&str]) -> (bool, String) {
    let (code, text) = blaster_exit(args);
    (code == Some(0), text)
}

/// One measured second against a local cluster of `replicas`, without
/// warm-up, with `extra` flags.
pub fn short_local_run(replicas: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--local-cluster",
        replicas,
        "--duration",
        "1",
        "--warmup",
        "0",
    ];
    args.extend_from_slice(extra);
    blaster(&args)
}

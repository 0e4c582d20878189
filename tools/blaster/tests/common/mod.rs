//! Runs the blaster binary built for these tests.

use std::process::Command;

/// Whether blaster exited 0, and everything it printed.
pub fn blaster(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blaster"))
        .args(args)
        .output()
        .expect("run blaster");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

//! blaster against replicas that ask for a password: with
//! `--password-file` it runs; without, every command is refused `NoAuth`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::short_local_run;

#[test]
fn blaster_sends_the_password_the_replicas_ask_for() {
    let dir = std::env::temp_dir().join(format!("blaster-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "blaster-password\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let requirepass = format!("--replica-arg=--requirepass-file={}", file.display());
    let path = file.to_str().unwrap();
    let (ok, out) = short_local_run("1", &["--in-memory", &requirepass, "--password-file", path]);
    assert!(ok, "{out}");
    assert!(!out.contains("blaster-password"), "{out}");
    let (ok, out) = short_local_run("1", &["--in-memory", &requirepass]);
    assert!(!ok, "blaster without the password succeeded:\n{out}");
    assert!(out.contains("asks for a password"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

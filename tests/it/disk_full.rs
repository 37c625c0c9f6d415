//! A full disk gives `451 4.3.0`, never a `250`, and the server goes on.

use std::process::Command;

use super::harness::{queue_id, Client, Gomail};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_gives_451_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount runs");
    assert!(
        st.success(),
        "this test mounts a 2 MiB tmpfs and needs root (CI runs as root)"
    );
    let _m = Tmpfs(mnt.clone());
    let g = Gomail::start_on(&mnt.join("data"), "max_message_size: 1MB\n");
    let body = format!(
        "Subject: big\r\n\r\n{}",
        ("z".repeat(998) + "\r\n").repeat(300)
    );
    let mut refused = None;
    for _ in 0..20 {
        let mut c = Client::connect(g.addr);
        c.cmd("EHLO filler.example");
        let r = c.mail("s@sender.example", &["r@example.test"], &body);
        if queue_id(&r).is_none() {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the 2 MiB disk never filled");
    assert_eq!(
        r,
        "451 4.3.0 Error: could not store the message, try again later\r\n"
    );
    let mut c = Client::connect(g.addr);
    assert!(c.cmd("EHLO still.example").starts_with("250-"));
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 OK\r\n");
}

//! The command line as an operator uses it.

use std::process::Command;

use super::harness::Gomail;

/// Runs the gomail binary: (succeeded, stdout, stderr).
pub(crate) fn gomail(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(super::harness::gomail_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_validate_names_the_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("gomail.yaml");
    std::fs::write(
        &f,
        "primary_domain: example.test\n# size\nmax_message_size: lots\n",
    )
    .unwrap();
    let (ok, _, err) = gomail(&["config", "validate", "--config", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}:3: key `max_message_size`: expected a size",
            f.display()
        )),
        "{err}"
    );
    std::fs::write(&f, "primary_domain: example.test\nsmtp_lisen: [\":25\"]\n").unwrap();
    let (ok, _, err) = gomail(&["config", "validate", "--config", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(":2: unknown key `smtp_lisen` (did you mean `smtp_listen`?)"),
        "{err}"
    );
}

/// Wrong shapes and bad YAML, as `config validate` tells them: the file,
/// the line and the key, never the YAML parser's or serde's words.
#[test]
fn config_validate_names_the_line_of_every_shape_and_syntax_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("gomail.yaml");
    for (text, at, says) in [
        (
            "# c\nport: [1]\n",
            2,
            "key `port`: expected a whole number, got a list `[1]`",
        ),
        (
            "smtp_listen: {a: 1}\n",
            1,
            "key `smtp_listen`: expected a list, got a mapping",
        ),
        (
            "spf_enforcement: maybe\n",
            1,
            "key `spf_enforcement`: expected one of none, soft, strict, got `maybe`",
        ),
        (
            "http_timeouts:\n  read: [1]\n",
            2,
            "key `http_timeouts.read`: expected a duration",
        ),
        (
            "port: !!int x\n",
            1,
            "key `port`: expected an integer, got the string \"x\"",
        ),
        (
            "primary_domain: a\n  bad: [\n",
            2,
            "YAML syntax error (column 6)",
        ),
        ("\t port: 1\n", 1, "YAML syntax error"),
    ] {
        std::fs::write(&f, text).unwrap();
        let (ok, _, err) = gomail(&["config", "validate", "--config", f.to_str().unwrap()]);
        assert!(!ok, "{text:?}");
        assert!(
            err.contains(&format!("{}:{at}: {says}", f.display())),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn config_set_get_show_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("gomail.yaml");
    let p = f.to_str().unwrap();
    std::fs::write(&f, "# production\nprimary_domain: example.test\n").unwrap();
    assert!(gomail(&["config", "set", "bearer_token", "t0ken", "--config", p]).0);
    assert!(
        gomail(&[
            "config",
            "set",
            "additional_domains",
            "a.example,b.example",
            "--config",
            p
        ])
        .0
    );
    let (ok, _, err) = gomail(&["config", "set", "max_message_size", "huge", "--config", p]);
    assert!(!ok && err.contains("key `max_message_size`"), "{err}");
    let (_, out, _) = gomail(&["config", "get", "additional_domains", "--config", p]);
    assert_eq!(out, "a.example,b.example\n");
    let (_, out, _) = gomail(&["config", "show", "--config", p]);
    assert!(out.contains("bearer_token: \"********\""), "{out}");
    assert!(!out.contains("t0ken"));
    assert!(std::fs::read_to_string(&f)
        .unwrap()
        .starts_with("# production\n"));
    let (ok, out, _) = gomail(&["config", "validate", "--config", p]);
    assert!(ok, "{out}");
}

#[test]
fn a_second_server_on_the_same_data_dir_or_port_refuses_to_start() {
    let g = Gomail::start("");
    let (ok, _, err) = gomail(&["server", "--config", g.config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("another gomail process is using data_dir"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = gomail(&[
        "server",
        "--smtp-listen",
        &g.addr.to_string(),
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen on {}", g.addr)),
        "{err}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let mut g = Gomail::start("");
    let status = g.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/gomail.yaml");
    let (ok, out, err) = gomail(&["config", "validate", "--config", example]);
    assert!(ok, "{out}{err}");
    let (_, out, _) = gomail(&["config", "get", "smtp_listen", "--config", example]);
    assert_eq!(out, "0.0.0.0:25,[::]:25\n");
}

#[test]
fn the_gomail_security_settings_load_unchanged() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/gomail-security.yaml");
    let (ok, out, err) = gomail(&["config", "validate", "--config", file]);
    assert!(ok, "{out}{err}");
    // The validation block and the DigitalOcean token (ACME) take effect.
    let (_, out, _) = gomail(&[
        "config",
        "get",
        "validation.strict_headers",
        "--config",
        file,
    ]);
    assert_eq!(out, "true\n");
    let (_, notes, _) = gomail(&["config", "validate", "--config", file]);
    assert!(!notes.contains("note: do_api_token"), "{notes}");
    assert!(!notes.contains("note: validation."), "{notes}");
}

#[test]
fn restart_on_the_same_port_right_after_traffic() {
    // The server closes first after QUIT, so its side of each connection
    // sits in TIME-WAIT for a minute; a restart must not be blocked by them.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A fixed port below the ephemeral range, so no parallel test's
    // port-0 bind can take it between the two runs.
    let mut g = Gomail::start_listening(&data, "127.0.0.1:21025", "");
    let addr = g.addr;
    for _ in 0..20 {
        let mut c = super::harness::Client::connect(addr);
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
        assert!(c.closed());
    }
    assert!(g.terminate().success());
    let g2 = Gomail::start_listening(&data, &addr.to_string(), "");
    assert_eq!(g2.addr, addr);
}

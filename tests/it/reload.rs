//! Live reload from outside: `gomail config set … --reload`, SIGHUP and
//! `POST /api/v1/reload` on the running binary; what changes for new
//! sessions, what an open session keeps, and what a bad file leaves alone.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::harness::{
    api_port, gomail_cli, greet_from, http_with, log_events, queued, wait_until, Client, Gomail,
};

const ADMIN: &str = "admin-reload-5c1d";

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `POST /api/v1/reload` with `Authorization: <auth>`: (status, body).
fn reload_via_api(g: &Gomail, auth: &str) -> (u16, String) {
    let (status, _, body) = http_with(
        g.api,
        "POST",
        "/api/v1/reload",
        &[("Authorization", auth)],
        "",
    );
    (status, body)
}

/// A message of about `kib` KiB.
fn message_of(kib: usize) -> String {
    let mut m = String::from("Subject: sized\r\n\r\n");
    for _ in 0..kib * 1024 / 80 {
        m.push_str(&"x".repeat(78));
        m.push_str("\r\n");
    }
    m
}

/// The `SIZE` a new session from `src` is offered.
fn size_offered(g: &Gomail, src: IpAddr) -> String {
    let mut c = Client::connect_from(g.addr, Some(src));
    let ehlo = c.cmd("EHLO client.test");
    ehlo.lines()
        .find_map(|l| l.strip_prefix("250-SIZE ").or(l.strip_prefix("250 SIZE ")))
        .unwrap_or_else(|| panic!("no SIZE in {ehlo}"))
        .trim()
        .to_string()
}

#[test]
fn config_set_reload_changes_size_and_per_ip_limit_for_new_sessions_only() {
    let g = Gomail::start(&format!(
        "port: {}\nadmin_token: {ADMIN}\ntrusted_networks: []\nsmtp_connection_rate_limit: 0\n\
         ban_threshold: 0\nmax_connections_per_ip: 3\n# the size limit\nmax_message_size: 5000000 # five MB\n",
        api_port()
    ));
    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 9));
    let mut open = Client::connect_from(g.addr, Some(src));
    assert!(open.cmd("EHLO a.test").contains("SIZE 5000000"));

    let (ok, out, err) = gomail_cli(
        &g,
        &["config", "set", "max_message_size", "100000", "--reload"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied: max_message_size"), "{out}");
    let (ok, out, err) = gomail_cli(
        &g,
        &["config", "set", "max_connections_per_ip", "2", "--reload"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied: max_connections_per_ip"), "{out}");
    // Numbers stay numbers, comments stay.
    let file = std::fs::read_to_string(&g.config).unwrap();
    assert!(
        file.contains("# the size limit\nmax_message_size: 100000 # five MB\n"),
        "{file}"
    );
    assert!(file.contains("\nmax_connections_per_ip: 2\n"), "{file}");

    // A new session is told the new SIZE and held to it.
    let mut new = Client::connect_from(g.addr, Some(src));
    let r = new.cmd("EHLO b.test");
    assert!(r.contains("SIZE 100000\r\n"), "{r}");
    assert!(new.cmd("MAIL FROM:<s@client.test>").starts_with("250"));
    assert!(new.cmd("RCPT TO:<u@example.test>").starts_with("250"));
    assert!(new.cmd("DATA").starts_with("354"));
    new.send(message_of(200).as_bytes());
    new.send(b"\r\n.\r\n");
    let r = new.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");

    // Two connections are open from src: the new limit refuses a third.
    let (_third, line) = greet_from(g.addr, src);
    assert!(line.starts_with("421 4.7.0"), "{line}");

    // The session opened before the reload goes on under its own rules.
    let r = open.cmd("EHLO a.test");
    assert!(r.contains("SIZE 5000000"), "{r}");
    queued(&open.mail("s@client.test", &["u@example.test"], &message_of(200)));
}

#[test]
fn an_invalid_file_is_refused_and_the_running_configuration_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let g = Gomail::start(&format!(
        "port: {}\nadmin_token: {ADMIN}\nmax_message_size: 5000000\n\
         log_level: info\nlog_format: json\nlog_file: \"{}\"\n",
        api_port(),
        log.display()
    ));
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let good = std::fs::read_to_string(&g.config).unwrap();
    let line = good
        .lines()
        .position(|l| l.starts_with("max_message_size:"))
        .unwrap()
        + 1;
    std::fs::write(
        &g.config,
        good.replace("max_message_size: 5000000", "max_message_size: lots"),
    )
    .unwrap();

    unsafe { libc::kill(g.child.id() as i32, libc::SIGHUP) };
    wait_until(
        Duration::from_secs(10),
        "the refused reload is logged",
        || !log_events(&log, "config_reload_failed").is_empty(),
    );
    let failed = &log_events(&log, "config_reload_failed")[0];
    let at = format!(":{line}: key `max_message_size`");
    assert!(failed["error"].as_str().unwrap().contains(&at), "{failed}");
    assert_eq!(failed["source"], "SIGHUP");

    let auth = format!("Bearer {ADMIN}");
    let (status, body) = reload_via_api(&g, &auth);
    assert_eq!(status, 400, "{body}");
    let v = json(&body);
    assert_eq!(v["error"], "validation_error");
    assert!(v["message"].as_str().unwrap().contains(&at), "{v}");

    let (ok, _, err) = gomail_cli(&g, &["config", "reload"]);
    assert!(!ok);
    assert!(err.contains(&at), "{err}");
    // An emptied file (a rewrite caught half-way) would reset every key.
    std::fs::write(&g.config, "# being rewritten\n").unwrap();
    let (status, body) = reload_via_api(&g, &auth);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the file sets no key"), "{body}");

    // Nothing changed: new sessions still get the old SIZE, and a good
    // file applies afterwards.
    assert_eq!(size_offered(&g, local), "5000000");
    std::fs::write(
        &g.config,
        good.replace("max_message_size: 5000000", "max_message_size: 2000000"),
    )
    .unwrap();
    let (ok, out, err) = gomail_cli(&g, &["config", "reload"]);
    assert!(ok, "{out}{err}");
    assert_eq!(size_offered(&g, local), "2000000");
}

#[test]
fn reload_applies_tokens_api_limits_and_domains_and_names_what_needs_a_restart() {
    const NEW: &str = "admin-rotated-93be";
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gomail.log");
    let g = Gomail::start(&format!(
        "port: {}\nadmin_token: {ADMIN}\nrate_limit_per_minute: 60\n\
         log_level: info\nlog_format: json\nlog_file: \"{}\"\n",
        api_port(),
        log.display()
    ));
    let old = format!("Bearer {ADMIN}");
    let new = format!("Bearer {NEW}");
    let (status, head, _) = http_with(g.api, "GET", "/api/v1/bans", &[("Authorization", &old)], "");
    assert_eq!(status, 200);
    assert_eq!(head["x-ratelimit-limit"], "60");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO a.test");
    c.cmd("MAIL FROM:<s@client.test>");
    assert!(c.cmd("RCPT TO:<u@new.test>").starts_with("550"));

    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace(
            &format!("admin_token: {ADMIN}"),
            &format!("admin_token: {NEW}"),
        )
        .replace("rate_limit_per_minute: 60", "rate_limit_per_minute: 30")
        .replace(
            "additional_domains: [other.test]",
            "additional_domains: [other.test, new.test]",
        )
        .replace(
            "mail_hostname: mx.example.test",
            "mail_hostname: mx2.example.test",
        );
    std::fs::write(&g.config, text).unwrap();
    // The reload is asked with the token in force until it applies.
    let (status, body) = reload_via_api(&g, &old);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["status"], "success");
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    for k in ["admin_token", "rate_limit_per_minute", "additional_domains"] {
        assert!(names("applied").contains(&k.to_string()), "{v}");
    }
    assert!(
        names("changed").contains(&"mail_hostname".to_string()),
        "{v}"
    );
    assert_eq!(names("restart_required"), vec!["mail_hostname"], "{v}");

    let (status, _, _) = http_with(g.api, "GET", "/api/v1/bans", &[("Authorization", &old)], "");
    assert_eq!(status, 401);
    let (status, head, _) = http_with(g.api, "GET", "/api/v1/bans", &[("Authorization", &new)], "");
    assert_eq!(status, 200);
    assert_eq!(head["x-ratelimit-limit"], "30");
    // The new domain is ours for new sessions; the host name waits for a
    // restart.
    let (_c, greeting) = greet_from(g.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(greeting.contains("mx.example.test"), "{greeting}");
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO a.test");
    c.cmd("MAIL FROM:<s@client.test>");
    let r = c.cmd("RCPT TO:<u@new.test>");
    assert!(r.starts_with("250"), "{r}");

    // The audit trail names the keys, never a token.
    wait_until(Duration::from_secs(5), "config_changed is logged", || {
        !log_events(&log, "config_changed").is_empty()
    });
    let changed = &log_events(&log, "config_changed")[0];
    assert!(
        changed["keys"].as_str().unwrap().contains("admin_token"),
        "{changed}"
    );
    assert_eq!(changed["source"], "API");
    let restart = &log_events(&log, "config_restart_required")[0];
    assert_eq!(restart["keys"], "mail_hostname");
    let all = std::fs::read_to_string(&log).unwrap();
    assert!(
        !all.contains(ADMIN) && !all.contains(NEW),
        "a token is in the log"
    );
}

#[test]
fn the_command_line_reaches_the_server_after_its_port_changed_in_the_file() {
    let g = Gomail::start(&format!("port: {}\nadmin_token: {ADMIN}\n", api_port()));
    let other = api_port().to_string();
    let (ok, out, err) = gomail_cli(&g, &["config", "set", "port", &other, "--reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("needs a restart: port"), "{out}");
    // The file now names a port nobody listens on; the server still runs
    // on its own, and the command line finds it there.
    let (ok, out, err) = gomail_cli(&g, &["config", "reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("needs a restart: port"), "{out}");
    let (ok, out, err) = gomail_cli(&g, &["security", "banned-ips"]);
    assert!(ok, "{out}{err}");
}

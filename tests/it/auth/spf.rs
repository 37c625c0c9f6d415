//! SPF at MAIL FROM: results, enforcement, RFC 7208 lookup limits.

use super::super::harness::{api_port, gomail_cli};
use super::*;

/// Sends an unsigned message from `from` through `src`; returns the SPF
/// object gomail stored for it.
fn spf_of(w: &World, g: &Gomail, src: &str, from: &str) -> serde_json::Value {
    let r = send(g, src, from, &w.message(from, None, "spf"));
    let id = queued(&r);
    stored_auth(g, &id)["authentication"]["spf"].clone()
}

#[test]
fn spf_strict_refuses_fail_and_records_pass() {
    let w = world();
    let g = w.gomail("spf_enforcement: strict\n");
    let r = send(
        &g,
        "127.0.0.2",
        "a@pass.test",
        &w.message("a@pass.test", None, "x"),
    );
    assert!(
        r.starts_with("550 5.7.23 SPF validation failed: pass.test does not permit 127.0.0.2"),
        "{r}"
    );
    let r = send(
        &g,
        "127.0.0.1",
        "a@pass.test",
        &w.message("a@pass.test", Some("pass.test"), "x"),
    );
    let id = queued(&r);
    let v = stored_auth(&g, &id);
    let a = &v["authentication"];
    assert_eq!(a["spf"]["result"], "pass");
    assert_eq!(a["spf"]["client_ip"], "127.0.0.1");
    assert_eq!(a["spf"]["mail_from"], "a@pass.test");
    assert_eq!(a["dkim"]["result"], "pass");
    assert_eq!(a["dkim"]["signatures"][0]["domain"], "pass.test");
    assert_eq!(a["dkim"]["signatures"][0]["algorithm"], "ed25519-sha256");
    assert_eq!(a["dkim"]["signatures"][0]["valid"], true);
    assert_eq!(a["dmarc"]["result"], "pass");
    assert_eq!(a["dmarc"]["policy"], "reject");
    assert_eq!(a["iprev"]["result"], "pass");
    // On loopback the resolver answers the PTR itself (RFC 6761:
    // 127.in-addr.arpa is special), so the name is `localhost.`.
    assert!(
        a["iprev"]["ptr"][0].as_str().is_some_and(|p| !p.is_empty()),
        "{a}"
    );
    assert_eq!(a["arc"]["result"], "none");
    assert_eq!(a["arc"]["chain_length"], 0);
    let raw = v["raw"].as_str().unwrap();
    assert!(
        raw.contains("Authentication-Results: mx.example.test;"),
        "{raw}"
    );
    assert!(
        raw.contains("dkim=pass") && raw.contains("spf=pass") && raw.contains("dmarc=pass"),
        "{raw}"
    );
    assert!(
        raw.contains("iprev=pass") && raw.contains("arc=none"),
        "{raw}"
    );
}

#[test]
fn spf_soft_and_none_accept_and_record_failures() {
    let w = world();
    for level in ["soft", "none"] {
        let g = w.gomail(&format!("spf_enforcement: {level}\n"));
        let r = send(
            &g,
            "127.0.0.2",
            "a@none.test",
            &w.message("a@none.test", None, "x"),
        );
        let id = queue_id(&r).unwrap_or_else(|| panic!("{level}: {r}"));
        let v = stored_auth(&g, &id);
        assert_eq!(v["authentication"]["spf"]["result"], "softfail", "{level}");
        let r = send(
            &g,
            "127.0.0.2",
            "a@pass.test",
            &w.message("a@pass.test", None, "x"),
        );
        assert!(queue_id(&r).is_some(), "{level}: {r}");
    }
}

#[test]
fn spf_lookup_limit_gives_permerror() {
    let w = world();
    let g = w.gomail("");
    assert_eq!(
        spf_of(&w, &g, "127.0.0.1", "a@lookups.test")["result"],
        "permerror"
    );
}

#[test]
fn spf_results_land_in_the_json() {
    let w = world();
    let g = w.gomail("");
    for (src, from, want) in [
        ("127.0.0.1", "a@inc.test", "pass"),
        ("127.0.0.2", "a@inc.test", "fail"),
        ("127.0.0.2", "a@redir.test", "fail"),
        ("127.0.0.1", "a@redir.test", "pass"),
        ("127.0.0.1", "a@neutral.test", "neutral"),
        ("127.0.0.1", "a@nospf.test", "none"),
    ] {
        let spf = spf_of(&w, &g, src, from);
        assert_eq!(spf["result"], want, "{src} {from}: {spf}");
    }
    // The null sender is checked with the HELO identity.
    let mut c = Client::connect(g.addr);
    c.cmd("EHLO pass.test");
    let r = c.mail(
        "",
        &["r@example.test"],
        &w.message("postmaster@pass.test", None, "bounce"),
    );
    let id = queued(&r);
    let spf = &stored_auth(&g, &id)["authentication"]["spf"];
    assert_eq!(
        (
            spf["result"].as_str(),
            spf["helo_domain"].as_str(),
            spf["mail_from"].as_str()
        ),
        (Some("pass"), Some("pass.test"), Some(""))
    );
    // A resolver that never answers: temperror, recorded, accepted (enforcement none).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = Gomail::start(&format!(
        "dns_servers: [\"{}\"]\ndns_timeout: 1s\ndkim_enabled: false\ndmarc_enabled: false\n",
        silent.local_addr().unwrap()
    ));
    assert_eq!(
        spf_of(&w, &g, "127.0.0.1", "a@pass.test")["result"],
        "temperror"
    );
}

#[test]
fn spf_void_lookup_limit_gives_permerror() {
    let w = world();
    let g = w.gomail("");
    assert_eq!(
        spf_of(&w, &g, "127.0.0.1", "a@void.test")["result"],
        "permerror"
    );
}

#[test]
fn spf_enforcement_changes_with_a_reload() {
    let w = world();
    let g = w.gomail(&format!(
        "port: {}\nadmin_token: adm-spf-reload\nspf_enforcement: none\n",
        api_port()
    ));
    let fail = |g: &Gomail| {
        send(
            g,
            "127.0.0.2",
            "a@pass.test",
            &w.message("a@pass.test", None, "x"),
        )
    };
    // pass.test does not permit 127.0.0.2: recorded, accepted.
    assert!(queue_id(&fail(&g)).is_some());
    let (ok, out, err) = gomail_cli(
        &g,
        &["config", "set", "spf_enforcement", "strict", "--reload"],
    );
    assert!(ok, "{out}{err}");
    let r = fail(&g);
    assert!(r.starts_with("550 5.7.23"), "{r}");
}

#[test]
fn validation_check_spf_and_check_dkim_turn_the_checks_off() {
    let w = world();
    let g =
        w.gomail("spf_enforcement: strict\nvalidation:\n  check_spf: false\n  check_dkim: false\n");
    // 127.0.0.2 may not send for pass.test, but SPF does not run; the
    // valid signature is not looked at.
    let r = send(
        &g,
        "127.0.0.2",
        "a@pass.test",
        &w.message("a@pass.test", Some("pass.test"), "x"),
    );
    let a = &stored_auth(&g, &queued(&r))["authentication"];
    assert!(a["spf"].is_null(), "{a}");
    assert!(a["dkim"].is_null(), "{a}");
    // With the defaults both run.
    let g = w.gomail("");
    let r = send(
        &g,
        "127.0.0.1",
        "a@pass.test",
        &w.message("a@pass.test", Some("pass.test"), "x"),
    );
    let a = &stored_auth(&g, &queued(&r))["authentication"];
    assert_eq!(a["spf"]["result"], "pass", "{a}");
    assert_eq!(a["dkim"]["result"], "pass", "{a}");
}

#[test]
fn spf_soft_marks_failures_in_a_header_and_the_json() {
    let w = world();
    for (level, marked) in [("soft", true), ("none", false)] {
        let g = w.gomail(&format!("spf_enforcement: {level}\n"));
        let r = send(
            &g,
            "127.0.0.2",
            "a@none.test",
            &w.message("a@none.test", None, "x"),
        );
        let v = stored_auth(&g, &queued(&r));
        assert_eq!(v["authentication"]["spf"]["result"], "softfail");
        assert_eq!(v["authentication"]["spf_failed"], marked, "{level}");
        let raw = v["raw"].as_str().unwrap();
        assert_eq!(
            raw.contains("\r\nX-Gomail-SPF-Failed: softfail (spf_enforcement: soft)\r\n")
                || raw.starts_with("X-Gomail-SPF-Failed: softfail"),
            marked,
            "{level}: {raw}"
        );
        // A pass is never marked.
        let r = send(
            &g,
            "127.0.0.1",
            "a@pass.test",
            &w.message("a@pass.test", None, "x"),
        );
        assert_eq!(
            stored_auth(&g, &queued(&r))["authentication"]["spf_failed"],
            false
        );
    }
}

//! DKIM (mail-auth's and an independent signer's), DMARC enforcement and
//! alignment, and ARC chains sealed by an independent sealer.

use super::*;

/// Signs `message` with Python's dkimpy (an implementation independent of
/// gomail's), RSA-SHA256, relaxed/simple canonicalization.
fn dkimpy_sign(key: &std::path::Path, domain: &str, message: &str) -> String {
    dkimpy_sign_as(key, "rsa", domain, message)
}

/// [`dkimpy_sign`] with another selector (and any key dkimpy reads).
pub(crate) fn dkimpy_sign_as(
    key: &std::path::Path,
    selector: &str,
    domain: &str,
    message: &str,
) -> String {
    dkimpy(&format!(
        "sig=dkim.sign(m,b'{selector}',b'{domain}',key,canonicalize=(b'relaxed',b'simple'),include_headers=[b'From',b'To',b'Subject',b'Message-ID'])\nsys.stdout.buffer.write(sig+m)\n"
    ), key, message)
}

/// Adds an ARC set (RFC 8617) to `message` with dkimpy's `arc_sign`, as a
/// forwarder `authserv_id` sealing for `domain` (selector `rsa`) would.
/// `message` must carry that forwarder's `Authentication-Results`.
fn dkimpy_arc_seal(
    key: &std::path::Path,
    domain: &str,
    authserv_id: &str,
    message: &str,
) -> String {
    dkimpy(&format!(
        "h=dkim.arc_sign(m,b'rsa',b'{domain}',key,b'{authserv_id}',include_headers=[b'From',b'To',b'Subject',b'Message-ID'])\nsys.stdout.buffer.write(b''.join(h)+m)\n"
    ), key, message)
}

/// Runs a dkimpy `script` with `m` (the message) and `key` (the PEM) set.
fn dkimpy(script: &str, key: &std::path::Path, message: &str) -> String {
    let script = format!(
        "import dkim,sys\nm=sys.stdin.buffer.read()\nkey=open('{}','rb').read()\n{script}",
        key.display()
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy (with authres, for ARC) is needed (scripts/test.sh installs them: pip install dkimpy authres): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn dmarc_relaxed_enforces_the_published_policy() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    // SPF fails (127.0.0.2) and the body was tampered after signing: reject.
    let signed = w.message("a@pass.test", Some("pass.test"), "original");
    let tampered = signed.replace("original", "tampered");
    let r = send(&g, "127.0.0.2", "a@pass.test", &tampered);
    assert!(
        r.starts_with("550 5.7.1 Message rejected: DMARC policy of pass.test (p=reject)"),
        "{r}"
    );
    // The untampered message passes DKIM, so DMARC passes despite SPF.
    let r = send(&g, "127.0.0.2", "a@pass.test", &signed);
    let id = queued(&r);
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["spf"]["result"], "fail");
    assert_eq!(v["authentication"]["dmarc"]["result"], "pass");
    // p=quarantine: accepted and marked.
    let r = send(
        &g,
        "127.0.0.2",
        "a@quar.test",
        &w.message("a@quar.test", None, "q"),
    );
    let id = queued(&r);
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["quarantine"], true);
    assert!(v["raw"]
        .as_str()
        .unwrap()
        .contains("X-Gomail-Quarantine: yes"));
    // dmarc_enforcement none would have accepted the tampered one.
    let g2 = w.gomail("dmarc_enforcement: none\n");
    let r = send(&g2, "127.0.0.2", "a@pass.test", &tampered);
    let id = queued(&r);
    let v = stored_auth(&g2, &id);
    assert_ne!(v["authentication"]["dkim"]["result"], "pass");
    assert_eq!(v["authentication"]["dmarc"]["result"], "fail");
}

#[test]
fn strict_alignment_refuses_what_relaxed_alignment_accepts() {
    let w = world();
    // From a subdomain, signed by the organizational domain, SPF failing:
    // relaxed alignment passes via DKIM, strict alignment does not.
    let msg = w.message("a@mail.pass.test", Some("pass.test"), "sub");
    let relaxed = w.gomail("dmarc_enforcement: relaxed\n");
    let r = send(&relaxed, "127.0.0.2", "a@mail.pass.test", &msg);
    assert!(queue_id(&r).is_some(), "relaxed: {r}");
    let strict = w.gomail("dmarc_enforcement: strict\n");
    let r = send(&strict, "127.0.0.2", "a@mail.pass.test", &msg);
    assert!(r.starts_with("550 5.7.1 "), "strict: {r}");
}

#[test]
fn independent_signer_rsa_2048_passes_and_tampering_fails() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    let signed = dkimpy_sign(
        w.rsa_key,
        "pass.test",
        &w.message("a@pass.test", None, "from dkimpy"),
    );
    // SPF fails from 127.0.0.2, so DMARC rests on the dkimpy signature.
    let r = send(&g, "127.0.0.2", "a@pass.test", &signed);
    let id = queued(&r);
    let v = stored_auth(&g, &id);
    let sig = &v["authentication"]["dkim"]["signatures"][0];
    assert_eq!(sig["algorithm"], "rsa-sha256");
    assert_eq!(sig["selector"], "rsa");
    assert_eq!(sig["valid"], true);
    assert_eq!(v["authentication"]["dkim"]["signed_by"][0], "pass.test");
    assert_eq!(v["authentication"]["dmarc"]["result"], "pass");
    let r = send(
        &g,
        "127.0.0.2",
        "a@pass.test",
        &signed.replace("from dkimpy", "from someone else"),
    );
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    // GoMail's per-result counters, which its users' alert rules read.
    for (name, n) in [
        ("gomail_dkim_pass_total", 1.0),
        ("gomail_dkim_fail_total", 1.0),
        ("gomail_dmarc_pass_total", 1.0),
        ("gomail_dmarc_fail_total", 1.0),
        ("gomail_spf_fail_total", 2.0),
        ("gomail_spf_pass_total", 0.0),
    ] {
        assert_eq!(crate::it::harness::metric(&g, name), n, "{name}");
    }
}

#[test]
fn a_domain_publishing_strict_alignment_is_held_to_it_under_relaxed_enforcement() {
    let w = world();
    let g = w.gomail("dmarc_enforcement: relaxed\n");
    // From a subdomain, signed by the organizational domain, SPF failing:
    // the domain's own adkim=s makes this unaligned, so p=reject applies.
    let msg = w.message("a@mail.strictalign.test", Some("strictalign.test"), "s");
    let r = send(&g, "127.0.0.2", "a@mail.strictalign.test", &msg);
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    // Exact alignment passes.
    let msg = w.message("a@strictalign.test", Some("strictalign.test"), "s");
    let r = send(&g, "127.0.0.2", "a@strictalign.test", &msg);
    let id = queued(&r);
    let d = &stored_auth(&g, &id)["authentication"]["dmarc"];
    assert_eq!(
        (d["result"].as_str(), d["dkim_alignment"].as_str()),
        (Some("pass"), Some("strict"))
    );
}

#[test]
fn an_arc_chain_sealed_by_an_independent_sealer_is_validated() {
    let w = world();
    let g = w.gomail("");
    // A forwarder (mx.forwarder.test) checked the message, recorded that in
    // its Authentication-Results and sealed it for pass.test with dkimpy.
    let received = format!(
        "Authentication-Results: mx.forwarder.test; spf=pass smtp.mailfrom=a@pass.test\r\n{}",
        w.message("a@pass.test", None, "forwarded once")
    );
    let sealed = dkimpy_arc_seal(w.rsa_key, "pass.test", "mx.forwarder.test", &received);
    assert!(sealed.starts_with("ARC-Seal: i=1; cv=none"), "{sealed}");

    let reply = send(&g, "127.0.0.1", "a@pass.test", &sealed);
    let id = queued(&reply);
    let v = stored_auth(&g, &id);
    let arc = &v["authentication"]["arc"];
    assert_eq!(arc["result"], "pass", "{v}");
    assert_eq!(arc["chain_length"], 1, "{v}");
    let raw = v["raw"].as_str().unwrap();
    assert!(raw.contains("arc=pass"), "{raw}");

    // Changed after sealing: the ARC-Message-Signature no longer matches.
    let altered = sealed.replace("forwarded once", "forwarded twice");
    let reply = send(&g, "127.0.0.1", "a@pass.test", &altered);
    let id = queued(&reply);
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["arc"]["result"], "fail", "{v}");
    assert!(v["raw"].as_str().unwrap().contains("arc=fail"));

    // A sealed header changed: the ARC-Seal no longer matches.
    let reseal = sealed.replace(
        "ARC-Authentication-Results: i=1; mx.forwarder.test;",
        "ARC-Authentication-Results: i=1; mx.other.test;",
    );
    assert_ne!(reseal, sealed);
    let reply = send(&g, "127.0.0.1", "a@pass.test", &reseal);
    let id = queued(&reply);
    let v = stored_auth(&g, &id);
    assert_eq!(v["authentication"]["arc"]["result"], "fail", "{v}");
}

#[test]
fn only_the_first_dkim_signatures_are_verified() {
    let w = world();
    let g = w.gomail("");
    // A valid signature on top, then 40 more that an attacker could add
    // for free (each would cost a body hash and a key lookup).
    let signed = w.message("a@pass.test", Some("pass.test"), "many signatures");
    let (first, rest) = signed.split_at(signed.find("\r\nFrom: ").unwrap() + 2);
    let mut message = first.to_string();
    for i in 0..40 {
        message.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; d=x{i}.pass.test; s=sel; c=relaxed/relaxed;\r\n\th=from; bh=AAAA; b=AAAA\r\n"
        ));
    }
    message.push_str(rest);
    let reply = send(&g, "127.0.0.1", "a@pass.test", &message);
    let id = queued(&reply);
    let dkim = &stored_auth(&g, &id)["authentication"]["dkim"];
    assert_eq!(dkim["result"], "pass", "{dkim}");
    let sigs = dkim["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 5, "{dkim}");
    assert_eq!(sigs[0]["domain"], "pass.test");
    assert_eq!(sigs[0]["valid"], true);
}

#[test]
fn dmarc_judges_every_author_the_reader_sees() {
    let w = world();
    // Two authors, one of them a p=reject domain this client may not send
    // for: mail-auth alone would skip DMARC and accept.
    let two = format!(
        "From: <ceo@pass.test>\r\nFrom: <a@neutral.test>\r\n{}",
        w.message("a@neutral.test", None, "pay now")
            .split_once("\r\n")
            .unwrap()
            .1
    );
    let one_header_two_addresses = two.replacen(">\r\nFrom: <", ">, <", 1);
    let no_from = w
        .message("a@neutral.test", None, "x")
        .split_once("\r\n")
        .unwrap()
        .1
        .to_string();
    let relaxed = w.gomail("dmarc_enforcement: relaxed\n");
    for m in [&two, &one_header_two_addresses] {
        let r = send(&relaxed, "127.0.0.2", "a@neutral.test", m);
        assert!(
            r.starts_with("550 5.7.1 Message rejected: DMARC policy of pass.test (p=reject)"),
            "{r}"
        );
    }
    // No author to judge: relaxed accepts, strict refuses, and so does
    // strict for two authors.
    queued(&send(&relaxed, "127.0.0.2", "a@neutral.test", &no_from));
    let strict = w.gomail("dmarc_enforcement: strict\n");
    for (m, names) in [(&no_from, "none"), (&two, "neutral.test, pass.test")] {
        let r = send(&strict, "127.0.0.2", "a@neutral.test", m);
        assert_eq!(
            r,
            format!("550 5.7.1 Message rejected: DMARC needs exactly one author domain in From, this message has {names}\r\n")
        );
    }
    // Recorded only under none, with every author in the JSON.
    let none = w.gomail("dmarc_enforcement: none\n");
    let id = queued(&send(&none, "127.0.0.2", "a@neutral.test", &two));
    let v = stored_auth(&none, &id);
    let from = v["authentication"]["dmarc"]["from_header"]
        .as_str()
        .unwrap_or("");
    assert!(
        from.contains("ceo@pass.test") && from.contains("a@neutral.test"),
        "{v}"
    );
}

#[test]
fn the_json_says_which_alignment_was_applied_and_what_was_done() {
    let w = world();
    // A subdomain signed by its organizational domain: the RFC's relaxed
    // alignment passes, the exact match strict enforcement asks for fails,
    // and quar.test publishes p=quarantine.
    let msg = w.message("a@mail.quar.test", Some("quar.test"), "sub");
    for (level, enforced, action) in [
        ("strict", "fail", "quarantine"),
        ("relaxed", "pass", "none"),
    ] {
        let g = w.gomail(&format!("dmarc_enforcement: {level}\n"));
        let id = queued(&send(&g, "127.0.0.2", "a@mail.quar.test", &msg));
        let v = stored_auth(&g, &id);
        let d = &v["authentication"]["dmarc"];
        assert_eq!(d["result"], "pass", "{level}: {d}");
        assert_eq!(d["enforcement"], level);
        assert_eq!(d["enforced_result"], enforced, "{level}: {d}");
        assert_eq!(d["action"], action, "{level}: {d}");
        assert_eq!(v["authentication"]["quarantine"], action == "quarantine");
    }
}

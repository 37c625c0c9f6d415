//! Hot paths of the SMTP core: command parsing, DATA decoding (next to a
//! naive byte-at-a-time decoder as a baseline), a whole transaction
//! through the session state machine, and the JSON payload that every
//! accepted message becomes (store file, webhook body).
//!
//! Run: `cargo bench --bench smtp`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gomail::smtp::command::parse;
use gomail::smtp::data::DataDecoder;
use gomail::smtp::{Action, Completion, Limits, Session, SessionConfig};

/// A realistic 4 KiB message: headers, then 76-character body lines.
fn message_4k() -> Vec<u8> {
    let mut m = b"From: Sender <sender@example.org>\r\nTo: rcpt@example.test\r\nSubject: benchmark\r\nMessage-ID: <b1@example.org>\r\n\r\n".to_vec();
    while m.len() < 4096 - 80 {
        m.extend_from_slice(&[b'a'; 76]);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".leading dot line\r\n");
    m
}

/// The baseline: one byte at a time, one state per byte, no run copying.
fn naive_decode(input: &[u8], out: &mut Vec<u8>) -> usize {
    let mut line_start = true;
    let mut i = 0;
    while i < input.len() {
        if line_start && input[i..].starts_with(b".\r\n") {
            return i + 3;
        }
        if line_start && input[i] == b'.' {
            i += 1;
            line_start = false;
            continue;
        }
        out.push(input[i]);
        line_start = input[i] == b'\n' && i > 0 && input[i - 1] == b'\r';
        i += 1;
    }
    i
}

fn commands(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_parse");
    for (name, line) in [
        (
            "mail_from",
            &b"MAIL FROM:<sender.name@example.org> SIZE=4096 BODY=8BITMIME"[..],
        ),
        ("rcpt_to", b"RCPT TO:<recipient@example.test>"),
        ("ehlo", b"EHLO client.example.org"),
        ("bdat", b"BDAT 65536 LAST"),
    ] {
        g.throughput(Throughput::Bytes(line.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(parse(black_box(line)).is_ok()))
        });
    }
    g.finish();
}

fn data(c: &mut Criterion) {
    let mut input = message_4k();
    input.extend_from_slice(b".\r\n");
    let mut g = c.benchmark_group("data_decode_4k");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("gomail", |b| {
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            let mut d = DataDecoder::new(1 << 20);
            black_box(d.decode(black_box(&input), &mut out))
        })
    });
    g.bench_function("naive_baseline", |b| {
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            black_box(naive_decode(black_box(&input), &mut out))
        })
    });
    g.finish();
}

fn transaction(c: &mut Criterion) {
    let cfg = Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        domains: vec!["example.test".into()],
        limits: Limits::default(),
        starttls: false,
        check_sender: false,
        reject_non_fqdn_sender: true,
        strict_headers: false,
    });
    let mut script = b"EHLO client.example.org\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n".to_vec();
    script.extend_from_slice(&message_4k());
    script.extend_from_slice(b".\r\nQUIT\r\n");
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pipelined_4k_transaction", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            let now = Instant::now();
            let mut s = Session::new(cfg.clone(), now);
            s.greet(&mut out);
            let mut used = s.handle_input(&script, now, &mut out);
            while let Some(a) = s.poll_action() {
                if let Action::Spool(tx) = a {
                    black_box(&tx.body);
                    s.handle_completion(Completion::Spooled { id: "0".into() }, now, &mut out);
                }
            }
            used += s.handle_input(&script[used..], now, &mut out);
            black_box(used)
        })
    });
    g.finish();
}

fn payload(c: &mut Criterion) {
    let env = gomail::spool::Envelope {
        id: "0123456789abcdef".into(),
        received_at_ms: 1_764_489_600_000,
        mail_from: "sender@example.org".into(),
        recipients: vec!["rcpt@example.test".into()],
        helo: "client.example.org".into(),
        client_ip: "192.0.2.1".into(),
        esmtp: true,
        spool_us: 2000,
        request_id: None,
        ..Default::default()
    };
    // As stored: gomail's trace headers, then the message.
    let mut message = b"Return-Path: <sender@example.org>\r\nReceived: from client.example.org ([192.0.2.1])\r\n\tby mx.example.test (gomail) with ESMTP id 0123456789abcdef\r\n\tfor <rcpt@example.test>; Sun, 30 Nov 2025 08:00:00 +0000\r\n".to_vec();
    message.extend_from_slice(&message_4k());
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Bytes(message.len() as u64));
    g.bench_function("json_4k", |b| {
        b.iter(|| black_box(gomail::payload::payload(&env, &message, None)))
    });
    g.finish();

    // One 1 MiB message for 100 recipients: a full build per recipient
    // (what a rebuild per POST costs) next to one build and 100 splices.
    let recipients: Vec<String> = (0..100).map(|i| format!("rcpt{i}@example.test")).collect();
    let env = gomail::spool::Envelope {
        recipients: recipients.clone(),
        ..env
    };
    let mut big = message.clone();
    while big.len() < 1 << 20 {
        big.extend_from_slice(&message_4k()[200..]);
    }
    let mut g = c.benchmark_group("payload_100_recipients_1m");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100));
    g.bench_function("rebuilt_per_recipient", |b| {
        b.iter(|| {
            for r in &recipients {
                black_box(gomail::payload::payload(&env, &big, Some(r)));
            }
        })
    });
    g.bench_function("built_once_spliced", |b| {
        b.iter(|| {
            let parts = gomail::payload::PayloadParts::new(&env, &big);
            for r in &recipients {
                black_box(parts.with_recipient(Some(r)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, commands, data, transaction, payload);
criterion_main!(benches);

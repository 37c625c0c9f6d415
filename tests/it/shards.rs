//! Two shards really accept in parallel: connections land on both and
//! each shard's own counters move.

use std::net::IpAddr;

use gomail::config::{load, Sources};
use gomail::server::Server;

use super::harness::{queue_id, wait_stored, Client};

#[test]
fn connections_land_on_both_shards_and_both_accept_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        ("smtp_listen", "127.0.0.1:0".to_string()),
        ("shards", "2".into()),
        ("primary_domain", "example.test".into()),
        ("mail_hostname", "mx.example.test".into()),
        ("data_dir", tmp.path().join("data").display().to_string()),
    ];
    let cfg = load(&Sources {
        flags: flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Sources::default()
    })
    .unwrap();
    let server = Server::start(&cfg).unwrap();
    assert_eq!(server.shard_count(), 2);
    let addr = server.smtp_addrs()[0];
    // Many source addresses, as an MX sees them; the kernel's SO_REUSEPORT
    // hash spreads them over the two listeners.
    let mut open = Vec::new();
    for i in 0..40u8 {
        let src: IpAddr = format!("127.0.0.{}", i + 2).parse().unwrap();
        let mut c = Client::connect_from(addr, Some(src));
        c.cmd("EHLO parallel.example");
        let r = c.mail(
            "s@sender.example",
            &["r@example.test"],
            "Subject: p\r\n\r\nx",
        );
        assert!(queue_id(&r).is_some(), "{r}");
        open.push(c);
    }
    let during = server.stats();
    assert_eq!(during.iter().map(|s| s.connections_active).sum::<u64>(), 40);
    for s in &during {
        assert!(
            s.connections_accepted > 0,
            "shard {} got no connection: {during:?}",
            s.shard
        );
        assert!(
            s.messages_accepted > 0,
            "shard {} accepted no message: {during:?}",
            s.shard
        );
    }
    assert_eq!(during.iter().map(|s| s.messages_accepted).sum::<u64>(), 40);
    drop(open);
    wait_stored(&tmp.path().join("data"), 40);
    server.shutdown().unwrap();
}

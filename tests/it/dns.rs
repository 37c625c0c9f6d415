//! A real authoritative DNS server on loopback for the authentication tests
//! (hickory-server, in-process). It also serves the root zone, so that
//! DMARC's walk up the tree gets NXDOMAIN rather than REFUSED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// A running test DNS server; stops when dropped.
pub(crate) struct TestDns {
    pub(crate) addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

const ROOT: &str = "$ORIGIN .\n$TTL 300\n@ IN SOA ns.root. hostmaster.root. 1 3600 600 86400 60\n";

/// Serves `zones` (origin, zone-file body without SOA) on 127.0.0.1, UDP and TCP.
pub(crate) fn serve(zones: &[(&str, String)]) -> TestDns {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut catalog = Catalog::new();
    let mut texts = vec![(".".to_string(), ROOT.to_string())];
    for (origin, body) in zones {
        texts.push((
            origin.to_string(),
            format!("$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 60\n{body}"),
        ));
    }
    for (origin, text) in texts {
        let origin_name = Name::from_ascii(&origin).unwrap();
        let (origin_name, records) =
            hickory_proto::serialize::txt::Parser::new(text.as_str(), None, Some(origin_name))
                .parse()
                .unwrap_or_else(|e| panic!("zone {origin}: {e}"));
        let zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
            origin_name.clone(),
            records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .unwrap();
        catalog.upsert(
            LowerName::new(&origin_name),
            vec![Arc::new(zone) as Arc<dyn ZoneHandler>],
        );
    }
    let addr = runtime.block_on(async move {
        // The same port for UDP and TCP: a free UDP port may be taken for
        // TCP (by a client connection's ephemeral port), so try again.
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let mut server = hickory_server::Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        tokio::spawn(async move {
            // Keep the server alive as long as the runtime runs.
            let _server = server;
            std::future::pending::<()>().await;
        });
        addr
    });
    TestDns {
        addr,
        runtime: Some(runtime),
    }
}

/// Splits a long TXT value into quoted strings of at most 255 octets.
pub(crate) fn txt(value: &str) -> String {
    value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect::<Vec<_>>()
        .join(" ")
}

//! DNS blocklists at connect, postscreen-style.

use std::net::IpAddr;

use futures_util::StreamExt;
use mail_auth::common::resolver::ToReverseName;

use super::ShardAuth;

impl ShardAuth {
    /// DNS blocklists, postscreen-style: each zone that lists `ip` (an A
    /// record in 127.0.0.0/8 for the reversed address) adds its weight;
    /// at or above `dnsbl_threshold` the client is refused. All zones are
    /// asked at once, and `dnsbl_timeout` bounds the whole check: a zone
    /// that has not answered by then counts as not listing the client, so a
    /// slow zone neither holds the connection longer nor hides the answers
    /// of the others. Once the score is at the threshold and every
    /// allow-list zone has answered, the zones still out cannot change the
    /// outcome and are not waited for. Returns the zones that listed it (in
    /// configured order) when the score reaches the threshold.
    pub async fn dnsbl(&self, ip: IpAddr) -> Option<Vec<String>> {
        let settings = self.settings();
        let s = &*settings;
        if s.dnsbl.is_empty() {
            return None;
        }
        let reversed = ip.to_reverse_name();
        let mut score = 0;
        let mut hits = Vec::new();
        let mut checks: futures_util::stream::FuturesUnordered<_> = s
            .dnsbl
            .iter()
            .enumerate()
            .map(|(i, (zone, weight))| {
                let reversed = &reversed;
                async move {
                    let name = format!("{reversed}.{zone}.");
                    let listed = self
                        .resolver
                        .ipv4_lookup(name.as_str(), Some(self.dns.ipv4()))
                        .await
                        .ok()
                        .is_some_and(|set| set.rrset.iter().any(|a| a.octets()[0] == 127));
                    // Not listed is NXDOMAIN, never cached by mail-auth: time it here.
                    self.dns.settle_ipv4(&name);
                    (i, *weight, listed)
                }
            })
            .collect();
        // Allow-list zones (negative weights) not answered yet: until they
        // have, a score at the threshold could still come down.
        let mut allow_left = s.dnsbl.iter().filter(|(_, w)| *w < 0).count();
        let all = async {
            while let Some((i, weight, listed)) = checks.next().await {
                if weight < 0 {
                    allow_left -= 1;
                }
                if listed {
                    score += weight;
                    if weight > 0 {
                        hits.push(i);
                    }
                }
                // Refused whatever the zones still out say: no need to wait.
                if score >= s.dnsbl_threshold && !hits.is_empty() && allow_left == 0 {
                    break;
                }
            }
        };
        let deadline = async {
            glommio::timer::sleep(s.dnsbl_timeout).await;
            tracing::debug!(%ip, "DNSBL deadline reached; zones that have not answered count as not listing");
        };
        futures_lite::future::or(all, deadline).await;
        if score < s.dnsbl_threshold || hits.is_empty() {
            return None;
        }
        hits.sort_unstable();
        Some(hits.into_iter().map(|i| s.dnsbl[i].0.clone()).collect())
    }
}

//! From a complete transaction to a durable message handed to delivery:
//! the spool commit behind every `250`, for SMTP sessions and for mail
//! injected through the API (`POST /mail/inbound`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use super::ShardState;
use crate::auth::{MessageVerdict, SenderCheck, ShardAuth};
use crate::smtp::{trace, Completion, Reply, Transaction};
use crate::spool::{Contents, Envelope, Spooled};
use mail_auth::IprevOutput;

/// A message from `POST /mail/inbound`: the checks a session's message
/// gets (SPF only when the client's address is given), the backlog bound,
/// then the spool and delivery.
pub(super) async fn inject(state: &Rc<ShardState>, m: super::Injected) -> Result<String, Reply> {
    let ip = m
        .client_ip
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let peer = SocketAddr::new(ip, 0);
    let helo = m.helo.unwrap_or_else(|| "api".to_string());
    let tx = Transaction {
        helo,
        esmtp: true,
        smtputf8: !m.sender.is_ascii() || !m.recipient.is_ascii(),
        mail_from: m.sender,
        recipients: vec![m.recipient],
        eight_bit: !m.raw.is_ascii(),
        body: m.raw,
        chunked: false,
        tls: None,
        require_tls: false,
    };
    let live = state.live();
    // The message checks a session applies at the end of DATA (the text
    // rules and the sender's domain were checked by the API handler).
    if live.session.strict_headers {
        if let Some(r) = crate::smtp::headers::check(&tx.body) {
            return Err(r);
        }
    }
    if state.store.is_failing() {
        state.stats.borrow_mut().store_refusals += 1;
        return Err(Reply::STORE_FAILING);
    }
    if let Some(r) = live.spool_refusal(&state.spool, tx.body.len()) {
        state.stats.borrow_mut().spool_backlog_refusals += 1;
        return Err(r);
    }
    let done = match &state.auth {
        Some(auth) => {
            let check = match m.client_ip {
                Some(ip) => Box::pin(auth.check_sender(ip, &tx.helo, &tx.mail_from)).await,
                None => crate::auth::ShardAuth::unchecked_sender(ip, &tx.helo, &tx.mail_from),
            };
            if let Some(r) = check.refusal.clone() {
                return Err(r);
            }
            let iprev = Box::pin(auth.iprev(ip)).await;
            Box::pin(verify_and_accept(
                state,
                auth,
                &tx,
                peer,
                &check,
                &iprev,
                Some(m.request_id),
            ))
            .await
        }
        None => Box::pin(accept_message(state, &tx, peer, None, Some(m.request_id))).await,
    };
    match done {
        Completion::Spooled { id } => Ok(id),
        Completion::Refused(r) => Err(r),
        Completion::SpoolFailed | Completion::Sender(_) => Err(Reply::SPOOL_FAILED),
    }
}

/// DKIM and DMARC on a complete message (its results counted), then the
/// spool unless the policy refuses it: one path for SMTP and the API.
pub(super) async fn verify_and_accept(
    state: &Rc<ShardState>,
    auth: &ShardAuth,
    tx: &Transaction,
    peer: SocketAddr,
    check: &SenderCheck,
    iprev: &IprevOutput,
    request_id: Option<String>,
) -> Completion {
    let t0 = Instant::now();
    let verdict = Box::pin(auth.verify_message(&tx.body, check, iprev)).await;
    {
        let mut st = state.stats.borrow_mut();
        for k in verdict.tally.keys() {
            *st.auth_results.entry(k).or_default() += 1;
        }
        st.auth_latency.observe(t0.elapsed().as_micros() as u64);
    }
    match verdict.refusal {
        Some(reply) => {
            state.stats.borrow_mut().messages_refused_by_policy += 1;
            Completion::Refused(reply)
        }
        None => Box::pin(accept_message(state, tx, peer, Some(verdict), request_id)).await,
    }
}

/// Spools one message; the answer becomes the session's completion.
pub(super) async fn accept_message(
    state: &Rc<ShardState>,
    tx: &Transaction,
    peer: SocketAddr,
    auth: Option<MessageVerdict>,
    request_id: Option<String>,
) -> Completion {
    let now = chrono::Utc::now();
    let id = format!("{:016x}", fastrand::u64(..));
    let mut received = trace::return_path_header(&tx.mail_from);
    if let Some(v) = &auth {
        received.push_str(&v.header);
        if v.quarantine {
            received.push_str("X-Gomail-Quarantine: yes (DMARC p=quarantine)\r\n");
        }
        if let Some(result) = v.spf_failed {
            received.push_str(&format!(
                "X-Gomail-SPF-Failed: {result} (spf_enforcement: soft)\r\n"
            ));
        }
    }
    received.push_str(&trace::received_header(
        tx,
        peer.ip(),
        &state.hostname,
        &id,
        &now.to_rfc2822(),
    ));
    received.push_str(trace::separator(&tx.body));
    let mut envelope = Envelope {
        id: id.clone(),
        received_at_ms: now.timestamp_millis(),
        mail_from: tx.mail_from.clone(),
        recipients: tx.recipients.clone(),
        helo: tx.helo.clone(),
        client_ip: peer.ip().to_string(),
        esmtp: tx.esmtp,
        eight_bit: tx.eight_bit,
        smtputf8: tx.smtputf8,
        chunked: tx.chunked,
        shard: state.id,
        tls_version: tx.tls.as_ref().map(|t| t.version.clone()),
        tls_cipher: tx.tls.as_ref().map(|t| t.cipher.clone()),
        tls_sni: tx.tls.as_ref().and_then(|t| t.sni.clone()),
        require_tls: tx.require_tls,
        authentication: auth.map(|v| v.json),
        spool_us: 0,
        request_id,
    };
    // What a sender wrote in our name is renamed before anything reads it
    // (checks on or off): only the header added above speaks for us.
    let renamed = crate::smtp::headers::obscure_forged(&tx.body, &state.hostname);
    let body = renamed.as_deref().unwrap_or(&tx.body);
    let started = Instant::now();
    match state
        .spool
        .commit(&envelope, received.as_bytes(), body)
        .await
    {
        Ok(at) => {
            envelope.spool_us = started.elapsed().as_micros() as u64;
            state
                .stats
                .borrow_mut()
                .commit_latency
                .observe(envelope.spool_us);
            let mut message = Vec::with_capacity(received.len() + body.len());
            message.extend_from_slice(received.as_bytes());
            message.extend_from_slice(body);
            {
                let mut s = state.stats.borrow_mut();
                s.messages_accepted += 1;
                s.bytes_accepted += message.len() as u64;
            }
            tracing::debug!(shard = state.id, id = %id, from = %tx.mail_from, rcpts = tx.recipients.len(), size = message.len(), "accepted");
            let spooled = Spooled::loaded(Contents { envelope, message }, at);
            match state.outbox.as_ref() {
                Some(o) if o.answers_inline(&spooled) => o.deliver_inline(state, spooled).await,
                _ => {
                    state.deliver(spooled);
                    Completion::Spooled { id }
                }
            }
        }
        Err(e) => {
            state.stats.borrow_mut().spool_failures += 1;
            tracing::error!(shard = state.id, error = %e, client = %peer.ip(), "message refused with 451: spool write failed");
            Completion::SpoolFailed
        }
    }
}

//! How many signature fields of a message are verified.

use std::borrow::Cow;

/// At most this many DKIM signatures per message are verified, the first
/// ones in header order (the most recently added); further ones are
/// ignored, as RFC 6376 section 6.1 allows (OpenDKIM's default is 3).
/// Each signature can make the verifier hash the body again (with its own
/// `l=`) and ask DNS for a key: without a limit, one message could carry
/// thousands of them.
pub const DKIM_MAX_SIGNATURES: usize = 5;

/// At most this many fields of each ARC kind: RFC 8617 allows 50 sets.
const ARC_MAX_SETS: usize = 50;

/// `message`, without the DKIM signatures and ARC fields past the limits
/// (borrowed as it is when it has none too many).
pub(crate) fn limit_signatures(message: &[u8]) -> Cow<'_, [u8]> {
    const LIMITED: [(&[u8], usize); 4] = [
        (b"dkim-signature", DKIM_MAX_SIGNATURES),
        (b"arc-seal", ARC_MAX_SETS),
        (b"arc-message-signature", ARC_MAX_SETS),
        (b"arc-authentication-results", ARC_MAX_SETS),
    ];
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let mut seen = [0usize; LIMITED.len()];
    let mut dropped: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    while at < head_end {
        // A field: its line and the folded lines that continue it.
        let mut end = at;
        loop {
            end = match memchr::memmem::find(&message[end..head_end], b"\r\n") {
                Some(i) => end + i + 2,
                None => head_end,
            };
            if end >= head_end || !matches!(message[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &message[at..end];
        let name = field
            .iter()
            .position(|&b| b == b':')
            .map_or(&field[..0], |i| field[..i].trim_ascii());
        if let Some(k) = LIMITED
            .iter()
            .position(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            seen[k] += 1;
            if seen[k] > LIMITED[k].1 {
                dropped.push(at..end);
            }
        }
        at = end;
    }
    if dropped.is_empty() {
        return Cow::Borrowed(message);
    }
    tracing::debug!(
        dkim_signatures = seen[0],
        "message carries more signature fields than are verified; the first ones are kept"
    );
    let mut kept = Vec::with_capacity(message.len());
    let mut from = 0;
    for r in dropped {
        kept.extend_from_slice(&message[from..r.start]);
        from = r.end;
    }
    kept.extend_from_slice(&message[from..]);
    Cow::Owned(kept)
}

#[cfg(test)]
mod tests {
    use super::{limit_signatures, DKIM_MAX_SIGNATURES};

    fn sig(i: usize) -> String {
        format!("DKIM-Signature: v=1; d=d{i}.example;\r\n\tb=abc{i}\r\n")
    }

    /// Messages made of signature-field fragments, odd bytes and broken
    /// folding: dropping fields and parsing must never panic (a panic would
    /// take the shard down with every connection on it).
    #[test]
    fn scrambled_signature_fields_never_panic() {
        const PARTS: [&[u8]; 16] = [
            b"DKIM-Signature: v=1; a=rsa-sha256; d=",
            b"ARC-Seal: i=",
            b"ARC-Message-Signature: i=1; a=ed25519-sha256; l=",
            b"ARC-Authentication-Results: i=",
            b"From: <a@",
            b"\r\n",
            b"\r\n\t",
            b"\n",
            b"\r",
            b";",
            b"=",
            b"h=from:to; bh=",
            b"b=AAAA",
            b"99999999999999999999",
            b"\xff\xfe\x00",
            b"\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..20_000 {
            let mut m = Vec::new();
            for _ in 0..rng.usize(1..60) {
                m.extend_from_slice(PARTS[rng.usize(..PARTS.len())]);
            }
            let kept = limit_signatures(&m);
            assert!(kept.len() <= m.len());
            let _ = mail_auth::AuthenticatedMessage::parse(&kept);
        }
    }

    #[test]
    fn signatures_past_the_limit_are_dropped_and_the_rest_kept() {
        let body = "From: a@b.example\r\nSubject: x\r\n\r\nDKIM-Signature: in the body stays\r\n";
        let few: String = (0..DKIM_MAX_SIGNATURES).map(sig).collect::<String>() + body;
        assert!(matches!(
            limit_signatures(few.as_bytes()),
            std::borrow::Cow::Borrowed(_)
        ));

        // The third field's name in lower case: names match in any case.
        let sigs = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    if i == 2 {
                        sig(i).to_lowercase()
                    } else {
                        sig(i)
                    }
                })
                .collect()
        };
        let many = sigs(DKIM_MAX_SIGNATURES + 3) + body;
        let kept = limit_signatures(many.as_bytes());
        let kept = std::str::from_utf8(&kept).unwrap();
        let want = sigs(DKIM_MAX_SIGNATURES) + body;
        assert_eq!(kept, want);
    }
}

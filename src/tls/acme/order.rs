//! One ACME order: the challenges (a TXT record per authorization, or a
//! token on the HTTP-01 responder), validation, finalization.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::{acme, dns01, http01, AcmeError, AcmeSettings, Challenge};

/// One order: records created into `records` (for the caller to delete),
/// validated, finalized; the chain and key PEM.
pub(super) async fn run(
    s: &AcmeSettings,
    account: &Account,
    mut dns: Option<&mut dns01::DigitalOcean<'_>>,
    responder: Option<&http01::Responder>,
    records: &mut Vec<dns01::Record>,
) -> Result<(String, String), AcmeError> {
    let kind = match s.challenge {
        Challenge::Dns01 => ChallengeType::Dns01,
        Challenge::Http01 { .. } => ChallengeType::Http01,
    };
    let ids: Vec<Identifier> = s
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(acme("new order"))?;
    // First pass: a record for every authorization still pending.
    let mut pending = 0;
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(acme("authorization"))?;
            if a.status == AuthorizationStatus::Valid {
                continue;
            }
            let shown = a.identifier().to_string();
            let Identifier::Dns(name) = a.identifier().identifier.clone() else {
                return Err(AcmeError::Validation {
                    name: shown,
                    detail: "not a DNS name".into(),
                });
            };
            let ch = a
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::Validation {
                    name: shown,
                    detail: format!("the CA offers no {kind:?} challenge for it"),
                })?;
            if let Some(dns) = dns.as_deref_mut() {
                let value = ch.key_authorization().dns_value();
                records.push(dns.create(&name, &value).await?);
            }
            if let Some(r) = responder {
                r.add(&ch.token, ch.key_authorization().as_str());
            }
            pending += 1;
        }
    }
    if pending > 0 {
        if dns.is_some() {
            dns01::wait_visible(records, &s.dns_servers, s.dns_timeout).await?;
        }
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(acme("authorization"))?;
            if a.status == AuthorizationStatus::Valid {
                continue;
            }
            if let Some(mut ch) = a.challenge(kind.clone()) {
                ch.set_ready().await.map_err(acme("challenge"))?;
            }
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(s.timeout);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(acme("waiting for validation"))?;
    if status != OrderStatus::Ready {
        return Err(validation_failure(&mut order, status).await);
    }
    let key = order.finalize().await.map_err(acme("finalize"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(acme("downloading the certificate"))?;
    Ok((chain, key))
}

/// Why an order did not become ready: the first challenge error the CA
/// reports, else the order's own.
async fn validation_failure(order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
    let order_error = order.state().error.as_ref().map(|p| p.to_string());
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        let name = a.identifier().to_string();
        if let Some(p) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
            return AcmeError::Validation {
                name,
                detail: p.to_string(),
            };
        }
    }
    AcmeError::Acme {
        step: "order",
        detail: order_error.unwrap_or_else(|| format!("the order is {status:?}")),
    }
}

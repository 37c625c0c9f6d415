//! Checks of the ACME keys that need more than a type check (URLs,
//! certificate names, combinations); what they mean is in `tls::acme`.

use super::ConfigError;

/// Checks the ACME keys; `get` reads a setting as text, `list` a list,
/// `invalid` makes the error that names the key and where it was set.
pub(super) fn check(
    get: &dyn Fn(&str) -> String,
    list: &dyn Fn(&str) -> Vec<String>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    is_domain: fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let url = |k: &str, v: &str| -> Result<(), ConfigError> {
        let rest = v
            .strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
            _ => Err(invalid(
                k,
                format!("`{v}` is not an http:// or https:// URL"),
            )),
        }
    };
    let dir = get("acme_directory_url");
    if !matches!(dir.as_str(), "letsencrypt" | "letsencrypt-staging")
        && (url("acme_directory_url", &dir).is_err() || !dir.starts_with("https://"))
    {
        // RFC 8555 section 6.1: ACME is only spoken over HTTPS.
        return Err(invalid(
            "acme_directory_url",
            format!("`{dir}` is not `letsencrypt`, `letsencrypt-staging` or an https:// URL"),
        ));
    }
    url("digitalocean_api_url", &get("digitalocean_api_url"))?;
    // A CA file that is not there makes every issuance fail, hours later
    // at the first renewal: say so now.
    let ca = get("acme_ca_file");
    if !ca.is_empty() && !std::path::Path::new(&ca).is_file() {
        return Err(invalid(
            "acme_ca_file",
            format!("`{ca}` is not a readable file (a PEM of the CA certificates to trust for the directory)"),
        ));
    }
    for d in list("acme_domains") {
        let name = d.trim().to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if !is_domain(bare) || !bare.contains('.') {
            return Err(invalid(
                "acme_domains",
                format!("`{d}` is not a domain name (a wildcard is written `*.example.com`)"),
            ));
        }
    }
    let email = get("acme_email");
    if !email.is_empty() {
        let ok = email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && is_domain(d))
            && !email.contains(char::is_whitespace);
        if !ok {
            return Err(invalid(
                "acme_email",
                format!("`{email}` is not an email address"),
            ));
        }
    }
    let listen = get("acme_http_listen");
    if crate::tls::acme::parse_http_listen(&listen).is_none() {
        return Err(invalid(
            "acme_http_listen",
            format!("`{listen}` is not an ip:port (or :port) address to listen on"),
        ));
    }
    if get("acme_challenge") == "http-01" {
        if let Some(w) = list("acme_domains")
            .iter()
            .find(|d| d.trim().starts_with("*."))
        {
            return Err(invalid(
                "acme_challenge",
                format!("http-01 cannot validate the wildcard `{w}` in acme_domains; use dns-01"),
            ));
        }
    }
    for k in ["acme_dns_timeout", "acme_timeout"] {
        if super::keys::parse_duration(&get(k)).is_some_and(|d| d.is_zero()) {
            return Err(invalid(k, "must be longer than 0s".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{load, Sources};

    fn with(kv: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        load(&Sources {
            flags: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn acme_keys_are_checked_with_their_name() {
        assert!(with(&[("acme_directory_url", "letsencrypt-staging")]).is_ok());
        assert!(with(&[("acme_directory_url", "https://ca.example.test/dir")]).is_ok());
        for (k, v, says) in [
            (
                "acme_directory_url",
                "http://ca.example.test/dir",
                "https://",
            ),
            ("acme_directory_url", "staging", "letsencrypt-staging"),
            (
                "acme_domains",
                "mx.example.test,*.*.example.test",
                "wildcard",
            ),
            ("acme_domains", "localhost", "not a domain"),
            ("acme_email", "postmaster", "not an email"),
            ("digitalocean_api_url", "api.digitalocean.com", "http://"),
            ("acme_http_listen", "port80", "ip:port"),
            ("acme_dns_timeout", "0s", "longer than 0s"),
        ] {
            let e = with(&[(k, v)]).unwrap_err();
            assert!(e.contains(k) && e.contains(says), "{k}={v}: {e}");
        }
        let e = with(&[
            ("acme_challenge", "http-01"),
            ("acme_domains", "mx.example.test,*.example.test"),
        ])
        .unwrap_err();
        assert!(
            e.contains("acme_challenge") && e.contains("wildcard"),
            "{e}"
        );
        assert!(with(&[("acme_challenge", "http-01"), ("acme_http_listen", ":8080")]).is_ok());
        let err = with(&[("acme_ca_file", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(err.contains("acme_ca_file"), "{err}");
    }
}

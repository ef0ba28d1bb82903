//! TLS to PostgreSQL: `sslmode` and `sslrootcert` in DATABASE_URL, as libpq means them.
//!
//! | `sslmode` | encrypted | the server's certificate is checked |
//! | --- | --- | --- |
//! | `disable` | no | - |
//! | `prefer` (the default) | when the server offers it | no |
//! | `require` | yes | no; against `sslrootcert` when one is given, as libpq does |
//! | `verify-ca` | yes | signed by `sslrootcert` (or a CA the system trusts) |
//! | `verify-full` | yes | that, and it names the host DATABASE_URL connects to |
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`: both parameters are
//! taken out of the URL here, and the checks are the TLS connector's (OpenSSL through
//! native-tls, the library the Kafka client and the registry client already use). `allow` is
//! refused: tokio-postgres cannot try a plain connection first. Unlike libpq, `prefer` does not
//! retry in plain when a handshake the server accepted fails.

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use native_tls::{Certificate, TlsConnector};
use percent_encoding::percent_decode_str;
use postgres_native_tls::MakeTlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => anyhow::bail!(
                "sslmode=allow in DATABASE_URL is not supported: use prefer (TLS when the server \
                 offers it) or disable"
            ),
            other => anyhow::bail!(
                "sslmode={other} in DATABASE_URL: use disable, prefer, require, verify-ca or \
                 verify-full"
            ),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What DATABASE_URL says about connecting: tokio-postgres' settings and the TLS connector.
pub struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: MakeTlsConnector,
    pub mode: SslMode,
}

/// Reads DATABASE_URL (URL or `key=value` form). Errors never quote the URL: it holds the
/// password.
pub fn parse(url: &str) -> anyhow::Result<Connection> {
    let (url, mode) = take_param(url, "sslmode");
    let (url, root) = take_param(&url, "sslrootcert");
    let mut config = tokio_postgres::Config::from_str(&url)
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL"))?;
    let mode = match mode {
        Some(m) => m.parse()?,
        // A form this reader does not split (`sslmode = require`, with spaces) is still read
        // by tokio-postgres: never weaken what it read.
        None => match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        },
    };
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });

    let mut builder = TlsConnector::builder();
    let checks = match (mode, &root) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    match checks {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            builder.danger_accept_invalid_certs(true);
        }
        SslMode::VerifyCa => {
            builder.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    // `system` (libpq's word too) or no file: the CAs the system trusts.
    if let Some(path) = root.filter(|r| r != "system") {
        let pem = std::fs::read(&path).with_context(|| {
            format!("sslrootcert={path} in DATABASE_URL cannot be read: name the PEM file of the CA that signed the server's certificate")
        })?;
        let certificates = Certificate::stack_from_pem(&pem)
            .with_context(|| format!("sslrootcert={path} holds a certificate that is not PEM"))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "sslrootcert={path} holds no PEM certificate"
        );
        // As libpq: that file's CAs only.
        builder.disable_built_in_roots(true);
        for c in certificates {
            builder.add_root_certificate(c);
        }
    }
    let tls = MakeTlsConnector::new(builder.build().context("setting up TLS to PostgreSQL")?);
    Ok(Connection { config, tls, mode })
}

/// `url` without its parameter `key`, and the parameter's value (percent-decoded in URL form).
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let mut value = None;
    if url.contains("://") {
        // After the user info: a password may hold a `?` (tokio-postgres takes it so).
        let after = url.rfind('@').map_or(0, |at| at + 1);
        let Some(q) = url[after..].find('?').map(|q| q + after) else {
            return (url.to_string(), None);
        };
        let (base, query) = (&url[..q], &url[q + 1..]);
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some((k, v)) if k == key => {
                    value = Some(percent_decode_str(v).decode_utf8_lossy().into_owned());
                    false
                }
                _ => true,
            })
            .collect();
        let url = match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        };
        (url, value)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| match pair.split_once('=') {
                Some((k, v)) if k == key => {
                    value = Some(v.trim_matches('\'').to_string());
                    false
                }
                _ => true,
            })
            .collect();
        (kept.join(" "), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_lose_the_parameters_tokio_postgres_does_not_know() {
        let (url, mode) = take_param(
            "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
            "sslmode",
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        let (url, root) = take_param(&url, "sslrootcert");
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(url, "postgres://u:p@h:5432/db?application_name=x");
        let (url, mode) = take_param("host=h user=u sslmode=verify-ca dbname=d", "sslmode");
        assert_eq!(
            (url.as_str(), mode.as_deref()),
            ("host=h user=u dbname=d", Some("verify-ca"))
        );
        assert_eq!(
            take_param("postgres://h/db", "sslmode"),
            ("postgres://h/db".to_string(), None)
        );
    }

    #[test]
    fn modes_map_as_libpq_means_them() {
        for (url, mode, theirs) in [
            ("postgres://h/db", SslMode::Prefer, "Prefer"),
            (
                "postgres://h/db?sslmode=disable",
                SslMode::Disable,
                "Disable",
            ),
            (
                "postgres://h/db?sslmode=require",
                SslMode::Require,
                "Require",
            ),
            (
                "postgres://h/db?sslmode=verify-ca",
                SslMode::VerifyCa,
                "Require",
            ),
            (
                "postgres://h/db?sslmode=verify-full",
                SslMode::VerifyFull,
                "Require",
            ),
        ] {
            let c = parse(url).unwrap();
            assert_eq!(c.mode, mode, "{url}");
            assert_eq!(format!("{:?}", c.config.get_ssl_mode()), theirs, "{url}");
        }
    }

    #[test]
    fn bad_settings_say_what_to_write_and_never_quote_the_url() {
        let e = parse("postgres://u:hunter2@h/db?sslmode=allow")
            .err()
            .unwrap();
        assert!(e.to_string().contains("prefer"), "{e}");
        let e = parse("postgres://u:hunter2@h/db?sslmode=verify")
            .err()
            .unwrap();
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e =
            parse("postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap();
        assert!(
            format!("{e:#}").contains("sslrootcert=/nonexistent/ca.pem"),
            "{e:#}"
        );
        for e in [
            parse("postgres://u:hunter2@h/db?sslmode=allow")
                .err()
                .unwrap(),
            parse("postgres://u:hunter2@h:notaport/db").err().unwrap(),
        ] {
            assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
        }
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (url, mode) = take_param("postgres://u:p?w@h/db?sslmode=require", "sslmode");
        assert_eq!(
            (url.as_str(), mode.as_deref()),
            ("postgres://u:p?w@h/db", Some("require"))
        );
    }

    #[test]
    fn a_mode_only_tokio_postgres_could_read_is_kept() {
        let c = parse("host=h user=u sslmode = require").unwrap();
        assert_eq!(c.mode, SslMode::Require);
    }
}

//! Schema registry connection settings shared by both connectors, and how to read the
//! registry client's errors.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use secrecy::ExposeSecret;

/// How long one registry request may take. The client's plain constructor sets no limit: a
/// registry that accepts the connection and never answers would stall a poll or a batch for
/// good, with every check still green.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the Confluent-API schema registry is.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Schema registry base URL (Confluent REST API). The default is the local stack's
    /// Apicurio Registry, whose Confluent-compatible API sits under `/apis/ccompat/v7`.
    /// Credentials go in SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD(_FILE), not in
    /// the URL, which process lists and logs may show.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081/apis/ccompat/v7",
        hide_env_values = true
    )]
    pub schema_registry_url: String,

    /// User of the registry's HTTP basic authentication (for Confluent Cloud, the API key).
    /// Its password comes from the environment variable SCHEMA_REGISTRY_PASSWORD or from
    /// SCHEMA_REGISTRY_PASSWORD_FILE, never a flag.
    #[arg(long, env = "SCHEMA_REGISTRY_USERNAME")]
    pub schema_registry_username: Option<String>,

    /// File holding the registry's basic-authentication password, read at start-up.
    #[arg(long, env = "SCHEMA_REGISTRY_PASSWORD_FILE")]
    pub schema_registry_password_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry client's settings: the URL, basic authentication when a user is set, and
    /// [`REQUEST_TIMEOUT`].
    pub fn settings(&self) -> anyhow::Result<SrSettings> {
        let password = crate::secret::from_env_or_file(
            "SCHEMA_REGISTRY_PASSWORD",
            self.schema_registry_password_file.as_deref(),
            "SCHEMA_REGISTRY_PASSWORD_FILE",
        )?;
        let mut builder = SrSettings::new_builder(self.schema_registry_url.clone());
        builder.set_timeout(REQUEST_TIMEOUT);
        match (&self.schema_registry_username, &password) {
            (Some(user), password) => {
                builder.set_basic_authorization(user, password.as_ref().map(|p| p.expose_secret()));
            }
            (None, Some(_)) => bail!(
                "a schema registry password is set but SCHEMA_REGISTRY_USERNAME is not: set both"
            ),
            (None, None) => {}
        }
        builder
            .build()
            .map_err(|e| anyhow::anyhow!("creating the schema registry client: {}", describe(&e)))
    }
}

/// The error's whole text: what failed, then the registry's own answer when there is one.
pub fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// The HTTP status the registry answered with, when the error is an answer at all (the client
/// reports statuses only in its message, "... failed with status 404 Not Found"). `None` for a
/// registry that could not be reached or an answer that could not be read.
pub fn answered_status(e: &SRCError) -> Option<u16> {
    // Matched on the client's wording: a bare number also turns up in URLs (port 44095).
    let (_, rest) = e.error.split_once("failed with status ")?;
    rest.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_the_clients_message_only() {
        let answered = SRCError::new(
            "HTTP request to schema registry failed with status 404 Not Found",
            Some("Schema not found".into()),
            false,
        );
        assert_eq!(answered_status(&answered), Some(404));
        assert_eq!(
            describe(&answered),
            "HTTP request to schema registry failed with status 404 Not Found: Schema not found"
        );
        let unreachable = SRCError::new(
            "http call to schema registry failed",
            Some("error sending request for url (http://127.0.0.1:44095/schemas/ids/409)".into()),
            true,
        );
        assert_eq!(answered_status(&unreachable), None);
    }
}

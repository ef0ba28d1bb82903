//! Schema registry connection settings shared by both connectors.

use clap::Args;

/// Where the Confluent-API schema registry is.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Schema registry base URL (Confluent REST API).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081"
    )]
    pub schema_registry_url: String,
}

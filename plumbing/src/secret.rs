//! Secrets (API key, database URL, SASL password) come only from an environment variable or a
//! file, never a flag (visible in `ps`), and are wrapped so `Debug` cannot print them.

use std::path::Path;

use anyhow::Context;
use secrecy::SecretString;

/// The secret in the file `file` (trimmed) if given, else in the variable `var`; `None` when
/// neither holds anything. `file_var` names the file's variable in error messages.
pub fn from_env_or_file(
    var: &str,
    file: Option<&Path>,
    file_var: &str,
) -> anyhow::Result<Option<SecretString>> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {file_var} {}", path.display()))?
            .trim()
            .to_string(),
        None => std::env::var(var).unwrap_or_default(),
    };
    Ok((!value.is_empty()).then(|| SecretString::from(value)))
}

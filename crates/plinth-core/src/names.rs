//! Validated names: tenants and the resources tenants own.
//!
//! Every resource a tenant names (a keyspace, a stream, a queue) is stored
//! under the pair (tenant, name). The tenant never comes from the request
//! path or body: it comes from the credential, so a tenant cannot even spell
//! another tenant's resource. These types make an unvalidated name
//! impossible to pass down to an engine.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The longest tenant id accepted.
pub const MAX_TENANT_ID_LENGTH: usize = 63;
/// The longest resource name accepted.
pub const MAX_RESOURCE_NAME_LENGTH: usize = 200;

/// A tenant identifier: 1 to 63 characters of `a-z`, `0-9`, `-` and `_`,
/// starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant that dev mode and fresh installs use.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > MAX_TENANT_ID_LENGTH {
            return Err(invalid_tenant(text, "must be 1 to 63 characters long"));
        }
        let first_character = text.as_bytes()[0];
        if !(first_character.is_ascii_lowercase() || first_character.is_ascii_digit()) {
            return Err(invalid_tenant(
                text,
                "must start with a lowercase letter or a digit",
            ));
        }
        for character in text.bytes() {
            let allowed = character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || character == b'-'
                || character == b'_';
            if !allowed {
                return Err(invalid_tenant(
                    text,
                    "may contain only lowercase letters, digits, `-` and `_`",
                ));
            }
        }
        Ok(TenantId(text.to_string()))
    }

    pub fn default_tenant() -> Self {
        TenantId(Self::DEFAULT.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_tenant(text: &str, rule: &str) -> Error {
    Error::invalid_argument(
        "invalid_tenant_id",
        format!(
            "tenant id `{}` is invalid: it {rule}",
            truncate_for_message(text)
        ),
    )
}

impl fmt::Display for TenantId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TenantId::parse(&text).map_err(|error| serde::de::Error::custom(error.detail().to_string()))
    }
}

/// The name of a resource inside a tenant: 1 to 200 characters of letters,
/// digits and `-`, `_`, `.`, `:`, `@`, not starting with `.` (reserved for
/// internal use). `kind` names what is being named in error messages
/// ("keyspace", "stream", ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

impl ResourceName {
    pub fn parse(kind: &'static str, text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > MAX_RESOURCE_NAME_LENGTH {
            return Err(invalid_resource_name(
                kind,
                text,
                "must be 1 to 200 characters long",
            ));
        }
        if text.starts_with('.') {
            return Err(invalid_resource_name(kind, text, "must not start with `.`"));
        }
        for character in text.bytes() {
            let allowed = character.is_ascii_alphanumeric()
                || matches!(character, b'-' | b'_' | b'.' | b':' | b'@');
            if !allowed {
                return Err(invalid_resource_name(
                    kind,
                    text,
                    "may contain only letters, digits, `-`, `_`, `.`, `:` and `@`",
                ));
            }
        }
        Ok(ResourceName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_resource_name(kind: &'static str, text: &str, rule: &str) -> Error {
    Error::invalid_argument(
        "invalid_name",
        format!(
            "{kind} name `{}` is invalid: it {rule}",
            truncate_for_message(text)
        ),
    )
}

impl Serialize for ResourceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Echoing a hostile multi-kilobyte name back in an error helps nobody.
fn truncate_for_message(text: &str) -> String {
    const SHOWN_CHARACTERS: usize = 64;
    let mut shown: String = text.chars().take(SHOWN_CHARACTERS).collect();
    if text.chars().count() > SHOWN_CHARACTERS {
        shown.push('…');
    }
    shown.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_documented_rule() {
        for good in ["default", "acme", "a", "team-1_prod", "0abc"] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(64);
        for bad in ["", "Acme", "-x", "_x", "a b", "a/b", "ü", too_long.as_str()] {
            let error = TenantId::parse(bad).unwrap_err();
            assert_eq!(error.code(), "invalid_tenant_id", "{bad}");
        }
    }

    #[test]
    fn resource_names_follow_the_documented_rule() {
        for good in ["users", "user:42", "orders-2026.v1", "a@b", "X_Y"] {
            assert!(ResourceName::parse("keyspace", good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(201);
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "a*b",
            "ключ",
            too_long.as_str(),
        ] {
            let error = ResourceName::parse("keyspace", bad).unwrap_err();
            assert_eq!(error.code(), "invalid_name", "{bad}");
            assert!(
                error.detail().starts_with("keyspace name"),
                "{}",
                error.detail()
            );
        }
    }

    #[test]
    fn long_names_are_truncated_in_messages() {
        let hostile = "x".repeat(10_000) + "/";
        let error = ResourceName::parse("stream", &hostile).unwrap_err();
        assert!(error.detail().len() < 300);
    }
}

//! Scopes: what a credential may do, inside its own tenant.
//!
//! A scope is written `admin`, `<block>:<action>` or
//! `<block>:<action>:<pattern>`, e.g. `cache:read`, `events:write`,
//! `cache:read:users-*`. `block` and `action` may be `*`; `pattern` is a
//! glob over resource names where `*` matches any run of characters. A
//! scope without a pattern covers every resource. `admin` covers
//! everything, including the `/v1/admin` routes that manage tenants.

use std::fmt;

use plinth_core::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MAX_SCOPE_LENGTH: usize = 256;
const MAX_SCOPES_PER_CREDENTIAL: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Admin,
    Grant {
        block: String,
        action: String,
        resource_pattern: Option<String>,
    },
}

impl Scope {
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        if text.is_empty() || text.len() > MAX_SCOPE_LENGTH {
            return Err(invalid_scope(text, "must be 1 to 256 characters long"));
        }
        let mut parts = text.splitn(3, ':');
        let block = parts.next().unwrap_or_default();
        let Some(action) = parts.next() else {
            return Err(invalid_scope(
                text,
                "must be `admin`, `<block>:<action>` or `<block>:<action>:<pattern>`",
            ));
        };
        let resource_pattern = parts.next();
        if !is_scope_word(block) || !is_scope_word(action) {
            return Err(invalid_scope(
                text,
                "must have a block and an action that are lowercase words (`cache`, `read`) or `*`",
            ));
        }
        if let Some(pattern) = resource_pattern
            && !is_resource_pattern(pattern)
        {
            return Err(invalid_scope(
                text,
                "must have a pattern of only letters, digits, `-`, `_`, `.`, `:`, `@` and `*`",
            ));
        }
        Ok(Scope::Grant {
            block: block.to_string(),
            action: action.to_string(),
            resource_pattern: resource_pattern.map(str::to_string),
        })
    }

    /// Whether this scope lets its holder do `action` on `block`'s resource
    /// `resource` (`None` for block-wide actions such as listing).
    pub fn allows(&self, block: &str, action: &str, resource: Option<&str>) -> bool {
        let Scope::Grant {
            block: granted_block,
            action: granted_action,
            resource_pattern,
        } = self
        else {
            return true;
        };
        if granted_block != "*" && granted_block != block {
            return false;
        }
        if granted_action != "*" && granted_action != action {
            return false;
        }
        match (resource_pattern, resource) {
            (None, _) => true,
            // A pattern-limited scope cannot do block-wide actions.
            (Some(_), None) => false,
            (Some(pattern), Some(resource)) => glob_matches(pattern, resource),
        }
    }

    /// Whether everything `other` allows, this scope allows too. Used so a
    /// credential can only hand out keys weaker than itself. Conservative:
    /// it may say no for some patterns that are in fact covered.
    pub fn covers(&self, other: &Scope) -> bool {
        let Scope::Grant {
            block,
            action,
            resource_pattern,
        } = self
        else {
            return true;
        };
        let Scope::Grant {
            block: other_block,
            action: other_action,
            resource_pattern: other_pattern,
        } = other
        else {
            return false;
        };
        let block_covered = block == "*" || block == other_block;
        let action_covered = action == "*" || action == other_action;
        if !block_covered || !action_covered {
            return false;
        }
        match (resource_pattern, other_pattern) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(other_pattern)) => pattern_covers(pattern, other_pattern),
        }
    }
}

/// `pattern` covers `other_pattern` when they are equal, or `pattern` is a
/// literal prefix followed by one trailing `*` and `other_pattern` starts
/// with that prefix (every name `other_pattern` matches then starts with it).
fn pattern_covers(pattern: &str, other_pattern: &str) -> bool {
    if pattern == other_pattern {
        return true;
    }
    let Some(prefix) = pattern.strip_suffix('*') else {
        return false;
    };
    !prefix.contains('*') && other_pattern.starts_with(prefix)
}

fn is_scope_word(word: &str) -> bool {
    if word == "*" {
        return true;
    }
    !word.is_empty()
        && word.len() <= 32
        && word
            .bytes()
            .all(|character| character.is_ascii_lowercase() || character == b'_')
}

fn is_resource_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.bytes().all(|character| {
            character.is_ascii_alphanumeric()
                || matches!(character, b'-' | b'_' | b'.' | b':' | b'@' | b'*')
        })
}

fn invalid_scope(text: &str, rule: &str) -> Error {
    let shown: String = text.chars().take(64).collect();
    Error::invalid_argument(
        "invalid_scope",
        format!("scope `{}` is invalid: it {rule}", shown.escape_debug()),
    )
}

/// Glob match where `*` matches any (possibly empty) run of characters.
/// Iterative with one backtrack point, so hostile patterns stay linear.
pub(crate) fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    let mut pattern_index = 0;
    let mut text_index = 0;
    let mut last_star: Option<usize> = None;
    let mut text_index_at_star = 0;
    while text_index < text.len() {
        if pattern_index < pattern.len() && pattern[pattern_index] == b'*' {
            last_star = Some(pattern_index);
            pattern_index += 1;
            text_index_at_star = text_index;
            continue;
        }
        if pattern_index < pattern.len() && pattern[pattern_index] == text[text_index] {
            pattern_index += 1;
            text_index += 1;
            continue;
        }
        let Some(star_index) = last_star else {
            return false;
        };
        pattern_index = star_index + 1;
        text_index_at_star += 1;
        text_index = text_index_at_star;
    }
    while pattern_index < pattern.len() && pattern[pattern_index] == b'*' {
        pattern_index += 1;
    }
    pattern_index == pattern.len()
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => formatter.write_str("admin"),
            Scope::Grant {
                block,
                action,
                resource_pattern: None,
            } => write!(formatter, "{block}:{action}"),
            Scope::Grant {
                block,
                action,
                resource_pattern: Some(pattern),
            } => write!(formatter, "{block}:{action}:{pattern}"),
        }
    }
}

/// The scopes of one credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    pub fn parse_all<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        let mut scopes = Vec::new();
        for text in texts {
            scopes.push(Scope::parse(text)?);
            if scopes.len() > MAX_SCOPES_PER_CREDENTIAL {
                return Err(Error::invalid_argument(
                    "invalid_scope",
                    "a credential may have at most 64 scopes",
                ));
            }
        }
        Ok(ScopeSet(scopes))
    }

    /// Space-separated, as in OAuth's `scope` claim.
    pub fn parse_space_separated(text: &str) -> Result<Self, Error> {
        Self::parse_all(text.split_whitespace())
    }

    pub fn admin() -> Self {
        ScopeSet(vec![Scope::Admin])
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.0
    }

    pub fn is_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    pub fn allows(&self, block: &str, action: &str, resource: Option<&str>) -> bool {
        self.0
            .iter()
            .any(|scope| scope.allows(block, action, resource))
    }

    /// Whether every scope of `other` is covered by some scope here.
    pub fn covers(&self, other: &ScopeSet) -> bool {
        other
            .0
            .iter()
            .all(|wanted| self.0.iter().any(|held| held.covers(wanted)))
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Scope::to_string).collect()
    }

    /// Space-separated, for storage.
    pub fn to_space_separated(&self) -> String {
        self.to_strings().join(" ")
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Scope::to_string))
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        ScopeSet::parse_all(texts.iter().map(String::as_str))
            .map_err(|error| serde::de::Error::custom(error.detail().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scopes_parse_and_print_back() {
        for text in [
            "admin",
            "cache:read",
            "events:write",
            "cache:*",
            "*:read",
            "cache:read:users-*",
        ] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "cache",
            "Cache:read",
            "cache:read:a/b",
            "cache::x",
            ":read",
            "cache:re ad",
        ] {
            assert_eq!(
                Scope::parse(bad).unwrap_err().code(),
                "invalid_scope",
                "{bad}"
            );
        }
    }

    #[test]
    fn allows_checks_block_action_and_pattern() {
        let scopes = ScopeSet::parse_all(["cache:read:users-*", "events:*"]).unwrap();
        assert!(scopes.allows("cache", "read", Some("users-42")));
        assert!(!scopes.allows("cache", "read", Some("orders")));
        assert!(!scopes.allows("cache", "write", Some("users-42")));
        assert!(!scopes.allows("cache", "read", None));
        assert!(scopes.allows("events", "write", Some("anything")));
        assert!(scopes.allows("events", "read", None));
        assert!(!scopes.allows("admin", "write", None));
        assert!(ScopeSet::admin().allows("admin", "write", None));
    }

    #[test]
    fn covers_is_conservative_and_prevents_escalation() {
        let held = ScopeSet::parse_all(["cache:read:users-*", "keys:write"]).unwrap();
        assert!(held.covers(&ScopeSet::parse_all(["cache:read:users-1*"]).unwrap()));
        assert!(held.covers(&ScopeSet::parse_all(["keys:write"]).unwrap()));
        assert!(!held.covers(&ScopeSet::parse_all(["cache:read"]).unwrap()));
        assert!(!held.covers(&ScopeSet::parse_all(["cache:write:users-1"]).unwrap()));
        assert!(!held.covers(&ScopeSet::admin()));
        assert!(ScopeSet::admin().covers(&held));
    }

    fn reference_glob(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|skip| reference_glob(rest, &text[skip..])),
            Some((expected, rest)) => {
                text.first() == Some(expected) && reference_glob(rest, &text[1..])
            }
        }
    }

    proptest! {
        #[test]
        fn glob_matches_agrees_with_the_recursive_definition(
            pattern in "[ab*]{0,8}",
            text in "[ab]{0,10}",
        ) {
            prop_assert_eq!(
                glob_matches(&pattern, &text),
                reference_glob(pattern.as_bytes(), text.as_bytes())
            );
        }

        #[test]
        fn a_covering_scope_allows_whatever_the_covered_one_allows(
            held_pattern in "[ab]{0,3}\\*?",
            wanted_pattern in "[ab*]{1,4}",
            resource in "[ab]{0,6}",
        ) {
            let held = Scope::parse(&format!("cache:read:{held_pattern}")).ok();
            let wanted = Scope::parse(&format!("cache:read:{wanted_pattern}")).unwrap();
            if let Some(held) = held
                && held.covers(&wanted)
                && wanted.allows("cache", "read", Some(&resource))
            {
                prop_assert!(held.allows("cache", "read", Some(&resource)));
            }
        }
    }
}

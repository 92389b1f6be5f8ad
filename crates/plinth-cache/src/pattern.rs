//! Glob patterns over keys (`user:42:*`): `*` matches any run of
//! characters, `?` exactly one, `\` makes the next character literal. The
//! same pattern is matched in process (L1), translated to SQL `LIKE` for the
//! stores, and to Redis `MATCH` syntax for `SCAN`.

use plinth_core::Error;

use crate::model::MAX_KEY_LENGTH;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Literal(u8),
    AnyRun,
    AnyOne,
}

fn tokenize(pattern: &str) -> Result<Vec<Token>, Error> {
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let token = match bytes[index] {
            b'*' => Token::AnyRun,
            b'?' => Token::AnyOne,
            b'\\' => {
                index += 1;
                let Some(escaped) = bytes.get(index) else {
                    return Err(invalid_pattern("a pattern cannot end with `\\`"));
                };
                Token::Literal(*escaped)
            }
            other => Token::Literal(other),
        };
        tokens.push(token);
        index += 1;
    }
    Ok(tokens)
}

fn invalid_pattern(rule: &str) -> Error {
    Error::invalid_argument("invalid_pattern", format!("the pattern is invalid: {rule}"))
}

/// Checks a pattern given by a client.
pub fn validate_pattern(pattern: &str) -> Result<(), Error> {
    if pattern.is_empty() || pattern.len() > MAX_KEY_LENGTH {
        return Err(invalid_pattern("it must be 1 to 512 bytes long"));
    }
    if !pattern.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid_pattern(
            "it may contain only printable ASCII characters without spaces",
        ));
    }
    tokenize(pattern).map(|_| ())
}

/// Whether `key` matches `pattern`. Linear in practice: one backtrack
/// point, like the classic wildcard matcher.
pub fn glob_matches(pattern: &str, key: &str) -> bool {
    let Ok(tokens) = tokenize(pattern) else {
        return false;
    };
    let text = key.as_bytes();
    let mut token_index = 0;
    let mut text_index = 0;
    let mut star_token_index: Option<usize> = None;
    let mut text_index_at_star = 0;
    while text_index < text.len() {
        match tokens.get(token_index) {
            Some(Token::AnyRun) => {
                star_token_index = Some(token_index);
                token_index += 1;
                text_index_at_star = text_index;
                continue;
            }
            Some(Token::AnyOne) => {
                token_index += 1;
                text_index += 1;
                continue;
            }
            Some(Token::Literal(expected)) if *expected == text[text_index] => {
                token_index += 1;
                text_index += 1;
                continue;
            }
            _ => {}
        }
        let Some(star_index) = star_token_index else {
            return false;
        };
        token_index = star_index + 1;
        text_index_at_star += 1;
        text_index = text_index_at_star;
    }
    while tokens.get(token_index) == Some(&Token::AnyRun) {
        token_index += 1;
    }
    token_index == tokens.len()
}

/// The pattern as a SQL `LIKE` pattern, to use with `ESCAPE '\'`.
pub fn to_sql_like(pattern: &str) -> Result<String, Error> {
    let mut like = String::with_capacity(pattern.len() + 4);
    for token in tokenize(pattern)? {
        match token {
            Token::AnyRun => like.push('%'),
            Token::AnyOne => like.push('_'),
            Token::Literal(byte) => push_like_literal(&mut like, byte),
        }
    }
    Ok(like)
}

/// A `LIKE` pattern (with `ESCAPE '\'`) matching keys starting with `prefix`.
pub fn prefix_to_sql_like(prefix: &str) -> String {
    let mut like = String::with_capacity(prefix.len() + 2);
    for byte in prefix.bytes() {
        push_like_literal(&mut like, byte);
    }
    like.push('%');
    like
}

fn push_like_literal(like: &mut String, byte: u8) {
    if matches!(byte, b'%' | b'_' | b'\\') {
        like.push('\\');
    }
    like.push(byte as char);
}

/// The pattern in Redis `MATCH` syntax, placed after `key_prefix` (which is
/// escaped as a literal).
pub fn to_redis_match(key_prefix: &str, pattern: &str) -> Result<String, Error> {
    let mut redis_pattern = String::with_capacity(key_prefix.len() + pattern.len() + 8);
    for byte in key_prefix.bytes() {
        push_redis_literal(&mut redis_pattern, byte);
    }
    for token in tokenize(pattern)? {
        match token {
            Token::AnyRun => redis_pattern.push('*'),
            Token::AnyOne => redis_pattern.push('?'),
            Token::Literal(byte) => push_redis_literal(&mut redis_pattern, byte),
        }
    }
    Ok(redis_pattern)
}

/// Redis `MATCH` syntax for keys starting with `key_prefix` + `prefix`.
pub fn prefix_to_redis_match(key_prefix: &str, prefix: &str) -> String {
    let mut redis_pattern = String::with_capacity(key_prefix.len() + prefix.len() + 8);
    for byte in key_prefix.bytes().chain(prefix.bytes()) {
        push_redis_literal(&mut redis_pattern, byte);
    }
    redis_pattern.push('*');
    redis_pattern
}

fn push_redis_literal(redis_pattern: &mut String, byte: u8) {
    if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\' | b'^' | b'-') {
        redis_pattern.push('\\');
    }
    redis_pattern.push(byte as char);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(tokens: &[Token], text: &[u8]) -> bool {
        match tokens.split_first() {
            None => text.is_empty(),
            Some((Token::AnyRun, rest)) => {
                (0..=text.len()).any(|skip| reference(rest, &text[skip..]))
            }
            Some((Token::AnyOne, rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((Token::Literal(byte), rest)) => {
                text.first() == Some(byte) && reference(rest, &text[1..])
            }
        }
    }

    #[test]
    fn examples_from_the_docs() {
        assert!(glob_matches("user:42:*", "user:42:profile"));
        assert!(glob_matches("user:42:*", "user:42:"));
        assert!(!glob_matches("user:42:*", "user:420"));
        assert!(glob_matches("user:?", "user:7"));
        assert!(!glob_matches("user:?", "user:77"));
        assert!(glob_matches("a\\*b", "a*b"));
        assert!(!glob_matches("a\\*b", "axb"));
    }

    #[test]
    fn translations_escape_literals() {
        assert_eq!(to_sql_like("50%_off*").unwrap(), "50\\%\\_off%");
        assert_eq!(prefix_to_sql_like("a_b"), "a\\_b%");
        assert_eq!(to_redis_match("p:", "x[1]*").unwrap(), "p:x\\[1\\]*");
        assert_eq!(prefix_to_redis_match("p:", "a*"), "p:a\\**");
        assert!(validate_pattern("bad\\").is_err());
        assert!(validate_pattern("has space").is_err());
    }

    proptest! {
        #[test]
        fn glob_matches_agrees_with_the_recursive_definition(
            pattern in "[ab*?]{0,8}",
            text in "[ab]{0,10}",
        ) {
            let tokens = tokenize(&pattern).unwrap();
            prop_assert_eq!(glob_matches(&pattern, &text), reference(&tokens, text.as_bytes()));
        }
    }
}

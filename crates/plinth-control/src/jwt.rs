//! JWT bearer tokens: HS256 with a shared secret, RS256 with public keys
//! from PEM files or a JWKS file (matched by `kid`). Issuer, audience,
//! expiry and not-before are checked; the tenant and scopes come from
//! configurable claims.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use plinth_core::config::JwtConfig;
use plinth_core::{Error, TenantId};
use serde_json::{Map, Value};

use crate::scope::ScopeSet;

/// What a verified token says.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub subject: String,
    pub tenant: TenantId,
    pub scopes: ScopeSet,
}

pub struct JwtVerifier {
    hs256_key: Option<DecodingKey>,
    rs256_pem_keys: Vec<DecodingKey>,
    rs256_jwks: Vec<(Option<String>, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    scopes_claim: String,
    leeway_seconds: u64,
}

impl JwtVerifier {
    /// `None` when no JWT key is configured.
    pub fn from_config(config: &JwtConfig) -> Result<Option<Self>, Error> {
        if !config.is_configured() {
            return Ok(None);
        }
        let hs256_key = config
            .hs256_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.expose().as_bytes()));
        let mut rs256_pem_keys = Vec::new();
        for path in &config.rs256_public_key_files {
            rs256_pem_keys.push(load_pem_key(path)?);
        }
        let rs256_jwks = match &config.jwks_file {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        Ok(Some(JwtVerifier {
            hs256_key,
            rs256_pem_keys,
            rs256_jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            tenant_claim: config.tenant_claim.clone(),
            scopes_claim: config.scopes_claim.clone(),
            leeway_seconds: config.leeway.as_duration().as_secs(),
        }))
    }

    pub fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        let header = decode_header(token).map_err(|_| {
            Error::unauthenticated("the bearer token is neither an API key nor a well-formed JWT")
        })?;
        let claims = match header.alg {
            Algorithm::HS256 => self.verify_hs256(token)?,
            Algorithm::RS256 => self.verify_rs256(token, header.kid.as_deref())?,
            other => {
                return Err(Error::unauthenticated(format!(
                    "JWT algorithm {other:?} is not accepted; use HS256 or RS256"
                )));
            }
        };
        self.claims_to_token(claims)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    fn verify_hs256(&self, token: &str) -> Result<Map<String, Value>, Error> {
        let Some(key) = &self.hs256_key else {
            return Err(Error::unauthenticated(
                "HS256 tokens are not accepted by this server",
            ));
        };
        decode_claims(token, key, &self.validation(Algorithm::HS256))
    }

    fn verify_rs256(&self, token: &str, key_id: Option<&str>) -> Result<Map<String, Value>, Error> {
        let validation = self.validation(Algorithm::RS256);
        if let Some(key_id) = key_id {
            for (jwk_key_id, key) in &self.rs256_jwks {
                if jwk_key_id.as_deref() == Some(key_id) {
                    return decode_claims(token, key, &validation);
                }
            }
        }
        let mut candidates: Vec<&DecodingKey> = self.rs256_pem_keys.iter().collect();
        if key_id.is_none() {
            for (_, key) in &self.rs256_jwks {
                candidates.push(key);
            }
        }
        if candidates.is_empty() {
            return Err(Error::unauthenticated("no RS256 key matches this token"));
        }
        let mut last_error = None;
        for key in candidates {
            match decode_claims(token, key, &validation) {
                Ok(claims) => return Ok(claims),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::unauthenticated("the token signature is invalid")))
    }

    fn claims_to_token(&self, claims: Map<String, Value>) -> Result<VerifiedToken, Error> {
        let Some(Value::String(tenant_text)) = claims.get(&self.tenant_claim) else {
            return Err(Error::unauthenticated(format!(
                "the token has no `{}` claim naming its tenant",
                self.tenant_claim
            )));
        };
        let tenant = TenantId::parse(tenant_text).map_err(|error| {
            Error::unauthenticated(format!(
                "the token's tenant claim is invalid: {}",
                error.detail()
            ))
        })?;
        let scopes = match claims.get(&self.scopes_claim) {
            None => ScopeSet::default(),
            Some(Value::String(text)) => {
                ScopeSet::parse_space_separated(text).map_err(invalid_scope_claim)?
            }
            Some(Value::Array(items)) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(text) = item else {
                        return Err(Error::unauthenticated("the token's scopes must be strings"));
                    };
                    texts.push(text.as_str());
                }
                ScopeSet::parse_all(texts).map_err(invalid_scope_claim)?
            }
            Some(_) => {
                return Err(Error::unauthenticated(
                    "the token's scopes claim must be a space-separated string or an array",
                ));
            }
        };
        let subject = match claims.get("sub") {
            Some(Value::String(subject)) => subject.clone(),
            _ => "unknown".to_string(),
        };
        Ok(VerifiedToken {
            subject,
            tenant,
            scopes,
        })
    }
}

/// A token whose scopes do not parse is a bad credential (401), not a bad
/// request: the caller cannot fix it by changing the request.
fn invalid_scope_claim(scope_error: Error) -> Error {
    Error::unauthenticated(format!(
        "the token's scope claim is invalid: {}",
        scope_error.detail()
    ))
}

fn decode_claims(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, Error> {
    match decode::<Map<String, Value>>(token, key, validation) {
        Ok(data) => Ok(data.claims),
        Err(jwt_error) => Err(Error::unauthenticated(describe_jwt_error(&jwt_error))),
    }
}

fn describe_jwt_error(jwt_error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match jwt_error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired; get a new one".to_string(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidSignature => "the token signature is invalid".to_string(),
        ErrorKind::InvalidIssuer => "the token issuer is not accepted".to_string(),
        ErrorKind::InvalidAudience => "the token audience is not accepted".to_string(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the `{claim}` claim"),
        _ => "the token could not be verified".to_string(),
    }
}

fn load_pem_key(path: &Path) -> Result<DecodingKey, Error> {
    let pem = std::fs::read(path).map_err(|io_error| {
        Error::invalid_argument(
            "invalid_config",
            format!("cannot read RS256 key file {}: {io_error}", path.display()),
        )
    })?;
    DecodingKey::from_rsa_pem(&pem).map_err(|key_error| {
        Error::invalid_argument(
            "invalid_config",
            format!(
                "{} is not an RSA public key in PEM form: {key_error}",
                path.display()
            ),
        )
    })
}

fn load_jwks(path: &Path) -> Result<Vec<(Option<String>, DecodingKey)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|io_error| {
        Error::invalid_argument(
            "invalid_config",
            format!("cannot read JWKS file {}: {io_error}", path.display()),
        )
    })?;
    let key_set: JwkSet = serde_json::from_str(&text).map_err(|parse_error| {
        Error::invalid_argument(
            "invalid_config",
            format!("{} is not a JWKS document: {parse_error}", path.display()),
        )
    })?;
    let mut keys = Vec::with_capacity(key_set.keys.len());
    for jwk in &key_set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|key_error| {
            Error::invalid_argument(
                "invalid_config",
                format!("a key in {} is not usable: {key_error}", path.display()),
            )
        })?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    Ok(keys)
}

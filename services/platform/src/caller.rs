//! Who is calling. The gateway authenticates the end user and forwards a short-lived caller context
//! signed with the internal key in the `x-pac-caller` header; services verify it and use it for
//! object-level decisions (which organisation, which permissions) and to record who did what.
//! Without the header a call is anonymous (no permissions) unless the deployment requires a context.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::config::Secret;
use crate::error::ApiError;

/// Metadata header carrying the signed caller context.
pub const CALLER_HEADER: &str = "x-pac-caller";
const AUDIENCE: &str = "pac-internal";

/// Permission to see address and contact details of restricted (sensitive) records.
pub const PERMISSION_RESTRICTED_READ: &str = "patient.restricted.read";

/// Who did something, as recorded with events and audit records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    pub subject: String,
    pub role: String,
    pub organisation: String,
}

/// The verified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    /// Organisations whose data the caller may see.
    pub organisations: Vec<String>,
    pub permissions: Vec<String>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            actor: Actor { subject: "anonymous".into(), role: "anonymous".into(), organisation: String::new() },
            organisations: Vec::new(),
            permissions: Vec::new(),
        }
    }

    pub fn may(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    org: String,
    #[serde(default)]
    orgs: Vec<String>,
    #[serde(default)]
    perms: Vec<String>,
    aud: String,
    exp: u64,
    iat: u64,
}

/// Verifies (and, for the gateway and tests, signs) caller contexts.
#[derive(Clone)]
pub struct CallerVerifier {
    encoding: EncodingKey,
    decoding: DecodingKey,
    require: bool,
}

impl CallerVerifier {
    pub fn new(key: &Secret, require: bool) -> Self {
        Self {
            encoding: EncodingKey::from_secret(key.expose().as_bytes()),
            decoding: DecodingKey::from_secret(key.expose().as_bytes()),
            require,
        }
    }

    /// The caller of a request: verified context, or anonymous when none is sent and none is required.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
        let Some(value) = metadata.get(CALLER_HEADER) else {
            return if self.require { Err(ApiError::unauthenticated("a caller context is required")) } else { Ok(Caller::anonymous()) };
        };
        let token = value.to_str().map_err(|_| ApiError::unauthenticated("caller context is not valid"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| ApiError::unauthenticated("caller context is not valid"))?
            .claims;
        Ok(Caller {
            actor: Actor { subject: claims.sub, role: claims.role, organisation: claims.org },
            organisations: claims.orgs,
            permissions: claims.perms,
        })
    }

    /// Signs a caller context valid for `ttl`.
    pub fn sign(&self, caller: &Caller, ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: caller.actor.subject.clone(),
            role: caller.actor.role.clone(),
            org: caller.actor.organisation.clone(),
            orgs: caller.organisations.clone(),
            perms: caller.permissions.clone(),
            aud: AUDIENCE.into(),
            exp: now + ttl.as_secs(),
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            actor: Actor { subject: "u1".into(), role: "coordinator".into(), organisation: "RR8".into() },
            organisations: vec!["RR8".into()],
            permissions: vec![PERMISSION_RESTRICTED_READ.into()],
        }
    }

    fn metadata(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(CALLER_HEADER, token.parse().unwrap());
        metadata
    }

    #[test]
    fn signed_context_round_trips() {
        let verifier = CallerVerifier::new(&Secret::new("k".repeat(32)), true);
        let token = verifier.sign(&caller(), Duration::from_secs(60));
        assert_eq!(verifier.caller(&metadata(&token)).unwrap(), caller());
    }

    #[test]
    fn wrong_key_missing_and_garbage_are_refused() {
        let verifier = CallerVerifier::new(&Secret::new("k".repeat(32)), true);
        let other = CallerVerifier::new(&Secret::new("x".repeat(32)), true);
        let token = other.sign(&caller(), Duration::from_secs(60));
        assert_eq!(verifier.caller(&metadata(&token)).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(verifier.caller(&metadata("garbage")).unwrap_err().code, tonic::Code::Unauthenticated);
        assert_eq!(verifier.caller(&MetadataMap::new()).unwrap_err().code, tonic::Code::Unauthenticated);
        let lenient = CallerVerifier::new(&Secret::new("k".repeat(32)), false);
        assert_eq!(lenient.caller(&MetadataMap::new()).unwrap(), Caller::anonymous());
    }
}

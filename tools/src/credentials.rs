//! Who a call says it is: through the gateway a bearer token; straight to a service, the signed
//! caller context the gateway would send for the same caller (or nothing, which only a development
//! deployment accepts).

use std::time::Duration;

use anyhow::Context;
use pac_gateway::auth::Identity;
use pac_gateway::policy::{self, Role};
use pac_platform::CallerVerifier;
use pac_platform::caller::CALLER_HEADER;
use pac_platform::config::{Secret, var};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// How a call carries its caller: a header and its value, or nothing.
#[derive(Clone, Debug)]
pub struct Credential(Option<(&'static str, AsciiMetadataValue)>);

impl Credential {
    pub fn anonymous() -> Self {
        Self(None)
    }

    pub fn bearer(token: &str) -> anyhow::Result<Self> {
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim())).context("the token is not printable ASCII")?;
        Ok(Self(Some(("authorization", value))))
    }

    pub fn caller_context(signed: &str) -> anyhow::Result<Self> {
        Ok(Self(Some((CALLER_HEADER, MetadataValue::try_from(signed).context("a caller context is ASCII")?))))
    }

    /// `message` as a request carrying this credential.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some((header, value)) = &self.0 {
            request.metadata_mut().insert(*header, value.clone());
        }
        request
    }
}

/// The identity `pac token` would give a `role` acting for `organisations`.
pub fn identity(role: Role, organisations: &[String]) -> Identity {
    Identity { subject: format!("pac-load-{}", role.name()), role, organisations: organisations.to_vec() }
}

/// The `n`th of several people in the same `role`.
pub fn member(role: Role, organisations: &[String], n: usize) -> Identity {
    Identity { subject: format!("pac-load-{}-{n}", role.name()), ..identity(role, organisations) }
}

/// A development bearer token, as `pac token` makes it: HS256 with `PAC_GATEWAY_DEV_TOKEN_KEY` (or
/// the built-in development key), issuer `PAC_GATEWAY_ISSUER`, audience `PAC_GATEWAY_AUDIENCE`.
pub fn development_token(identity: &Identity, ttl: Duration) -> anyhow::Result<String> {
    let key = var("PAC_GATEWAY_DEV_TOKEN_KEY", pac_gateway::DEVELOPMENT_TOKEN_KEY.to_string())?;
    let issuer = var("PAC_GATEWAY_ISSUER", pac_gateway::DEVELOPMENT_ISSUER.to_string())?;
    let audience = var("PAC_GATEWAY_AUDIENCE", pac_gateway::DEFAULT_AUDIENCE.to_string())?;
    let ttl = ttl.min(pac_gateway::auth::DEFAULT_MAX_LIFETIME);
    Ok(pac_gateway::auth::mint_development(key.as_bytes(), &issuer, &audience, identity, ttl))
}

/// The caller context the gateway signs for `identity`, signed with the deployment's internal key.
pub fn caller_context(internal_key: &Secret, identity: &Identity, ttl: Duration) -> String {
    CallerVerifier::new(internal_key, true).sign(&policy::caller(identity), ttl)
}

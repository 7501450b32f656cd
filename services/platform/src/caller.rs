//! Who is calling. The gateway authenticates the end user and forwards a short-lived caller context
//! signed with the internal key in the `x-pac-caller` header; services verify it and use it for
//! object-level decisions (which organisation, which permissions) and to record who did what.
//! Without the header a call is anonymous (no permissions) unless the deployment requires a context.
//!
//! # Organisation scope
//!
//! Patients, appointments, waitlist entries and referrals each belong to one organisation (an ODS
//! code, stored in an `organisation` column beside them). An end user's caller context names the
//! organisations whose data they may see ([`Caller::scope`]); the services put that list into the
//! SQL that reads or changes such an object, so another organisation's object is simply not found
//! (its existence is not revealed) and lists hold only the caller's own. The platform's own
//! services calling each other (role `service`) and anonymous calls (allowed only where the
//! deployment does not require a context: development and tests) are unscoped and see every
//! organisation. Objects created by an unscoped caller without an organisation belong to none
//! (`''`); no scoped caller ever sees those.

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

/// Role of the platform's own services calling each other: unscoped.
pub const ROLE_SERVICE: &str = "service";
/// Role of a call without a caller context (development and tests only): unscoped.
pub const ROLE_ANONYMOUS: &str = "anonymous";
/// `ErrorInfo.reason` when a caller names, or creates into, an organisation that is not theirs.
pub const OTHER_ORGANISATION: &str = "OTHER_ORGANISATION";

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
            actor: Actor { subject: "anonymous".into(), role: ROLE_ANONYMOUS.into(), organisation: String::new() },
            organisations: Vec::new(),
            permissions: Vec::new(),
        }
    }

    pub fn may(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// The organisations whose patients, appointments and referrals this caller may see and change:
    /// `None` when unscoped (a service, or an anonymous call), which sees every organisation;
    /// otherwise the caller's organisations (an empty list sees nothing). Bound into SQL as
    /// `($n::text[] IS NULL OR organisation = ANY($n))`.
    pub fn scope(&self) -> Option<&[String]> {
        match self.actor.role.as_str() {
            ROLE_SERVICE | ROLE_ANONYMOUS => None,
            _ => Some(&self.organisations),
        }
    }

    /// Whether an object owned by `organisation` is within this caller's scope. Nothing owned by no
    /// organisation (`''`) is within a scoped caller's.
    pub fn sees(&self, organisation: &str) -> bool {
        within(self.scope(), organisation)
    }

    /// The organisation that owns something this caller creates. `requested` is the request's
    /// optional organisation (`field` names it in errors): when given it must be an ODS code and,
    /// for a scoped caller, one of theirs (else PERMISSION_DENIED, reason `OTHER_ORGANISATION`).
    /// When not given: the caller's own organisation (`actor.organisation`; for a scoped caller
    /// whose own is not among theirs, the first of theirs), which for an unscoped caller may be
    /// `''`, owned by no organisation. A scoped caller with no organisation cannot
    /// create (PERMISSION_DENIED, reason `NO_ORGANISATION`).
    pub fn owning_organisation(&self, field: &str, requested: &str) -> Result<String, ApiError> {
        let requested = requested.trim().to_uppercase();
        if requested.is_empty() {
            let own = &self.actor.organisation;
            return match self.scope() {
                None => Ok(own.clone()),
                Some(_) if self.sees(own) => Ok(own.clone()),
                Some(organisations) => match organisations.first() {
                    Some(first) => Ok(first.clone()),
                    None => Err(ApiError::permission_denied("NO_ORGANISATION", "the caller belongs to no organisation")),
                },
            };
        }
        if crate::codes::OdsCode::parse(&requested).is_err() {
            return Err(ApiError::invalid_field(field, "ORGANISATION_INVALID", "must be an ODS code such as RR8"));
        }
        if !self.sees(&requested) {
            return Err(ApiError::permission_denied(OTHER_ORGANISATION, format!("{field} is not one of the caller's organisations")));
        }
        Ok(requested)
    }
}

/// Whether an object owned by `organisation` is within `scope` (see [`Caller::scope`]).
pub fn within(scope: Option<&[String]>, organisation: &str) -> bool {
    match scope {
        None => true,
        Some(organisations) => !organisation.is_empty() && organisations.iter().any(|o| o == organisation),
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
            // An empty code names no organisation: it must never match objects owned by none.
            organisations: claims.orgs.into_iter().filter(|o| !o.is_empty()).collect(),
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

    #[test]
    fn end_users_are_scoped_to_their_organisations_services_and_anonymous_calls_are_not() {
        let user = caller();
        assert_eq!(user.scope(), Some(&["RR8".to_string()][..]));
        assert!(user.sees("RR8") && !user.sees("RAE") && !user.sees(""));
        let nobody = Caller { organisations: Vec::new(), ..caller() };
        assert_eq!(nobody.scope(), Some(&[][..]));
        assert!(!nobody.sees("RR8"));
        let service = Caller {
            actor: Actor { subject: "pac-scheduling".into(), role: ROLE_SERVICE.into(), organisation: String::new() },
            organisations: Vec::new(),
            permissions: Vec::new(),
        };
        for unscoped in [service, Caller::anonymous()] {
            assert_eq!(unscoped.scope(), None);
            assert!(unscoped.sees("RR8") && unscoped.sees(""));
        }
    }

    #[test]
    fn what_a_caller_creates_belongs_to_a_chosen_organisation_of_theirs_or_their_own() {
        let user = Caller { organisations: vec!["RR8".into(), "RAE".into()], ..caller() };
        assert_eq!(user.owning_organisation("clinic.organisation", "").unwrap(), "RR8");
        assert_eq!(user.owning_organisation("clinic.organisation", " rae ").unwrap(), "RAE");
        let other = user.owning_organisation("clinic.organisation", "RX1").unwrap_err();
        assert_eq!((other.code, other.reason), (tonic::Code::PermissionDenied, OTHER_ORGANISATION));
        let invalid = user.owning_organisation("clinic.organisation", "R R8").unwrap_err();
        assert_eq!((invalid.code, invalid.reason), (tonic::Code::InvalidArgument, "ORGANISATION_INVALID"));
        let nobody = Caller { organisations: Vec::new(), ..caller() };
        assert_eq!(nobody.owning_organisation("clinic.organisation", "").unwrap_err().reason, "NO_ORGANISATION");
        assert_eq!(Caller::anonymous().owning_organisation("clinic.organisation", "").unwrap(), "");
        assert_eq!(Caller::anonymous().owning_organisation("clinic.organisation", "RX1").unwrap(), "RX1");
    }

    #[test]
    fn an_empty_organisation_in_a_context_names_none() {
        let verifier = CallerVerifier::new(&Secret::new("k".repeat(32)), true);
        let token = verifier.sign(&Caller { organisations: vec!["".into(), "RR8".into()], ..caller() }, Duration::from_secs(60));
        assert_eq!(verifier.caller(&metadata(&token)).unwrap().organisations, vec!["RR8".to_string()]);
    }
}

//! Bearer-token authentication. Production verifies ES256 or RS256 tokens against a configured JWKS
//! (issuer, audience, expiry, not-before, small clock skew); each key's algorithm is fixed by the
//! key itself, so `alg=none` and algorithm confusion (an HMAC token "signed" with a public key) are
//! refused. Development verifies HS256 tokens signed with a shared key, which `pac token` mints.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::policy::Role;

/// Clock skew allowed on expiry, not-before and issue time.
const LEEWAY_SECONDS: u64 = 30;
/// Longest lifetime (expiry less issue time) a token may have unless configured otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest token accepted, in bytes; a longer one is refused (and audited) as `TOKEN_TOO_LARGE`.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub role: Role,
    /// Organisations (ODS codes) the caller acts for; the first is the one recorded as acting.
    pub organisations: Vec<String>,
}

/// Why a token was refused. The caller is told only that it was; the reason is for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    UnknownKey,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    Claims,
    /// Expires too long after it was issued.
    Lifetime,
    /// Issued in the future (beyond the clock skew allowed).
    IssuedInFuture,
    TooLarge,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "TOKEN_MISSING",
            Self::Malformed => "TOKEN_MALFORMED",
            Self::UnknownKey => "TOKEN_KEY_UNKNOWN",
            Self::Algorithm => "TOKEN_ALGORITHM_REFUSED",
            Self::Signature => "TOKEN_SIGNATURE_INVALID",
            Self::Expired => "TOKEN_EXPIRED",
            Self::NotYetValid => "TOKEN_NOT_YET_VALID",
            Self::Audience => "TOKEN_AUDIENCE_WRONG",
            Self::Issuer => "TOKEN_ISSUER_WRONG",
            Self::Claims => "TOKEN_CLAIMS_INVALID",
            Self::Lifetime => "TOKEN_LIFETIME_TOO_LONG",
            Self::IssuedInFuture => "TOKEN_ISSUED_IN_FUTURE",
            Self::TooLarge => "TOKEN_TOO_LARGE",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    #[serde(default)]
    orgs: Vec<String>,
    iss: String,
    aud: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    iat: u64,
}

enum Keys {
    /// Key id → (key, the one algorithm it verifies).
    Jwks(HashMap<String, (DecodingKey, Algorithm)>),
    Development(DecodingKey),
}

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Keys,
    issuer: String,
    audience: String,
    max_lifetime: Duration,
}

impl Authenticator {
    /// Production: ES256/RS256 keys from a JWKS document. Keys of other types or algorithms are refused.
    pub fn from_jwks(jwks_json: &str, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_str(jwks_json)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or_else(|| anyhow::anyhow!("every JWKS key needs a kid"))?;
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => anyhow::bail!("JWKS key {kid}: only EC P-256 (ES256) and RSA (RS256) keys are accepted"),
            };
            if let Some(declared) = jwk.common.key_algorithm
                && format!("{declared:?}") != format!("{algorithm:?}")
            {
                anyhow::bail!("JWKS key {kid}: declared algorithm {declared:?} does not fit its key type");
            }
            keys.insert(kid, (DecodingKey::from_jwk(jwk)?, algorithm));
        }
        anyhow::ensure!(!keys.is_empty(), "the JWKS has no keys");
        Ok(Self { keys: Keys::Jwks(keys), issuer: issuer.into(), audience: audience.into(), max_lifetime: DEFAULT_MAX_LIFETIME })
    }

    /// Development: HS256 tokens signed with `secret`.
    pub fn development(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self {
            keys: Keys::Development(DecodingKey::from_secret(secret)),
            issuer: issuer.into(),
            audience: audience.into(),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// Refuses tokens that expire more than `max` after they were issued.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// The identity in an `authorization: Bearer …` header value (the proxy verifies through its
    /// cache of verified tokens instead).
    #[cfg(test)]
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, Refusal> {
        self.verify(bearer(authorization)?).map(|(identity, _)| identity)
    }

    /// The identity a token carries, and when the token expires (seconds since the Unix epoch).
    pub fn verify(&self, token: &str) -> Result<(Identity, u64), Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::TooLarge);
        }
        // `alg: none` and unknown algorithms fail here; so does what is not a JWT at all.
        let head = jsonwebtoken::decode_header(token).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidToken | K::Base64(_) | K::Utf8(_) => Refusal::Malformed,
                _ => Refusal::Algorithm,
            }
        })?;
        let (key, algorithm) = match &self.keys {
            Keys::Development(key) => (key, Algorithm::HS256),
            Keys::Jwks(keys) => {
                let kid = head.kid.as_deref().ok_or(Refusal::UnknownKey)?;
                let (key, algorithm) = keys.get(kid).ok_or(Refusal::UnknownKey)?;
                (key, *algorithm)
            }
        };
        if head.alg != algorithm {
            return Err(Refusal::Algorithm);
        }
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => Refusal::Expired,
                    K::ImmatureSignature => Refusal::NotYetValid,
                    K::InvalidAudience => Refusal::Audience,
                    K::InvalidIssuer => Refusal::Issuer,
                    K::InvalidSignature => Refusal::Signature,
                    K::InvalidAlgorithm => Refusal::Algorithm,
                    K::MissingRequiredClaim(_) | K::Json(_) => Refusal::Claims,
                    _ => Refusal::Malformed,
                }
            })?
            .claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now + LEEWAY_SECONDS {
            return Err(Refusal::IssuedInFuture);
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_lifetime.as_secs() {
            return Err(Refusal::Lifetime);
        }
        let role = Role::from_name(&claims.role).ok_or(Refusal::Claims)?;
        // A caller acts for at least one organisation: what it may see is scoped to them.
        // Names are recorded in the audit trail and shown to auditors: printable, nothing that
        // changes how the text around them reads, and of sensible length.
        let name = |n: &str| !n.trim().is_empty() && n.len() <= 256 && !n.chars().any(|c| c.is_control() || is_format(c));
        if !name(&claims.sub) || claims.orgs.is_empty() || !claims.orgs.iter().all(|o| name(o)) {
            return Err(Refusal::Claims);
        }
        Ok((Identity { subject: claims.sub, role, organisations: claims.orgs }, claims.exp))
    }
}

/// Unicode's format characters (general category Cf: bidirectional overrides such as U+202E,
/// zero-width characters, the byte order mark, tags) and the line and paragraph separators: invisible
/// characters that change how the text around them is shown.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}' | '\u{890}'..='\u{891}' | '\u{8E2}'
        | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// The token in an `authorization: Bearer …` header value.
pub fn bearer(authorization: Option<&str>) -> Result<&str, Refusal> {
    let header = authorization.ok_or(Refusal::Missing)?;
    Ok(header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or(Refusal::Malformed)?.trim())
}

/// A development token (HS256) for `pac token`.
pub fn mint_development(secret: &[u8], issuer: &str, audience: &str, identity: &Identity, ttl: Duration) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: identity.subject.clone(),
        role: identity.role.name().into(),
        orgs: identity.organisations.clone(),
        iss: issuer.into(),
        aud: audience.into(),
        exp: now + ttl.as_secs(),
        nbf: None,
        iat: now,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing of serialisable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    const ISSUER: &str = "https://login.trust.example";
    const AUDIENCE: &str = "pac-gateway";
    const JWKS: &str = include_str!("../testdata/jwks.json");
    /// Test-only private keys (PKCS#8 EC P-256, PKCS#1 RSA 2048) whose public halves are in jwks.json.
    const EC_KEY: &[u8] = include_bytes!("../testdata/ec.pk8.der");
    const RSA_KEY: &[u8] = include_bytes!("../testdata/rsa.pk1.der");
    const RSA_PUBLIC: &str = include_str!("../testdata/rsa.pub.pem");

    fn claims(exp_in: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        Claims {
            sub: "clinician-42".into(),
            role: "clinician".into(),
            orgs: vec!["RR8".into()],
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: (now + exp_in) as u64,
            nbf: None,
            iat: now as u64,
        }
    }

    fn sign(claims: &Claims, algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn production() -> Authenticator {
        Authenticator::from_jwks(JWKS, ISSUER, AUDIENCE).unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn es256_and_rs256_tokens_from_the_jwks_are_accepted() {
        let ec = EncodingKey::from_ec_der(EC_KEY);
        let rsa = EncodingKey::from_rsa_der(RSA_KEY);
        let auth = production();
        for token in
            [sign(&claims(300), Algorithm::ES256, Some("test-ec"), &ec), sign(&claims(300), Algorithm::RS256, Some("test-rsa"), &rsa)]
        {
            let identity = auth.authenticate(Some(&bearer(&token))).unwrap();
            assert_eq!(
                (identity.subject.as_str(), identity.role, identity.organisations.as_slice()),
                ("clinician-42", Role::Clinician, ["RR8".to_string()].as_slice())
            );
        }
    }

    #[test]
    fn each_bad_token_is_refused_for_its_reason() {
        let ec = EncodingKey::from_ec_der(EC_KEY);
        let auth = production();
        let check = |token: String, refusal: Refusal| assert_eq!(auth.authenticate(Some(&bearer(&token))), Err(refusal), "{token}");
        assert_eq!(auth.authenticate(None), Err(Refusal::Missing));
        assert_eq!(auth.authenticate(Some("Basic dXNlcjpwYXNz")), Err(Refusal::Malformed));
        check(sign(&claims(-120), Algorithm::ES256, Some("test-ec"), &ec), Refusal::Expired);
        check(
            sign(&Claims { nbf: Some(jsonwebtoken::get_current_timestamp() + 600), ..claims(900) }, Algorithm::ES256, Some("test-ec"), &ec),
            Refusal::NotYetValid,
        );
        check(sign(&Claims { aud: "someone-else".into(), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Audience);
        check(sign(&Claims { iss: "https://evil.example".into(), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Issuer);
        check(sign(&Claims { role: "superuser".into(), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Claims);
        check(sign(&Claims { sub: "a\u{0}b".into(), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Claims);
        check(sign(&Claims { orgs: vec!["RR8\n".into()], ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Claims);
        check(sign(&Claims { sub: "x".repeat(257), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Claims);
        for invisible in ["\u{202E}", "\u{200B}", "\u{FEFF}", "\u{2066}", "\u{E0041}", "\u{2028}", "\u{AD}"] {
            check(
                sign(&Claims { sub: format!("clin{invisible}ician"), ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec),
                Refusal::Claims,
            );
            check(
                sign(&Claims { orgs: vec![format!("RR8{invisible}")], ..claims(300) }, Algorithm::ES256, Some("test-ec"), &ec),
                Refusal::Claims,
            );
        }
        // Lifetimes: a day is the most by default; issued in the future beyond the clock skew.
        let now = jsonwebtoken::get_current_timestamp();
        check(sign(&Claims { iat: now, exp: now + 24 * 3600 + 1, ..claims(0) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::Lifetime);
        check(sign(&Claims { iat: now + 120, ..claims(600) }, Algorithm::ES256, Some("test-ec"), &ec), Refusal::IssuedInFuture);
        let within = sign(&Claims { iat: now + 20, exp: now + 24 * 3600, ..claims(0) }, Algorithm::ES256, Some("test-ec"), &ec);
        assert!(auth.authenticate(Some(&bearer(&within))).is_ok(), "a day, issued within the clock skew");
        let shorter = production().max_lifetime(Duration::from_secs(3600));
        let two_hours = sign(&claims(7200), Algorithm::ES256, Some("test-ec"), &ec);
        assert_eq!(shorter.authenticate(Some(&bearer(&two_hours))), Err(Refusal::Lifetime));
        // Over the size limit, whatever it holds.
        check(format!("{}.{}.{}", "a".repeat(4000), "b".repeat(4000), "c".repeat(400)), Refusal::TooLarge);
        check(sign(&claims(300), Algorithm::ES256, Some("nobody"), &ec), Refusal::UnknownKey);
        check(sign(&claims(300), Algorithm::ES256, None, &ec), Refusal::UnknownKey);
        // A valid token whose payload was changed after signing.
        let valid = sign(&claims(300), Algorithm::ES256, Some("test-ec"), &ec);
        let mut parts: Vec<&str> = valid.split('.').collect();
        let tampered_payload = b64(serde_json::to_string(&Claims { role: "admin".into(), ..claims(300) }).unwrap().as_bytes());
        parts[1] = &tampered_payload;
        check(parts.join("."), Refusal::Signature);
        // alg none.
        let none_header = b64(br#"{"alg":"none","typ":"JWT","kid":"test-ec"}"#);
        let payload = b64(serde_json::to_string(&claims(300)).unwrap().as_bytes());
        check(format!("{none_header}.{payload}."), Refusal::Algorithm);
        // Algorithm confusion: HS256 "signed" with the RSA public key under the RSA key's kid.
        let confused = sign(&claims(300), Algorithm::HS256, Some("test-rsa"), &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()));
        check(confused, Refusal::Algorithm);
        // An RS256 header on the EC key.
        let rsa = EncodingKey::from_rsa_der(RSA_KEY);
        check(sign(&claims(300), Algorithm::RS256, Some("test-ec"), &rsa), Refusal::Algorithm);
    }

    #[test]
    fn development_tokens_round_trip_and_other_secrets_fail() {
        let identity = Identity { subject: "dev-coordinator".into(), role: Role::Coordinator, organisations: vec!["RR8".into()] };
        let token = mint_development(b"a development secret of enough length", ISSUER, AUDIENCE, &identity, Duration::from_secs(60));
        let auth = Authenticator::development(b"a development secret of enough length", ISSUER, AUDIENCE);
        assert_eq!(auth.authenticate(Some(&bearer(&token))), Ok(identity.clone()));
        let other = Authenticator::development(b"another secret", ISSUER, AUDIENCE);
        assert_eq!(other.authenticate(Some(&bearer(&token))), Err(Refusal::Signature));
        // A development token is no good where a JWKS is configured.
        assert_eq!(production().authenticate(Some(&bearer(&token))), Err(Refusal::UnknownKey));
    }

    #[test]
    fn a_jwks_with_an_unsupported_or_mislabelled_key_is_refused() {
        let hmac = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k1","alg":"HS256"}]}"#;
        assert!(Authenticator::from_jwks(hmac, ISSUER, AUDIENCE).is_err());
        let mislabelled = JWKS.replacen("\"ES256\"", "\"RS256\"", 1);
        assert!(Authenticator::from_jwks(&mislabelled, ISSUER, AUDIENCE).is_err());
        assert!(Authenticator::from_jwks(r#"{"keys":[]}"#, ISSUER, AUDIENCE).is_err());
    }
}

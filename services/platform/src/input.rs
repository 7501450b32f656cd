//! The one check every request's text passes before any handler sees it: a layer that reads each
//! unary request's protobuf message against the contracts' descriptors and refuses, with
//! `INVALID_ARGUMENT` and a field violation naming the field, any string field that holds a control
//! character other than tab and line breaks (NUL above all: Postgres refuses it in text, and the
//! call would fail there), is not UTF-8, or is longer than [`MAX_TEXT_BYTES`]. A message that is not
//! valid protobuf is `INVALID_ARGUMENT` too (tonic would answer `INTERNAL`). Each handler still
//! checks its fields' own rules (lengths, formats); this makes sure none of them can be forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::error::{ApiError, FieldViolation};

/// Longest text field accepted, in bytes. Every free-text field of the contracts is shorter by its
/// own rule; this bounds the ones that have none.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Deepest nesting of messages read.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Message(usize),
    Bytes,
    /// A number: its wire type (varint 0, fixed64 1, fixed32 5), and whether it repeats (and so
    /// may also come packed, as wire type 2).
    Number {
        wire_type: u64,
        repeated: bool,
    },
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
}

/// What the check knows of the contracts: each method's request message and each message's fields.
#[derive(Debug, Default)]
pub struct Contracts {
    /// `/package.Service/Method` → request message.
    methods: HashMap<String, usize>,
    /// Fields of each message, by field number.
    messages: Vec<HashMap<u32, Field>>,
}

impl Contracts {
    /// From encoded `FileDescriptorSet`s (e.g. `pac_proto::FILE_DESCRIPTOR_SET`). Methods whose
    /// requests stream are not checked.
    pub fn from_descriptor_sets(encoded: &[&[u8]]) -> anyhow::Result<Self> {
        let mut set = prost_types::FileDescriptorSet::default();
        for one in encoded {
            set.file.extend(prost_types::FileDescriptorSet::decode(*one)?.file);
        }
        // Every message by its full name (".pkg.Outer.Inner"), numbered, nested ones included.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut descriptors = Vec::new();
        fn collect<'a>(
            prefix: &str,
            message: &'a prost_types::DescriptorProto,
            names: &mut HashMap<String, usize>,
            descriptors: &mut Vec<&'a prost_types::DescriptorProto>,
        ) {
            let name = format!("{prefix}.{}", message.name());
            names.insert(name.clone(), descriptors.len());
            descriptors.push(message);
            for nested in &message.nested_type {
                collect(&name, nested, names, descriptors);
            }
        }
        for file in &set.file {
            let prefix = if file.package().is_empty() { String::new() } else { format!(".{}", file.package()) };
            for message in &file.message_type {
                collect(&prefix, message, &mut names, &mut descriptors);
            }
        }
        let messages = descriptors
            .iter()
            .map(|message| {
                message
                    .field
                    .iter()
                    .map(|field| {
                        let repeated = field.label() == prost_types::field_descriptor_proto::Label::Repeated;
                        let kind = match field.r#type() {
                            Type::String => Kind::Text,
                            // A message the contracts do not describe is not read further.
                            Type::Message => names.get(field.type_name()).map_or(Kind::Bytes, |&m| Kind::Message(m)),
                            Type::Bytes | Type::Group => Kind::Bytes,
                            Type::Double | Type::Fixed64 | Type::Sfixed64 => Kind::Number { wire_type: 1, repeated },
                            Type::Float | Type::Fixed32 | Type::Sfixed32 => Kind::Number { wire_type: 5, repeated },
                            _ => Kind::Number { wire_type: 0, repeated },
                        };
                        (field.number() as u32, Field { name: field.name().to_string(), kind })
                    })
                    .collect()
            })
            .collect();
        let mut methods = HashMap::new();
        for file in &set.file {
            for service in &file.service {
                for method in service.method.iter().filter(|m| !m.client_streaming()) {
                    if let Some(&input) = names.get(method.input_type()) {
                        methods.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()), input);
                    }
                }
            }
        }
        Ok(Self { methods, messages })
    }

    /// Checks the request message `body` (one gRPC frame, as sent) of the RPC at `path`; `encoded`
    /// says whether the request names a content encoding (`grpc-encoding`).
    pub fn check(&self, path: &str, body: &[u8], encoded: bool) -> Result<(), ApiError> {
        let Some(&message) = self.methods.get(path) else { return Ok(()) };
        let malformed = || ApiError::invalid_field("", "REQUEST_MALFORMED", "the request is not a valid message of this RPC");
        let [compressed, l0, l1, l2, l3, payload @ ..] = body else { return Err(malformed()) };
        match compressed {
            0 => {}
            // A compressed message in an encoding the request names: the server itself answers
            // (it accepts none, and says so with UNIMPLEMENTED).
            1 if encoded => return Ok(()),
            _ => return Err(malformed()),
        }
        if u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize != payload.len() {
            return Err(malformed());
        }
        match self.walk(message, payload, "", 0) {
            Ok(()) => Ok(()),
            Err(Problem::Malformed) => Err(malformed()),
            Err(Problem::Text(violation)) => Err(ApiError::invalid(vec![violation])),
        }
    }

    /// Reads `bytes` as `message` the way the services' decoder will, so that whatever it would
    /// refuse (a wrong wire type for a known field, field number 0, a truncated value) is refused
    /// here as the caller's mistake rather than there as a server fault.
    fn walk(&self, message: usize, mut bytes: &[u8], path: &str, depth: usize) -> Result<(), Problem> {
        if depth > MAX_DEPTH {
            return Err(Problem::Malformed);
        }
        while !bytes.is_empty() {
            let key = varint(&mut bytes)?;
            let (number, wire_type) = (u32::try_from(key >> 3).map_err(|_| Problem::Malformed)?, key & 7);
            if number == 0 {
                return Err(Problem::Malformed);
            }
            let value = match wire_type {
                0 => {
                    varint(&mut bytes)?;
                    None
                }
                1 => Some(take(&mut bytes, 8)?),
                5 => Some(take(&mut bytes, 4)?),
                2 => {
                    let length = usize::try_from(varint(&mut bytes)?).map_err(|_| Problem::Malformed)?;
                    Some(take(&mut bytes, length)?)
                }
                _ => return Err(Problem::Malformed),
            };
            let Some(field) = self.messages[message].get(&number) else { continue };
            match (field.kind, wire_type) {
                (Kind::Number { wire_type: expected, .. }, _) if wire_type == expected => {}
                (Kind::Number { wire_type: expected, repeated: true }, 2) => packed(value.unwrap_or_default(), expected)?,
                (Kind::Text | Kind::Message(_) | Kind::Bytes, 2) => {
                    let value = value.unwrap_or_default();
                    let name = || if path.is_empty() { field.name.clone() } else { format!("{path}.{}", field.name) };
                    match field.kind {
                        Kind::Text => check_text(&name(), value)?,
                        Kind::Message(inner) => self.walk(inner, value, &name(), depth + 1)?,
                        _ => {}
                    }
                }
                _ => return Err(Problem::Malformed),
            }
        }
        Ok(())
    }
}

fn take<'a>(bytes: &mut &'a [u8], length: usize) -> Result<&'a [u8], Problem> {
    if bytes.len() < length {
        return Err(Problem::Malformed);
    }
    let (value, rest) = bytes.split_at(length);
    *bytes = rest;
    Ok(value)
}

/// A packed repeated number field's contents: whole values of its wire type.
fn packed(mut value: &[u8], wire_type: u64) -> Result<(), Problem> {
    match wire_type {
        0 => {
            while !value.is_empty() {
                varint(&mut value)?;
            }
            Ok(())
        }
        1 if value.len().is_multiple_of(8) => Ok(()),
        5 if value.len().is_multiple_of(4) => Ok(()),
        _ => Err(Problem::Malformed),
    }
}

enum Problem {
    Malformed,
    Text(FieldViolation),
}

fn varint(bytes: &mut &[u8]) -> Result<u64, Problem> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(Problem::Malformed)?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            // More than 64 bits.
            return Err(Problem::Malformed);
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Problem::Malformed)
}

fn check_text(field: &str, value: &[u8]) -> Result<(), Problem> {
    let refuse = |reason, description: &str| Err(Problem::Text(FieldViolation::new(field, reason, description)));
    if value.len() > MAX_TEXT_BYTES {
        return refuse("TEXT_TOO_LONG", &format!("is longer than {MAX_TEXT_BYTES} bytes"));
    }
    let Ok(text) = std::str::from_utf8(value) else { return refuse("TEXT_INVALID", "is not UTF-8 text") };
    if text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return refuse("TEXT_INVALID", "must not contain control characters");
    }
    Ok(())
}

/// The layer that checks requests against `contracts` before the services see them.
#[derive(Clone)]
pub struct InputCheckLayer {
    contracts: Arc<Contracts>,
    max_request_bytes: usize,
}

impl InputCheckLayer {
    pub fn new(contracts: Arc<Contracts>, max_request_bytes: usize) -> Self {
        Self { contracts, max_request_bytes }
    }
}

impl<S> Layer<S> for InputCheckLayer {
    type Service = InputCheck<S>;
    fn layer(&self, inner: S) -> InputCheck<S> {
        InputCheck { inner, contracts: self.contracts.clone(), max_request_bytes: self.max_request_bytes }
    }
}

#[derive(Clone)]
pub struct InputCheck<S> {
    inner: S,
    contracts: Arc<Contracts>,
    max_request_bytes: usize,
}

impl<S> Service<Request<Body>> for InputCheck<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !self.contracts.methods.contains_key(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was made ready takes the call; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (contracts, limit) = (self.contracts.clone(), self.max_request_bytes);
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            let body: Bytes = match http_body_util::Limited::new(body, limit + 5).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => return Ok(tonic::Status::from(unread(&*error, "the request is larger than this server accepts")).into_http()),
            };
            let encoded = parts.headers.get("grpc-encoding").is_some_and(|e| e.as_bytes() != b"identity");
            if let Err(error) = contracts.check(parts.uri.path(), &body, encoded) {
                return Ok(tonic::Status::from(error).into_http());
            }
            inner.call(Request::from_parts(parts, Body::new(http_body_util::Full::new(body)))).await
        })
    }
}

/// Why a request's body could not be read whole: over the size limit (`OUT_OF_RANGE`, with
/// `too_large` as the message), or cut off before its end, most often by a caller who went away or
/// a connection closed under load (`CANCELLED`; not the caller's mistake, and safe to retry).
pub fn unread(error: &(dyn std::error::Error + 'static), too_large: &str) -> ApiError {
    if error.is::<http_body_util::LengthLimitError>() {
        ApiError::new(tonic::Code::OutOfRange, "REQUEST_TOO_LARGE", too_large)
    } else {
        ApiError::new(tonic::Code::Cancelled, "REQUEST_INCOMPLETE", "the request ended before its end; retry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pac_proto::records as pb;

    fn framed(message: &impl Message) -> Vec<u8> {
        let payload = message.encode_to_vec();
        let mut body = vec![0];
        body.extend((payload.len() as u32).to_be_bytes());
        body.extend(payload);
        body
    }

    fn contracts() -> Contracts {
        Contracts::from_descriptor_sets(&[pac_proto::FILE_DESCRIPTOR_SET]).unwrap()
    }

    const REGISTER: &str = "/pac.records.v1.PatientRecords/RegisterPatient";

    fn registration(family_name: &str) -> pb::RegisterPatientRequest {
        let patient = pb::Patient { family_name: family_name.into(), given_name: "Ada\tLine\nbreak".into(), ..Default::default() };
        pb::RegisterPatientRequest { patient: Some(patient), ..Default::default() }
    }

    #[test]
    fn text_with_control_characters_is_refused_with_the_field_named() {
        let contracts = contracts();
        assert!(contracts.check(REGISTER, &framed(&registration("Lovelace")), false).is_ok(), "tabs and line breaks pass");
        for bad in ["A\u{0}B", "A\u{7}B", "A\u{1b}[31m", "A\u{85}B", "A\u{7f}"] {
            let error = contracts.check(REGISTER, &framed(&registration(bad)), false).unwrap_err();
            assert_eq!((error.code, error.reason), (tonic::Code::InvalidArgument, "TEXT_INVALID"), "{bad:?}");
            assert_eq!(error.field_violations[0].field, "patient.family_name");
        }
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(contracts.check(REGISTER, &framed(&registration(&long)), false).unwrap_err().reason, "TEXT_TOO_LONG");
        // Repeated and nested messages are read too.
        let lookup = pb::LookupPatientRequest {
            identifier: Some(pb::lookup_patient_request::Identifier::LocalIdentifier(pb::LocalIdentifier {
                issuer: "RR8".into(),
                value: "A\u{0}B".into(),
            })),
        };
        let error = contracts.check("/pac.records.v1.PatientRecords/LookupPatient", &framed(&lookup), false).unwrap_err();
        assert_eq!(error.field_violations[0].field, "local_identifier.value");
    }

    #[test]
    fn what_is_not_a_message_is_refused_and_other_paths_pass() {
        let contracts = contracts();
        let garbage: [&[u8]; 10] = [
            b"",
            &[0, 0, 0, 0, 9, 1],
            &[0, 0, 0, 0, 2, 0x0a, 0x05],
            &[0, 0, 0, 0, 1, 0x0b],
            // Field number 0.
            &[0, 0, 0, 0, 2, 0x00, 0x01],
            // The patient (a message) sent as a number.
            &[0, 0, 0, 0, 2, 0x08, 0x01],
            // A number of more than 64 bits.
            &[0, 0, 0, 0, 12, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            // A compression flag that is not 0 or 1, and 1 with no encoding named.
            &[2, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0],
            // A group, which no contract uses.
            &[0, 0, 0, 0, 2, 0x53, 0x54],
        ];
        for garbage in garbage {
            assert_eq!(contracts.check(REGISTER, garbage, false).unwrap_err().reason, "REQUEST_MALFORMED", "{garbage:?}");
        }
        assert!(contracts.check(REGISTER, &[1, 0, 0, 0, 0], true).is_ok(), "an encoding the request names is the server's to refuse");
        // Invalid UTF-8 in a string field.
        let bad_utf8 = [0, 0, 0, 0, 8, 0x0a, 0x06, 0x1a, 0x04, 0x41, 0xff, 0xfe, 0x42];
        assert_eq!(contracts.check(REGISTER, &bad_utf8, false).unwrap_err().reason, "TEXT_INVALID");
        assert!(contracts.check("/grpc.health.v1.Health/Check", b"anything", false).is_ok());
    }
}

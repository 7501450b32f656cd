//! Bad text in every string field of every request of every RPC (records, scheduling and referrals
//! directly; the access API and the audit trail through the gateway): a NUL, other control
//! characters, and a 100 KB value. Each is `INVALID_ARGUMENT` with the field named (a read through
//! the gateway over 64 KiB is `OUT_OF_RANGE`, as documented), never `INTERNAL`, and nothing reaches
//! the database.

use std::time::Duration;

use bytes::{Buf, BufMut};
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::common::{Component, Processes};

/// Sends and receives messages as the bytes they are.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut item = vec![0; src.remaining()];
        src.copy_to_slice(&mut item);
        Ok(Some(item))
    }
}

/// A string field reached from a request message: its path of (field number, name).
type FieldPath = Vec<(u32, String)>;

/// The string fields of `message`, nested ones included (to `depth` levels).
fn text_fields(set: &prost_types::FileDescriptorSet, message: &str, depth: usize) -> Vec<FieldPath> {
    let Some(descriptor) = find_message(set, message) else { return Vec::new() };
    let mut paths = Vec::new();
    for field in &descriptor.field {
        let step = (field.number() as u32, field.name().to_string());
        match field.r#type() {
            Type::String => paths.push(vec![step]),
            Type::Message if depth > 0 => {
                for mut inner in text_fields(set, field.type_name(), depth - 1) {
                    inner.insert(0, step.clone());
                    paths.push(inner);
                }
            }
            _ => {}
        }
    }
    paths
}

fn find_message<'a>(set: &'a prost_types::FileDescriptorSet, full_name: &str) -> Option<&'a prost_types::DescriptorProto> {
    fn within<'a>(prefix: &str, messages: &'a [prost_types::DescriptorProto], name: &str) -> Option<&'a prost_types::DescriptorProto> {
        messages.iter().find_map(|m| {
            let full = format!("{prefix}.{}", m.name());
            if full == name { Some(m) } else { within(&full, &m.nested_type, name) }
        })
    }
    set.file.iter().find_map(|file| within(&format!(".{}", file.package()), &file.message_type, full_name))
}

/// A message holding `value` at `path`, encoded.
fn message_with(path: &[(u32, String)], value: &[u8]) -> Vec<u8> {
    let mut bytes = value.to_vec();
    for (number, _) in path.iter().rev() {
        let mut outer = Vec::new();
        prost::encoding::encode_key(*number, prost::encoding::WireType::LengthDelimited, &mut outer);
        prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
        outer.extend(bytes);
        bytes = outer;
    }
    bytes
}

fn token(role: Role) -> String {
    let identity = Identity { subject: format!("inputs-{}", role.name()), role, organisations: vec!["RR8".into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_in_every_field_of_every_rpc_is_invalid_argument_never_internal() {
    use tonic_types::StatusExt;
    let processes = Processes::start().await;
    let set = prost_types::FileDescriptorSet::decode(pac_proto::FILE_DESCRIPTOR_SET).unwrap();
    let bad_values: [(&str, Vec<u8>); 4] = [
        ("NUL", b"A\0B".to_vec()),
        ("escape", b"A\x1b[31mB".to_vec()),
        ("C1 control", "A\u{85}B".as_bytes().to_vec()),
        ("100 KB", vec![b'x'; 100_000]),
    ];
    let mut cases = 0;
    let mut rpcs = 0;
    let mut failures = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let (component, token) = match file.package() {
                "pac.records.v1" => (Component::Records, None),
                "pac.scheduling.v1" => (Component::Scheduling, None),
                "pac.referrals.v1" => (Component::Referrals, None),
                "pac.access.v1" => (Component::Gateway, Some(token(Role::Coordinator))),
                "pac.audit.v1" => (Component::Gateway, Some(token(Role::Auditor))),
                _ => continue,
            };
            for method in &service.method {
                rpcs += 1;
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                for field in text_fields(&set, method.input_type(), 3) {
                    let field_name = field.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(".");
                    for (what, value) in &bad_values {
                        cases += 1;
                        let mut grpc = tonic::client::Grpc::new(processes.channel(component));
                        grpc.ready().await.unwrap();
                        let mut request = tonic::Request::new(message_with(&field, value));
                        request.set_timeout(Duration::from_secs(5));
                        if let Some(token) = &token {
                            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                        }
                        let route = http::uri::PathAndQuery::try_from(path.as_str()).unwrap();
                        let outcome = if method.server_streaming() {
                            grpc.server_streaming(request, route, Raw).await.map(|_| ())
                        } else {
                            grpc.unary(request, route, Raw).await.map(|_| ())
                        };
                        let status = match outcome {
                            Ok(()) => {
                                failures.push(format!("{path} {field_name} ({what}): accepted"));
                                continue;
                            }
                            Err(status) => status,
                        };
                        let through_gateway_too_large = component == Component::Gateway
                            && status.code() == Code::OutOfRange
                            && status.get_error_details().error_info().is_some_and(|i| i.reason == "REQUEST_TOO_LARGE");
                        let named = status
                            .get_error_details()
                            .bad_request()
                            .is_some_and(|b| b.field_violations.iter().any(|v| v.field == field_name));
                        if !(status.code() == Code::InvalidArgument && named || through_gateway_too_large) {
                            failures.push(format!("{path} {field_name} ({what}): {:?} {}", status.code(), status.message()));
                        }
                    }
                }
            }
        }
    }
    eprintln!("{cases} bad values over the string fields of {rpcs} RPCs: {} not refused as they should be", failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    // Nothing was written.
    let pool = processes.db.admin_pool().await;
    for table in ["records.patients", "scheduling.clinics", "scheduling.locations", "referrals.services", "referrals.referrals"] {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&pool).await.unwrap();
        assert_eq!(count, 0, "{table}");
    }
}

/// Request bodies that are not a valid message of any RPC: broken gRPC framing and broken protobuf.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    fn framed(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend((payload.len() as u32).to_be_bytes());
        body.extend(payload);
        body
    }
    vec![
        ("no message", Vec::new()),
        ("a cut-off frame header", vec![0, 0, 0]),
        ("a frame shorter than its length", vec![0, 0, 0, 0, 10, 0x0a, 0x01]),
        ("two messages", [framed(0, &[]), framed(0, &[])].concat()),
        ("compression flag 2", framed(2, &[])),
        ("compressed, no encoding named", framed(1, &[0x1f, 0x8b])),
        ("wire type 7", framed(0, &[0x0f, 0x01])),
        ("a group", framed(0, &[0x0b, 0x0c])),
        ("field number 0", framed(0, &[0x00, 0x01])),
        ("a cut-off number", framed(0, &[0x08, 0xff])),
        ("a number of more than 64 bits", framed(0, &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])),
        ("a value longer than the message", framed(0, &[0x0a, 0x64, 0x41])),
        ("field 1 as a number", framed(0, &[0x08, 0x01])),
        ("field 1 as 8 bytes", framed(0, &[0x09, 1, 2, 3, 4, 5, 6, 7, 8])),
        ("field 1 as 4 bytes", framed(0, &[0x0d, 1, 2, 3, 4])),
        ("random bytes", framed(0, &[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff])),
    ]
}

/// Sends `body` as it is to `path` and reads the status the answer carries.
async fn raw_call(channel: &tonic::transport::Channel, path: &str, body: Vec<u8>, token: Option<&str>) -> Status {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        .unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let response = channel.clone().oneshot(request).await.expect("the call is answered");
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = response.into_body().collect().await.expect("the answer's body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Status::from_header_map(&trailers).unwrap_or_else(|| Status::ok("answered"))
}

/// Every RPC (each service directly and through the gateway, and the gateway's own APIs) sent
/// bodies that do not decode: each is `INVALID_ARGUMENT` (an encoding the request names and the
/// server does not accept, `UNIMPLEMENTED`), never `INTERNAL`, and audited as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_invalid_argument_never_internal_directly_and_through_the_gateway() {
    use tonic_types::StatusExt;
    let processes = Processes::start().await;
    let set = prost_types::FileDescriptorSet::decode(pac_proto::FILE_DESCRIPTOR_SET).unwrap();
    let bodies = malformed_bodies();
    let (mut cases, mut failures) = (0, Vec::new());
    let mut through_gateway = 0;
    for file in &set.file {
        let service_component = match file.package() {
            "pac.records.v1" => Some(Component::Records),
            "pac.scheduling.v1" => Some(Component::Scheduling),
            "pac.referrals.v1" => Some(Component::Referrals),
            "pac.access.v1" | "pac.audit.v1" => None,
            _ => continue,
        };
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                // Directly (services), and through the gateway as a role that may call it.
                let mut targets = Vec::new();
                if let Some(component) = service_component {
                    targets.push((component, None));
                }
                if let Some((_, roles)) = pac_gateway::policy::rule(&path) {
                    targets.push((Component::Gateway, Some(token(roles[0]))));
                }
                // The "field 1 as ..." cases are malformed only where field 1 is of another kind.
                let field_1 = find_message(&set, method.input_type()).and_then(|m| m.field.iter().find(|f| f.number() == 1));
                let wire_type_of_1 = field_1.map(|f| match f.r#type() {
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => "8 bytes",
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => "4 bytes",
                    Type::String | Type::Bytes | Type::Message | Type::Group => "bytes",
                    _ => "a number",
                });
                for (component, token) in targets {
                    let channel = processes.channel(component);
                    for (what, body) in bodies.iter().filter(|(what, _)| wire_type_of_1.is_none_or(|w| *what != format!("field 1 as {w}")))
                    {
                        cases += 1;
                        through_gateway += usize::from(component == Component::Gateway);
                        let status = raw_call(&channel, &path, body.clone(), token.as_deref()).await;
                        let reason = status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default();
                        let expected = match *what {
                            "compressed, no encoding named" | "compression flag 2" => status.code() == Code::InvalidArgument,
                            _ => status.code() == Code::InvalidArgument && reason == "REQUEST_MALFORMED",
                        };
                        if !expected {
                            failures.push(format!(
                                "{} {path} ({what}): {:?} {reason} {}",
                                component.name(),
                                status.code(),
                                status.message()
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!("{cases} malformed requests ({through_gateway} through the gateway): {} answered otherwise", failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    // Audited as the caller's mistake, never as a fault of the server.
    let pool = processes.db.admin_pool().await;
    let audited: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, count(*) FROM audit.events GROUP BY outcome").fetch_all(&pool).await.unwrap();
    assert!(audited.iter().all(|(outcome, _)| outcome != "INTERNAL" && outcome != "UNKNOWN"), "{audited:?}");
    assert!(audited.iter().any(|(outcome, n)| outcome == "INVALID_ARGUMENT" && *n > 0), "{audited:?}");
}

/// A read whose body is cut off before its end (a caller gone, a connection closed under load) is
/// `CANCELLED` and audited so, not `OUT_OF_RANGE` "too large".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cut_off_before_its_end_is_cancelled_not_too_large() {
    use tower::ServiceExt;
    let processes = Processes::start().await;
    let channel = processes.channel(Component::Gateway);
    let pool = processes.db.admin_pool().await;
    for n in 0..5 {
        let request_id = format!("cut-off-read-{n}");
        let parts: Vec<Result<http_body::Frame<bytes::Bytes>, Status>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a]))),
            Err(Status::cancelled("the caller went away")),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(parts));
        let request = http::Request::post("http://localhost/pac.records.v1.PatientRecords/SearchPatients")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-request-id", &request_id)
            .header("authorization", format!("Bearer {}", token(Role::Coordinator)))
            .body(tonic::body::Body::new(body))
            .unwrap();
        let _ = channel.clone().oneshot(request).await;
        let recorded = pac_platform::testkit::eventually(Duration::from_secs(5), || {
            let (pool, request_id) = (pool.clone(), request_id.clone());
            async move {
                sqlx::query_scalar::<_, String>("SELECT outcome || ' ' || reason FROM audit.events WHERE request_id = $1")
                    .bind(&request_id)
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .is_some()
            }
        })
        .await;
        assert!(recorded, "the cut-off read {request_id} is audited");
        let outcome: String = sqlx::query_scalar("SELECT outcome || ' ' || reason FROM audit.events WHERE request_id = $1")
            .bind(&request_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(outcome.starts_with("CANCELLED"), "{request_id}: {outcome}");
    }
}

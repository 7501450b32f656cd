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

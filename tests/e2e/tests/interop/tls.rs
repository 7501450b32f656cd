//! The interop component over TLS: the listener with mutual TLS (an engine without a certificate
//! the client CA signed gets no ACK), the gateway called over mutual TLS as its integration
//! account must be when the gateway requires it, and a scheduling feed to a receiving engine over
//! TLS.

use std::time::Duration;

use pac_e2e::gateway::{self, knee_clinic, token};
use pac_e2e::interop::{Pas, Receiver, ack_code, start, start_until};
use pac_gateway::TlsSettings;
use pac_gateway::policy::Role;
use pac_interop::ListenerTls;
use pac_interop::tls::{Identity, acceptor, connector};
use pac_platform::testkit::{registration, with_token};
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::authority::Authority;

const A28: &str = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261205091500||ADT^A28^ADT_A05|T1|P|2.4\rPID|1||KTLS1^^^RR8^PI||Smith^Jo||19900101|F\r";

fn identity((certificate, key): (String, String)) -> Identity {
    Identity { certificate, key }
}

#[tokio::test]
async fn the_listener_over_mutual_tls_answers_only_engines_with_a_signed_certificate() {
    let p = gateway::start().await;
    let ca = Authority::new("trust engines CA");
    let server = identity(ca.issue("localhost"));
    let mllp = start(&p, |config| config.mllp.tls = Some(ListenerTls { identity: server, client_ca: Some(ca.certificate.pem()) })).await;

    // An engine with a certificate the CA signed.
    let engine = identity(ca.issue("pas-engine.rr8"));
    let with_certificate = connector(&ca.certificate.pem(), Some(&engine)).unwrap();
    let mut pas = Pas::connect_tls(mllp, &with_certificate).await.unwrap();
    let ack = String::from_utf8(pas.try_send(A28, Duration::from_secs(5)).await.expect("an ACK")).unwrap();
    assert_eq!(ack_code(&ack), "AA", "{ack}");

    // Without a certificate, with one another CA signed, or in plain text: no ACK, nothing written.
    let without = connector(&ca.certificate.pem(), None).unwrap();
    let stranger = identity(Authority::new("someone else").issue("pas-engine.rr8"));
    let foreign = connector(&ca.certificate.pem(), Some(&stranger)).unwrap();
    let other = A28.replace("|T1|", "|T2|").replace("KTLS1", "KTLS2");
    for tls in [&without, &foreign] {
        // TLS 1.3 finishes the client's side of the handshake before the server has checked the
        // certificate: the refusal shows as the connection closing.
        if let Ok(mut pas) = Pas::connect_tls(mllp, tls).await {
            assert_eq!(pas.try_send(&other, Duration::from_secs(2)).await, None);
        }
    }
    assert_eq!(Pas::connect(mllp).await.try_send(&other, Duration::from_secs(2)).await, None);
    let admin = p.admin_pool().await;
    let patients: i64 = sqlx::query_scalar("SELECT count(*) FROM records.patients").fetch_one(&admin).await.unwrap();
    assert_eq!(patients, 1);
}

#[tokio::test]
async fn the_gateway_over_mutual_tls_and_a_feed_over_tls() {
    let ca = Authority::new("platform CA");
    let (certificate, key) = ca.issue("localhost");
    let tls = TlsSettings { certificate, key, client_ca: Some(ca.certificate.pem()) };
    let mut p = gateway::start_with(move |c| c.tls = Some(tls)).await;
    // Clients reach this gateway over TLS only.
    let channel = Endpoint::from_shared(format!("https://localhost:{}", p.address.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.certificate.pem())))
        .unwrap()
        .connect_lazy();
    p.gateway = channel.clone();
    let clinic = knee_clinic(&p).await;
    let engine_ca = Authority::new("receiving engine CA");
    let receiving = identity(engine_ca.issue("localhost"));
    let receiver = Receiver::start_with(Some(acceptor(&receiving, None).unwrap())).await;
    let ca_file = std::env::temp_dir().join(format!("pac-interop-test-ca-{}.pem", uuid::Uuid::now_v7()));
    std::fs::write(&ca_file, engine_ca.certificate.pem()).unwrap();
    let feed = pac_interop::feeds::Destination {
        name: "rr8-pas".into(),
        address: receiver.address.to_string(),
        organisations: vec!["RR8".into()],
        messages: vec!["S12".into()],
        receiving_application: "PAS".into(),
        receiving_facility: "RR8".into(),
        charset: "8859/1".into(),
        ack_timeout_ms: 2_000,
        tls: Some(pac_interop::feeds::DestinationTls {
            ca_file: ca_file.clone(),
            cert_file: None,
            key_file: None,
            server_name: Some("localhost".into()),
        }),
    };
    // The integration account's calls need a client certificate the gateway's client CA signed.
    let account = identity(ca.issue("interop.pac"));
    let address = p.address;
    let mllp = start_until(&p, p.shutdown.clone(), move |config| {
        config.gateway_url = format!("https://localhost:{}", address.port());
        config.gateway_tls = Some(pac_interop::GatewayTls { ca: ca.certificate.pem(), identity: Some(account) });
        config.feeds = vec![feed];
    })
    .await;
    let ack = String::from_utf8(Pas::connect(mllp).await.try_send(A28, Duration::from_secs(5)).await.expect("an ACK")).unwrap();
    assert_eq!(ack_code(&ack), "AA", "through the gateway over mutual TLS: {ack}");

    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let patient = PatientRecordsClient::new(channel.clone())
        .register_patient(with_token(registration("Tlsfeed"), Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let search = sched::SearchSlotsRequest {
        target: Some(sched::search_slots_request::Target::ClinicId(clinic.id)),
        page_size: 1,
        ..Default::default()
    };
    let mut scheduling = SchedulingClient::new(channel);
    let slot = scheduling.search_slots(with_token(search, Some(&coordinator))).await.unwrap().into_inner().slots.remove(0);
    let book = sched::BookAppointmentRequest {
        target: Some(sched::book_appointment_request::Target::SlotId(slot.id)),
        patient_id: patient.id,
        ..Default::default()
    };
    scheduling.book_appointment(with_token(book, Some(&coordinator))).await.unwrap();
    assert!(receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S12")).await.is_some(), "the S12 over TLS");
    std::fs::remove_file(ca_file).ok();
}

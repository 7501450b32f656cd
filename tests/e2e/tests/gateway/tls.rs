//! The gateway over TLS, with mutual TLS for integration accounts: their calls need a client
//! certificate signed by the configured client CA; other callers need only their token.

use std::time::Duration;

use pac_e2e::gateway::{start_with, token};
use pac_gateway::TlsSettings;
use pac_gateway::policy::Role;
use pac_platform::testkit::with_token;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tonic::Code;

use crate::authority::Authority;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::test]
async fn integration_accounts_need_a_client_certificate() {
    let ca = Authority::new("PAC test CA");
    let (certificate, key) = ca.issue("localhost");
    let tls = TlsSettings { certificate, key, client_ca: Some(ca.certificate.pem()) };
    let p = start_with(move |c| c.tls = Some(tls)).await;

    let channel = |identity: Option<(String, String)>| {
        let mut config = ClientTlsConfig::new().domain_name("localhost").ca_certificate(Certificate::from_pem(ca.certificate.pem()));
        if let Some((certificate, key)) = identity {
            config = config.identity(Identity::from_pem(certificate, key));
        }
        Endpoint::from_shared(format!("https://{}", p.address)).unwrap().tls_config(config).unwrap().connect_lazy()
    };
    let read = |role: Role| {
        with_token(records_pb::GetPatientRequest { id: uuid::Uuid::now_v7().to_string() }, Some(&token(role, Duration::from_secs(60))))
    };

    // Over TLS without a client certificate: people's tokens are enough, an integration account's not.
    let mut plain_tls = PatientRecordsClient::new(channel(None));
    assert_eq!(plain_tls.get_patient(read(Role::Coordinator)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(plain_tls.get_patient(read(Role::Integration)).await.unwrap_err().code(), Code::Unauthenticated);

    // With a certificate the client CA signed, the integration account gets through.
    let mut mutual = PatientRecordsClient::new(channel(Some(ca.issue("engine-1"))));
    assert_eq!(mutual.get_patient(read(Role::Integration)).await.unwrap_err().code(), Code::NotFound);

    // A certificate from another authority does not make a connection; neither does plain text.
    let stranger = Authority::new("Someone else");
    let mut forged = PatientRecordsClient::new(channel(Some(stranger.issue("engine-1"))));
    let refused = forged.get_patient(read(Role::Integration)).await.unwrap_err();
    assert!(format!("{refused:?}").contains("UnknownCA"), "{refused:?}");
    let mut cleartext = PatientRecordsClient::new(Endpoint::from_shared(format!("http://{}", p.address)).unwrap().connect_lazy());
    assert!(cleartext.get_patient(read(Role::Coordinator)).await.is_err());

    // The refusal is on the record with its reason.
    let pool = p.admin_pool().await;
    for _ in 0..100 {
        let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM audit.events WHERE reason <> ''").fetch_all(&pool).await.unwrap();
        if !reasons.is_empty() {
            assert_eq!(reasons, vec!["CLIENT_CERTIFICATE_REQUIRED"]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the refusal was not audited");
}

//! Who may call what: one table, every RPC of every service, default deny. A role also carries the
//! permissions the services check themselves (restricted records, triage), forwarded in the signed
//! caller context.

use std::time::Duration;

use pac_platform::caller::PERMISSION_RESTRICTED_READ;
use pac_platform::{Actor, Caller};

use crate::auth::Identity;

/// Permission to make triage decisions (checked by the referrals service).
pub const PERMISSION_TRIAGE: &str = "referral.triage";
/// Permission to read every organisation's audit records (checked by the audit trail API).
pub const PERMISSION_AUDIT_ALL: &str = "audit.read.all";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Patient access coordinator: registers, books, administers referrals (no triage decisions).
    Coordinator,
    /// Clinician: triage and clock events, reads what care needs.
    Clinician,
    /// An integration engine's system account: registers, updates and merges patients as the trust's
    /// PAS says (the master record), books, follows event streams.
    Integration,
    /// Reads the audit trail of its organisations (calls by their callers), nothing else.
    Auditor,
    /// Reads the whole platform's audit trail, every organisation's and refusals of callers with no
    /// organisation: an explicit, separate role.
    PlatformAuditor,
    /// Directory (clinics, sessions, services), patient merges, the interop component's feeds.
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [Role::Coordinator, Role::Clinician, Role::Integration, Role::Auditor, Role::PlatformAuditor, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Clinician => "clinician",
            Self::Integration => "integration",
            Self::Auditor => "auditor",
            Self::PlatformAuditor => "platform-auditor",
            Self::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Permissions the services check for this role.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            Self::Clinician => &[PERMISSION_TRIAGE, PERMISSION_RESTRICTED_READ],
            Self::Admin => &[PERMISSION_RESTRICTED_READ],
            Self::PlatformAuditor => &[PERMISSION_AUDIT_ALL],
            Self::Coordinator | Self::Integration | Self::Auditor => &[],
        }
    }
}

/// What an RPC touches: patient data (every call is audited), an event stream (audited when it
/// opens and when it closes, with what it delivered: `crate::streams`) or the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    Patient,
    Stream,
    Other,
}

use Data::{Other as O, Patient as P, Stream as S};
use Role::{Admin as A, Auditor as AU, Clinician as CL, Coordinator as CO, Integration as IN, PlatformAuditor as PA};

/// Every RPC, what it touches and the roles that may call it. Anything not listed is refused.
pub const POLICY: &[(&str, Data, &[Role])] = &[
    // Records.
    ("/pac.records.v1.PatientRecords/RegisterPatient", P, &[CO, IN, A]),
    ("/pac.records.v1.PatientRecords/GetPatient", P, &[CO, CL, IN, A]),
    ("/pac.records.v1.PatientRecords/LookupPatient", P, &[CO, CL, IN, A]),
    ("/pac.records.v1.PatientRecords/UpdatePatient", P, &[CO, IN, A]),
    ("/pac.records.v1.PatientRecords/SearchPatients", P, &[CO, CL, A]),
    ("/pac.records.v1.PatientRecords/MatchPatients", P, &[CO, IN, A]),
    ("/pac.records.v1.PatientRecords/MergePatients", P, &[IN, A]),
    ("/pac.records.v1.PatientRecords/UnmergePatient", P, &[A]),
    ("/pac.records.v1.PatientRecords/WatchEvents", S, &[IN]),
    // Scheduling.
    ("/pac.scheduling.v1.Scheduling/CreateLocation", O, &[A]),
    ("/pac.scheduling.v1.Scheduling/CreateClinic", O, &[A]),
    ("/pac.scheduling.v1.Scheduling/GetClinic", O, &[CO, CL, IN, A]),
    ("/pac.scheduling.v1.Scheduling/ListClinics", O, &[CO, CL, IN, A]),
    ("/pac.scheduling.v1.Scheduling/CreateSessionTemplate", O, &[A]),
    ("/pac.scheduling.v1.Scheduling/UpdateSessionTemplate", O, &[A]),
    ("/pac.scheduling.v1.Scheduling/ListSlots", O, &[CO, CL, IN, A]),
    ("/pac.scheduling.v1.Scheduling/SearchSlots", O, &[CO, CL, IN, A]),
    ("/pac.scheduling.v1.Scheduling/HoldSlot", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/BookAppointment", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/RescheduleAppointment", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/CancelAppointment", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/UpdateAppointmentStatus", P, &[CO, CL, IN]),
    ("/pac.scheduling.v1.Scheduling/GetAppointment", P, &[CO, CL, IN]),
    ("/pac.scheduling.v1.Scheduling/ListAppointments", P, &[CO, CL, IN]),
    ("/pac.scheduling.v1.Scheduling/AddToWaitlist", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/ListWaitlist", P, &[CO]),
    ("/pac.scheduling.v1.Scheduling/RespondToOffer", P, &[CO, IN]),
    ("/pac.scheduling.v1.Scheduling/WatchEvents", S, &[IN]),
    // Referrals. Triage decisions also need the triage permission, checked by the service, so a
    // coordinator may call TriageReferral only to record that requested information arrived.
    ("/pac.referrals.v1.Referrals/CreateService", O, &[A]),
    ("/pac.referrals.v1.Referrals/ListServices", O, &[CO, CL, IN, A]),
    ("/pac.referrals.v1.Referrals/CheckEligibility", P, &[CO, CL, IN]),
    ("/pac.referrals.v1.Referrals/CreateReferral", P, &[CO, IN]),
    ("/pac.referrals.v1.Referrals/TriageReferral", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/CancelReferral", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/GetReferral", P, &[CO, CL, IN]),
    ("/pac.referrals.v1.Referrals/ListReferrals", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/GetAllowedActions", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/AddNote", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/CompleteTask", P, &[CO, CL]),
    ("/pac.referrals.v1.Referrals/RecordClockEvent", P, &[CL]),
    ("/pac.referrals.v1.Referrals/WatchEvents", S, &[IN]),
    // Served by the gateway itself.
    ("/pac.access.v1.Access/GetPatientJourney", P, &[CO, CL]),
    ("/pac.access.v1.Access/BookReferralAppointment", P, &[CO, IN]),
    ("/pac.access.v1.Access/GetAppointmentGuide", P, &[CO, CL, IN]),
    ("/pac.audit.v1.AuditTrail/ListAuditEvents", P, &[AU, PA]),
    // The interop component's operator API.
    ("/pac.interop.v1.Interop/ListListenerCounts", O, &[A]),
    ("/pac.interop.v1.Interop/ListFeeds", O, &[A]),
    ("/pac.interop.v1.Interop/ListParkedPatients", P, &[A]),
    ("/pac.interop.v1.Interop/ReleasePatient", P, &[A]),
    ("/pac.interop.v1.Interop/ReplayFeed", O, &[A]),
    ("/pac.interop.v1.Interop/ListReviewTasks", P, &[CO, A]),
    ("/pac.interop.v1.Interop/ResolveReviewTask", P, &[CO, A]),
];

/// The policy line of the RPC at `path` (`/package.Service/Method`).
pub fn rule(path: &str) -> Option<(Data, &'static [Role])> {
    POLICY.iter().find(|(rpc, _, _)| *rpc == path).map(|(_, data, roles)| (*data, *roles))
}

/// Whether `role` may call the RPC at `path`.
pub fn allows(path: &str, role: Role) -> bool {
    rule(path).is_some_and(|(_, roles)| roles.contains(&role))
}

/// Whether the RPC at `path` only reads, so that sending it again cannot change anything: the
/// gateway may retry it when a service is unavailable.
pub fn is_idempotent_read(path: &str) -> bool {
    const READS: [&str; 6] = ["Get", "List", "Search", "Lookup", "Match", "Check"];
    let method = path.rsplit('/').next().unwrap_or_default();
    rule(path).is_some() && READS.iter().any(|read| method.starts_with(read))
}

/// Whether the RPC at `path` searches or lists, and so may cost the database far more than a read
/// of one object: each caller may have only a few in flight at once (`proxy::Limits`).
pub fn is_expensive(path: &str) -> bool {
    const SEARCHES: [&str; 4] = ["Search", "Match", "List", "Find"];
    let method = path.rsplit('/').next().unwrap_or_default();
    rule(path).is_some() && SEARCHES.iter().any(|search| method.starts_with(search))
}

/// The signed caller context forwarded to the services for an authenticated identity.
pub fn caller(identity: &Identity) -> Caller {
    Caller {
        actor: Actor {
            subject: identity.subject.clone(),
            role: identity.role.name().into(),
            organisation: identity.organisations.first().cloned().unwrap_or_default(),
        },
        organisations: identity.organisations.clone(),
        permissions: identity.role.permissions().iter().map(|p| p.to_string()).collect(),
    }
}

/// How long a forwarded caller context stays valid: long enough for a streaming call to open.
pub const CALLER_CONTEXT_TTL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every RPC in the contracts, from the compiled descriptor set.
    fn every_rpc() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(pac_proto::FILE_DESCRIPTOR_SET).unwrap();
        set.file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_string();
                file.service.iter().flat_map(move |service| {
                    let prefix = format!("/{package}.{}/", service.name());
                    service.method.iter().map(move |m| format!("{prefix}{}", m.name()))
                })
            })
            .collect()
    }

    #[test]
    fn the_table_covers_every_rpc_exactly_once() {
        let rpcs = every_rpc();
        for rpc in &rpcs {
            assert_eq!(POLICY.iter().filter(|(path, _, _)| path == rpc).count(), 1, "{rpc} needs exactly one policy line");
        }
        for (path, _, roles) in POLICY {
            assert!(rpcs.contains(&path.to_string()), "{path} is not an RPC");
            assert!(!roles.is_empty(), "{path}: a line with no roles");
        }
    }

    /// Every RPC that streams its answer is audited as a stream (`crate::streams`), and only those.
    #[test]
    fn every_streaming_rpc_is_audited_as_a_stream() {
        let set = prost_types::FileDescriptorSet::decode(pac_proto::FILE_DESCRIPTOR_SET).unwrap();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let streams = method.server_streaming();
                    assert_eq!(rule(&path).map(|r| r.0 == Data::Stream), Some(streams), "{path}");
                }
            }
        }
    }

    #[test]
    fn default_deny_and_role_boundaries() {
        assert!(!allows("/pac.records.v1.PatientRecords/NoSuchMethod", Role::Admin));
        assert!(!allows("", Role::Admin));
        for (path, _, _) in POLICY {
            let audit = *path == "/pac.audit.v1.AuditTrail/ListAuditEvents";
            assert_eq!(allows(path, Role::Auditor), audit, "auditors read the audit trail only: {path}");
            assert_eq!(allows(path, Role::PlatformAuditor), audit, "platform auditors read the audit trail only: {path}");
        }
        assert_eq!(rule("/pac.records.v1.PatientRecords/GetPatient").map(|r| r.0), Some(Data::Patient));
        assert_eq!(rule("/pac.scheduling.v1.Scheduling/SearchSlots").map(|r| r.0), Some(Data::Other));
        assert!(allows("/pac.referrals.v1.Referrals/RecordClockEvent", Role::Clinician));
        assert!(!allows("/pac.referrals.v1.Referrals/RecordClockEvent", Role::Coordinator));
        assert!(allows("/pac.records.v1.PatientRecords/MergePatients", Role::Admin));
        assert!(!allows("/pac.records.v1.PatientRecords/MergePatients", Role::Coordinator));
        assert!(allows("/pac.scheduling.v1.Scheduling/WatchEvents", Role::Integration));
        assert!(!allows("/pac.scheduling.v1.Scheduling/WatchEvents", Role::Clinician));
    }

    #[test]
    fn only_reads_are_retried() {
        assert!(is_idempotent_read("/pac.records.v1.PatientRecords/GetPatient"));
        assert!(is_idempotent_read("/pac.scheduling.v1.Scheduling/SearchSlots"));
        assert!(is_idempotent_read("/pac.referrals.v1.Referrals/CheckEligibility"));
        assert!(!is_idempotent_read("/pac.scheduling.v1.Scheduling/BookAppointment"));
        assert!(!is_idempotent_read("/pac.records.v1.PatientRecords/WatchEvents"));
        assert!(!is_idempotent_read("/pac.access.v1.Access/BookReferralAppointment"));
        assert!(!is_idempotent_read("/pac.records.v1.PatientRecords/GetNothing"));
    }

    #[test]
    fn the_caller_context_carries_role_organisations_and_permissions() {
        let identity = Identity { subject: "c-1".into(), role: Role::Clinician, organisations: vec!["RR8".into(), "RAE".into()] };
        let caller = caller(&identity);
        assert_eq!((caller.actor.role.as_str(), caller.actor.organisation.as_str()), ("clinician", "RR8"));
        assert!(caller.may(PERMISSION_TRIAGE) && caller.may(PERMISSION_RESTRICTED_READ));
        let coordinator = super::caller(&Identity { role: Role::Coordinator, ..identity });
        assert!(!coordinator.may(PERMISSION_TRIAGE));
    }
}

//! The Patient Access Platform's protobuf contracts, compiled for tonic.
//!
//! Package `pac.<area>.v1` lives in module `pac::<area>::v1`. [`FILE_DESCRIPTOR_SET`] serves gRPC
//! reflection.

pub mod pac {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("pac.common.v1");
        }
    }
    pub mod records {
        pub mod v1 {
            tonic::include_proto!("pac.records.v1");
        }
    }
    pub mod scheduling {
        pub mod v1 {
            tonic::include_proto!("pac.scheduling.v1");
        }
    }
    pub mod referrals {
        pub mod v1 {
            tonic::include_proto!("pac.referrals.v1");
        }
    }
    pub mod access {
        pub mod v1 {
            tonic::include_proto!("pac.access.v1");
        }
    }
    pub mod audit {
        pub mod v1 {
            tonic::include_proto!("pac.audit.v1");
        }
    }
    pub mod interop {
        pub mod v1 {
            tonic::include_proto!("pac.interop.v1");
        }
    }
}

pub use pac::access::v1 as access;
pub use pac::audit::v1 as audit;
pub use pac::common::v1 as common;
pub use pac::interop::v1 as interop;
pub use pac::records::v1 as records;
pub use pac::referrals::v1 as referrals;
pub use pac::scheduling::v1 as scheduling;

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pac_descriptor");

//! The interop component: the platform as a peer of trust integration engines. HL7 v2 messages
//! travel over MLLP (`mllp`).

pub mod hl7;
pub mod mllp;

//! The scheduling service. So far: its domain rules — the appointment state machine and how clinic
//! wall-clock times are placed on the timeline. The store, gRPC service and events follow.

pub mod domain;

//! Acknowledgements in original mode: what the listener answers to each message.
//!
//! - **AA**: the message's change is committed (or the message needs none).
//! - **AE**: the message's content is wrong; sending it again will not help (an invalid NHS number,
//!   an unknown merge source, a required field missing, a control id reused with another body).
//! - **AR**: the message could not be handled now (the platform unavailable, over the time budget,
//!   a sending facility the listener does not act for); the sender may send it again.
//!
//! The ACK swaps sender and receiver, carries a new control id, `ACK^<trigger>^ACK`, MSA-2 = the
//! message's control id, and an ERR segment shaped for the message's version with an HL7 table 0357
//! code. It is written in the character set the message came in.

use std::sync::atomic::{AtomicU64, Ordering};

/// The acknowledgement code (MSA-1, HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// AA.
    Accept,
    /// AE.
    Error,
    /// AR.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// HL7 table 0357 (message error condition codes) as used here.
pub mod code {
    pub const SEGMENT_SEQUENCE: u16 = 100;
    pub const REQUIRED_FIELD_MISSING: u16 = 101;
    pub const DATA_TYPE: u16 = 102;
    pub const TABLE_VALUE_NOT_FOUND: u16 = 103;
    pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
    pub const UNSUPPORTED_EVENT: u16 = 201;
    pub const UNSUPPORTED_PROCESSING_ID: u16 = 202;
    pub const UNSUPPORTED_VERSION: u16 = 203;
    pub const UNKNOWN_KEY: u16 = 204;
    pub const DUPLICATE_KEY: u16 = 205;
    pub const RECORD_LOCKED: u16 = 206;
    pub const INTERNAL: u16 = 207;

    /// The code's name in table 0357 (ERR's coded element text).
    pub fn text(code: u16) -> &'static str {
        match code {
            0 => "Message accepted",
            SEGMENT_SEQUENCE => "Segment sequence error",
            REQUIRED_FIELD_MISSING => "Required field missing",
            DATA_TYPE => "Data type error",
            TABLE_VALUE_NOT_FOUND => "Table value not found",
            UNSUPPORTED_MESSAGE_TYPE => "Unsupported message type",
            UNSUPPORTED_EVENT => "Unsupported event code",
            UNSUPPORTED_PROCESSING_ID => "Unsupported processing id",
            UNSUPPORTED_VERSION => "Unsupported version id",
            UNKNOWN_KEY => "Unknown key identifier",
            DUPLICATE_KEY => "Duplicate key identifier",
            RECORD_LOCKED => "Application record locked",
            _ => "Application internal error",
        }
    }
}

/// Where in the message a problem is: segment, its occurrence (from 1), field, and component (0
/// for the whole field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: &'static str,
    pub field: u16,
    pub component: u16,
}

impl Location {
    pub const fn field(segment: &'static str, field: u16) -> Self {
        Self { segment, field, component: 0 }
    }
}

/// Why a message was not accepted: AE or AR, its table 0357 code, where, and a short text for the
/// sender's operators (never patient data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub ack: AckCode,
    pub code: u16,
    pub location: Option<Location>,
    pub text: String,
}

impl Problem {
    /// AE: the content is wrong; do not send it again unchanged.
    pub fn content(code: u16, location: Option<Location>, text: impl Into<String>) -> Self {
        Self { ack: AckCode::Error, code, location, text: text.into() }
    }

    /// AR: not handled now; safe to send again.
    pub fn transient(text: impl Into<String>) -> Self {
        Self { ack: AckCode::Reject, code: code::INTERNAL, location: None, text: text.into() }
    }
}

/// What the ACK echoes of the message it answers: the header fields as read (components
/// decoded), so they can be written back with this side's separators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inbound {
    /// MSH-3 and MSH-4 (HD components).
    pub sending_application: Vec<String>,
    pub sending_facility: Vec<String>,
    /// MSH-5 and MSH-6.
    pub receiving_application: Vec<String>,
    pub receiving_facility: Vec<String>,
    /// MSH-9.2.
    pub trigger: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11.1, "P" when absent.
    pub processing_id: String,
    /// MSH-12.1.
    pub version: String,
    /// MSH-18, as the message named it (empty for the listener's default).
    pub charset_name: String,
}

/// A fresh control id for an ACK: at most 20 characters (MSH-10 is ST(20) in v2.5), unique within
/// this process and, with a random part drawn at start, across processes and restarts.
pub fn new_control_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 1_000_000_000;
    format!("PAC{process:08X}{n:09}")
}

/// HL7 escapes for text written into a field with the standard separators `|^~\&`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn hd(components: &[String]) -> String {
    let mut parts: Vec<String> = components.iter().map(|c| escape(c)).collect();
    while parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    parts.join("^")
}

/// Versions whose ERR segment is the older ELD form (ERR-1) rather than ERR-2..4.
fn has_eld_err(version: &str) -> bool {
    matches!(version, "2.1" | "2.2" | "2.3" | "2.3.1" | "2.4")
}

/// The versions this listener accepts (the UK ITK ADT profile is 2.4; 2.3 to 2.5.1 are read).
pub fn is_supported_version(version: &str) -> bool {
    matches!(version, "2.3" | "2.3.1" | "2.4" | "2.5" | "2.5.1")
}

/// The ACK for `inbound` (segments ended by `\r`), as text: `problem` None is AA.
pub fn build(inbound: &Inbound, problem: Option<&Problem>, now: chrono::DateTime<chrono::Utc>) -> String {
    let version = if is_supported_version(&inbound.version) { inbound.version.as_str() } else { "2.4" };
    // MSH-9 has three components (type, trigger, structure) from 2.3.1; 2.3's has two.
    let message_type = match (inbound.trigger.as_str(), version) {
        ("", _) => "ACK".to_string(),
        (trigger, "2.3") => format!("ACK^{}", escape(trigger)),
        (trigger, _) => format!("ACK^{}^ACK", escape(trigger)),
    };
    let processing = if inbound.processing_id.is_empty() { "P" } else { inbound.processing_id.as_str() };
    let mut ack = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||{}|{}|{}|{}",
        hd(&inbound.receiving_application),
        hd(&inbound.receiving_facility),
        hd(&inbound.sending_application),
        hd(&inbound.sending_facility),
        now.format("%Y%m%d%H%M%S"),
        message_type,
        new_control_id(),
        escape(processing),
        version,
    );
    if !inbound.charset_name.is_empty() {
        // MSH-13 to MSH-17 empty, MSH-18 as the message named it.
        ack.push_str("||||||");
        ack.push_str(&escape(&inbound.charset_name));
    }
    ack.push('\r');
    let code = problem.map_or(AckCode::Accept, |p| p.ack);
    ack.push_str(&format!("MSA|{}|{}", code.as_str(), escape(&inbound.control_id)));
    if let Some(problem) = problem
        && has_eld_err(version)
    {
        // MSA-3, text message, up to 2.4.
        ack.push_str(&format!("|{}", escape(&problem.text)));
    }
    ack.push('\r');
    if let Some(problem) = problem {
        ack.push_str(&err_segment(version, problem));
        ack.push('\r');
    }
    ack
}

fn err_segment(version: &str, problem: &Problem) -> String {
    let coded = |separator: char| format!("{}{separator}{}{separator}HL70357", problem.code, code::text(problem.code));
    if has_eld_err(version) {
        // ERR-1, ELD: segment ^ sequence ^ field position ^ code (CE, as sub-components).
        let (segment, sequence, field) = match &problem.location {
            Some(l) => (l.segment, "1".to_string(), l.field.to_string()),
            None => ("", String::new(), String::new()),
        };
        format!("ERR|{segment}^{sequence}^{field}^{}", coded('&'))
    } else {
        // ERR-2 ERL (segment ^ sequence ^ field ^ repetition ^ component), ERR-3 CWE, ERR-4 severity,
        // ERR-8 user message.
        let location = match &problem.location {
            Some(l) if l.component > 0 => format!("{}^1^{}^1^{}", l.segment, l.field, l.component),
            Some(l) => format!("{}^1^{}", l.segment, l.field),
            None => String::new(),
        };
        format!("ERR||{location}|{}|E||||{}", coded('^'), escape(&problem.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(version: &str) -> Inbound {
        Inbound {
            sending_application: vec!["PAS".into()],
            sending_facility: vec!["RR8".into()],
            receiving_application: vec!["PAC".into()],
            receiving_facility: vec!["PAC".into()],
            trigger: "A28".into(),
            control_id: "MSG|0001".into(),
            processing_id: "P".into(),
            version: version.into(),
            charset_name: "8859/1".into(),
        }
    }

    #[test]
    fn an_aa_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let ack = build(&inbound("2.4"), None, chrono::Utc::now());
        let segments: Vec<&str> = ack.split('\r').collect();
        let msh: Vec<&str> = segments[0].split('|').collect();
        assert_eq!((msh[2], msh[3], msh[4], msh[5]), ("PAC", "PAC", "PAS", "RR8"));
        assert_eq!(msh[8], "ACK^A28^ACK");
        assert!(msh[9].len() <= 20 && msh[9] != "MSG|0001");
        assert_eq!((msh[10], msh[11], msh[17]), ("P", "2.4", "8859/1"));
        assert_eq!(segments[1], "MSA|AA|MSG\\F\\0001");
        assert_eq!(segments.len(), 3, "MSH, MSA and the final terminator: {ack:?}");
    }

    #[test]
    fn err_is_shaped_for_the_version() {
        let problem = Problem::content(code::DATA_TYPE, Some(Location::field("PID", 3)), "NHS number is invalid");
        let old = build(&inbound("2.4"), Some(&problem), chrono::Utc::now());
        assert!(old.contains("\rMSA|AE|MSG\\F\\0001|NHS number is invalid\r"), "{old:?}");
        assert!(old.contains("\rERR|PID^1^3^102&Data type error&HL70357\r"), "{old:?}");
        let new = build(&inbound("2.5"), Some(&problem), chrono::Utc::now());
        assert!(new.contains("\rMSA|AE|MSG\\F\\0001\r"), "{new:?}");
        assert!(new.contains("\rERR||PID^1^3|102^Data type error^HL70357|E||||NHS number is invalid\r"), "{new:?}");
        let two_three = build(&inbound("2.3"), Some(&Problem::transient("platform unavailable")), chrono::Utc::now());
        assert!(two_three.contains("|ACK^A28|"), "{two_three:?}");
        assert!(two_three.contains("\rMSA|AR|"), "{two_three:?}");
    }

    #[test]
    fn control_ids_are_unique_and_short() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_control_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() <= 20));
    }
}

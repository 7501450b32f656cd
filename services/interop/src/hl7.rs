//! Reading an HL7 v2 message as it arrives (bytes in the sender's character set) and writing the
//! acknowledgement that goes back in the same character set.
//!
//! The message's header (MSH) is read from the bytes before anything is decoded: its first fields
//! are ASCII in every character set HL7 allows here, and MSH-18 names the set the rest is in.
//! Parsing is `hl7-parser`'s (segments, fields, repetitions, components, sub-components, escapes);
//! this module adds the character sets, segment terminators, and the HL7 null.

use encoding_rs::{Encoding, ISO_8859_15, UTF_8, WINDOWS_1252};

/// A character set a message may name in MSH-18 (HL7 table 0211), or a listener's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Ascii,
    /// ISO 8859-1 (Latin-1).
    Latin1,
    /// ISO 8859-15 (Latin-9, with the euro sign).
    Latin9,
    Utf8,
    /// Windows-1252: not in table 0211, but what many trust systems send with MSH-18 empty.
    Windows1252,
}

impl Charset {
    /// The set named in MSH-18; `None` for a name this listener does not read.
    pub fn from_msh18(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "ASCII" => Some(Self::Ascii),
            "8859/1" => Some(Self::Latin1),
            "8859/15" => Some(Self::Latin9),
            "UNICODE UTF-8" | "UTF-8" => Some(Self::Utf8),
            "CP1252" | "WINDOWS-1252" => Some(Self::Windows1252),
            _ => None,
        }
    }

    /// A listener's default, from configuration (`ascii`, `8859/1`, `8859/15`, `utf-8`, `windows-1252`).
    pub fn from_setting(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "windows-1252" | "cp1252" => Some(Self::Windows1252),
            "utf-8" | "utf8" => Some(Self::Utf8),
            other => Self::from_msh18(other),
        }
    }

    fn encoding(self) -> &'static Encoding {
        match self {
            // Latin-1's printable characters are Windows-1252's; the codes 0x80-0x9F (controls in
            // Latin-1) never appear in text a PAS sends.
            Self::Ascii | Self::Latin1 | Self::Windows1252 => WINDOWS_1252,
            Self::Latin9 => ISO_8859_15,
            Self::Utf8 => UTF_8,
        }
    }

    /// `bytes` as text; `None` when they are not text in this set.
    pub fn decode(self, bytes: &[u8]) -> Option<String> {
        if self == Self::Ascii && !bytes.is_ascii() {
            return None;
        }
        let (text, had_errors) = self.encoding().decode_without_bom_handling(bytes);
        (!had_errors).then(|| text.into_owned())
    }

    /// `text` in this set; a character the set cannot hold becomes `?` (never an HTML-style
    /// reference: `&` is a separator in HL7).
    pub fn encode(self, text: &str) -> Vec<u8> {
        if self == Self::Ascii {
            return text.chars().map(|c| if c.is_ascii() { c as u8 } else { b'?' }).collect();
        }
        let mut encoder = self.encoding().new_encoder();
        let mut out = Vec::with_capacity(text.len() + 8);
        let mut rest = text;
        loop {
            out.reserve(rest.len() + 8);
            let (result, read) = encoder.encode_from_utf8_to_vec_without_replacement(rest, &mut out, true);
            rest = &rest[read..];
            match result {
                encoding_rs::EncoderResult::InputEmpty => return out,
                encoding_rs::EncoderResult::Unmappable(_) => out.push(b'?'),
                encoding_rs::EncoderResult::OutputFull => {}
            }
        }
    }
}

/// Why a message could not be read at all (before its content is looked at).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the message does not start with an MSH segment")]
    NoHeader,
    #[error("MSH-18 names a character set this listener does not read")]
    UnknownCharset(String),
    #[error("the message is not text in its character set")]
    NotText,
    #[error("the message's structure cannot be parsed")]
    Unparsable,
}

/// The fields of MSH, by their number, from the raw header bytes (MSH-1 is the separator itself).
fn raw_header_field(bytes: &[u8], number: usize) -> Option<&[u8]> {
    if bytes.len() < 4 || &bytes[..3] != b"MSH" {
        return None;
    }
    let separator = bytes[3];
    let end = bytes.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(bytes.len());
    // Split "MSH|^~\&|A|B" on the separator: ["MSH", "^~\&", "A", "B"] is MSH-0 (name), MSH-2, MSH-3...
    let fields: Vec<&[u8]> = bytes[..end].split(|&b| b == separator).collect();
    match number {
        1 => Some(&bytes[3..4]),
        n => fields.get(n - 1).copied(),
    }
}

/// Component `component` of MSH-`field` read from the raw header bytes, for answering a message
/// that cannot be parsed ("" when absent; bytes outside ASCII become U+FFFD).
pub fn raw_header_text(bytes: &[u8], field: usize, component: usize) -> String {
    let Some(value) = raw_header_field(bytes, field) else { return String::new() };
    let separator = bytes.get(4).copied().unwrap_or(b'^');
    let part = value.split(|&b| b == separator).nth(component - 1).unwrap_or_default();
    String::from_utf8_lossy(part).trim().to_string()
}

/// The character set a message is in: MSH-18's, else the listener's default.
pub fn charset_of(bytes: &[u8], default: Charset) -> Result<Charset, ReadError> {
    let named = raw_header_field(bytes, 1).ok_or(ReadError::NoHeader).map(|_| raw_header_field(bytes, 18))?;
    let name = named.map(|n| String::from_utf8_lossy(n).trim().to_string()).unwrap_or_default();
    if name.is_empty() {
        return Ok(default);
    }
    // MSH-18 may repeat (further sets for other fields); the first is the message's.
    let first = name.split('~').next().unwrap_or_default();
    Charset::from_msh18(first).ok_or(ReadError::UnknownCharset(first.to_string()))
}

/// The message as text in its character set, with its segments ended by `\r` (`\n` and `\r\n` are
/// taken as segment ends too when `lenient_newlines`).
pub fn decode(bytes: &[u8], default: Charset, lenient_newlines: bool) -> Result<(String, Charset), ReadError> {
    let charset = charset_of(bytes, default)?;
    let text = charset.decode(bytes).ok_or(ReadError::NotText)?;
    let text = if lenient_newlines { text.replace("\r\n", "\r").replace('\n', "\r") } else { text };
    Ok((text, charset))
}

/// A parsed message, with the accessors the event handlers read fields through. Positions are
/// HL7's: fields from 1 (MSH-1 is the field separator), repetitions, components and
/// sub-components from 1.
pub struct Message<'m> {
    parsed: hl7_parser::Message<'m>,
}

/// A field's value as the sender meant it: absent (an empty field: leave what is stored
/// unchanged), null (`""`: clear what is stored), or a value, its escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Absent,
    Null,
    Text(String),
}

impl Value {
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'m> Message<'m> {
    pub fn parse(text: &'m str) -> Result<Self, ReadError> {
        let parsed = hl7_parser::Message::parse(text.trim_end_matches(['\r', '\n'])).map_err(|_| ReadError::Unparsable)?;
        if parsed.segments.first().map(|s| s.name) != Some("MSH") {
            return Err(ReadError::NoHeader);
        }
        Ok(Self { parsed })
    }

    /// Segments named `name`, in order.
    pub fn segments(&self, name: &str) -> impl Iterator<Item = Segment<'_, 'm>> {
        let separators = &self.parsed.separators;
        self.parsed.segments.iter().filter(move |s| s.name == name).map(move |segment| Segment { segment, separators })
    }

    pub fn segment(&self, name: &str) -> Option<Segment<'_, 'm>> {
        self.segments(name).next()
    }

    /// MSH-`field`.`component` as text ("" when absent).
    pub fn header(&self, field: usize, component: usize) -> String {
        self.segment("MSH").and_then(|msh| msh.get(field, 1, component, 1).text().map(str::to_string)).unwrap_or_default()
    }
}

/// One segment of a [`Message`].
#[derive(Clone, Copy)]
pub struct Segment<'a, 'm> {
    segment: &'a hl7_parser::message::Segment<'m>,
    separators: &'a hl7_parser::message::Separators,
}

impl Segment<'_, '_> {
    /// How many repetitions field `field` has (0 when it is empty).
    pub fn repetitions(&self, field: usize) -> usize {
        match self.segment.field(field) {
            Some(f) if !f.raw_value().is_empty() => f.repeats.len(),
            _ => 0,
        }
    }

    /// Field `field`, repetition `repetition`, component `component`, sub-component `sub`.
    pub fn get(&self, field: usize, repetition: usize, component: usize, sub: usize) -> Value {
        let Some(f) = self.segment.field(field) else { return Value::Absent };
        if repetition == 1 && f.raw_value() == "\"\"" {
            return Value::Null;
        }
        let Some(r) = f.repeats.get(repetition - 1) else { return Value::Absent };
        let Some(c) = r.components.get(component - 1) else { return Value::Absent };
        let raw = match c.subcomponents.get(sub - 1) {
            Some(s) => s.raw_value(),
            None => return Value::Absent,
        };
        match raw {
            "" => Value::Absent,
            "\"\"" => Value::Null,
            raw => Value::Text(unescape(raw, self.separators)),
        }
    }

    /// Field `field`, component `component` of its first repetition, as text ("" when absent or null).
    pub fn text(&self, field: usize, component: usize) -> String {
        self.get(field, 1, component, 1).text().unwrap_or_default().to_string()
    }
}

/// `raw` with its HL7 escape sequences decoded: `\F\ \S\ \T\ \R\ \E\` the separators, `\.br\` a
/// line break, `\Xhh..\` the bytes given (as UTF-8 when they are, else one character per byte);
/// formatting sequences (`\H\`, `\N\`, ...) are dropped and an unterminated one is kept as written.
/// (hl7-parser's own decoder indexes bytes by character count and panics on non-ASCII text.)
pub fn unescape(raw: &str, separators: &hl7_parser::message::Separators) -> String {
    let escape = separators.escape;
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + escape.len_utf8()..];
        let Some(end) = after.find(escape) else {
            out.push_str(&rest[start..]);
            return out;
        };
        match &after[..end] {
            "F" => out.push(separators.field),
            "S" => out.push(separators.component),
            "T" => out.push(separators.subcomponent),
            "R" => out.push(separators.repetition),
            "E" => out.push(escape),
            ".br" => out.push('\n'),
            hex if hex.starts_with('X') && hex.len() % 2 == 1 && hex[1..].bytes().all(|b| b.is_ascii_hexdigit()) => {
                let bytes: Vec<u8> = (1..hex.len()).step_by(2).filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
                match String::from_utf8(bytes) {
                    Ok(text) => out.push_str(&text),
                    Err(error) => out.extend(error.into_bytes().into_iter().map(char::from)),
                }
            }
            _ => {}
        }
        rest = &after[end + escape.len_utf8()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A28^ADT_A05|MSG0001|P|2.4|||AL|NE||8859/1\r\
        EVN|A28|20261204101500\r\
        PID|1||9434765919^^^NHS^NH~K123456^^^RR8^PI||O'Brien^S\\T\\J\\R\\Seán^^^Mr||19800101|M|||1 High St^^Leeds^^LS1 4AB||\"\"|\r\
        ZXX|ignored|fields\r";

    #[test]
    fn fields_repetitions_components_escapes_and_null() {
        let message = Message::parse(ADT).unwrap();
        assert_eq!(message.header(9, 2), "A28");
        assert_eq!(message.header(10, 1), "MSG0001");
        assert_eq!(message.header(18, 1), "8859/1");
        let pid = message.segment("PID").unwrap();
        assert_eq!(pid.repetitions(3), 2);
        assert_eq!(pid.get(3, 2, 1, 1).text(), Some("K123456"));
        assert_eq!(pid.get(3, 1, 5, 1).text(), Some("NH"));
        assert_eq!(pid.text(5, 1), "O'Brien");
        assert_eq!(pid.text(5, 2), "S&J~Seán");
        assert_eq!(pid.get(13, 1, 1, 1), Value::Null);
        assert_eq!(pid.get(14, 1, 1, 1), Value::Absent);
        assert_eq!(pid.get(40, 1, 1, 1), Value::Absent);
    }

    #[test]
    fn character_sets_by_msh18_with_a_default() {
        let bytes = Charset::Latin1.encode(ADT);
        assert!(bytes.contains(&0xE1));
        let (text, charset) = decode(&bytes, Charset::Utf8, false).unwrap();
        assert_eq!((charset, text.contains("Seán")), (Charset::Latin1, true));
        let unnamed = ADT.replace("|8859/1\r", "|\r");
        assert_eq!(charset_of(unnamed.as_bytes(), Charset::Windows1252).unwrap(), Charset::Windows1252);
        let unknown = ADT.replace("8859/1", "ISO IR87");
        assert!(matches!(charset_of(unknown.as_bytes(), Charset::Utf8), Err(ReadError::UnknownCharset(_))));
        assert_eq!(decode(b"PID|1", Charset::Utf8, false).unwrap_err(), ReadError::NoHeader);
        let bad_utf8 = [&ADT.replace("8859/1", "UNICODE UTF-8").as_bytes()[..60], &[0xFF, 0xFE]].concat();
        assert_eq!(decode(&bad_utf8, Charset::Utf8, false).unwrap_err(), ReadError::NotText);
        assert_eq!(Charset::Ascii.decode("é".as_bytes()), None);
        assert_eq!(Charset::Latin9.encode("€"), vec![0xA4]);
    }

    #[test]
    fn escapes_are_decoded_in_any_text() {
        let separators = hl7_parser::message::Separators::default();
        let cases = [
            ("S\\T\\J", "S&J"),
            ("a\\F\\b\\S\\c\\R\\d\\E\\e", "a|b^c~d\\e"),
            ("line\\.br\\two", "line\ntwo"),
            ("\\X41C3A9\\", "Aé"),
            ("\\XE9\\", "é"),
            ("\\H\\bold\\N\\", "bold"),
            ("ê\\T\\é", "ê&é"),
            ("ünterminated \\F", "ünterminated \\F"),
        ];
        for (raw, decoded) in cases {
            assert_eq!(unescape(raw, &separators), decoded, "{raw}");
        }
    }

    #[test]
    fn newline_terminated_segments_when_lenient() {
        let with_newlines = ADT.replace('\r', "\r\n");
        let (text, _) = decode(with_newlines.as_bytes(), Charset::Utf8, true).unwrap();
        let message = Message::parse(&text).unwrap();
        assert_eq!(message.segment("PID").unwrap().text(5, 1), "O'Brien");
    }
}

//! Public real-world HL7 v2 messages (`../shared/interop-samples/`, beside the repository) as extra
//! parser vectors: `\n` segment ends, v2.4 and v2.8 headers, UTF-8 names, deep components.

use pac_interop::hl7::{Charset, Message, decode};

#[test]
fn public_samples_parse() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/interop-samples");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        eprintln!("no samples at {}: skipped", folder.display());
        return;
    };
    let mut read = 0;
    for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "hl7")) {
        let bytes = std::fs::read(entry.path()).unwrap();
        let (text, _) = decode(&bytes, Charset::Utf8, true).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        let message = Message::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        assert!(!message.header(9, 1).is_empty(), "{}: no message type", entry.path().display());
        assert!(!message.header(10, 1).is_empty(), "{}: no control id", entry.path().display());
        assert!(message.segment("PID").is_some(), "{}: no PID", entry.path().display());
        read += 1;
    }
    eprintln!("{read} public samples parsed");
    assert!(read > 0);
}

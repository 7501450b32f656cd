//! MLLP framing under any split and coalescing of reads, and against random bytes.

use bytes::BytesMut;
use pac_interop::mllp::{Mllp, frame};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Message bytes as engines send them: anything but the block characters.
fn message() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_map(|b| if b == 0x0B || b == 0x1C { b'x' } else { b }), 0..400)
}

/// Feeds `stream` to a decoder in reads cut at `cuts`; the frames decoded, or the first error.
fn decode_in_reads(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut codec = Mllp::new(max);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort();
    let mut at = 0;
    for point in points {
        buffer.extend_from_slice(&stream[at..point]);
        at = point;
        while let Some(frame) = codec.decode(&mut buffer).map_err(|e| e.to_string())? {
            frames.push(frame.to_vec());
        }
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn any_split_and_coalescing_of_frames_yields_the_same_messages(
        messages in proptest::collection::vec(message(), 1..12),
        noise in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' ')], 0..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut stream = Vec::new();
        for message in &messages {
            stream.extend_from_slice(&noise);
            stream.extend(frame(message));
        }
        prop_assert_eq!(decode_in_reads(&stream, &cuts, 1 << 20).unwrap(), messages);
    }

    #[test]
    fn random_bytes_never_panic_and_decode_the_same_however_they_are_read(
        bytes in proptest::collection::vec(any::<u8>(), 0..2_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let whole = decode_in_reads(&bytes, &[], 256);
        let in_reads = decode_in_reads(&bytes, &cuts, 256);
        prop_assert_eq!(whole.is_ok(), in_reads.is_ok());
        if let (Ok(whole), Ok(in_reads)) = (&whole, &in_reads) {
            prop_assert_eq!(whole, in_reads);
        }
        if let Ok(frames) = in_reads {
            for frame in frames {
                prop_assert!(frame.len() <= 256);
                prop_assert!(!frame.contains(&0x0B));
            }
        }
    }
}

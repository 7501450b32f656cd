//! List pagination (AIP-158): bounded page sizes and opaque page tokens bound to the query they
//! came from, so a token cannot be replayed against a different query.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use uuid::Uuid;

use crate::error::{ApiError, FieldViolation};

/// The page size to use: `default` for 0, an error outside 1..=`max`.
pub fn page_size(requested: i32, default: i64, max: i64) -> Result<i64, FieldViolation> {
    match requested {
        0 => Ok(default),
        n if n < 0 || i64::from(n) > max => {
            Err(FieldViolation::new("page_size", "PAGE_SIZE_INVALID", format!("must be between 1 and {max} (0 means {default})")))
        }
        n => Ok(i64::from(n)),
    }
}

/// A fingerprint of the query a token belongs to.
pub fn fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

/// A token for the page starting at `offset`.
pub fn encode(offset: i64, query: [u8; 8]) -> String {
    let mut bytes = query.to_vec();
    bytes.extend_from_slice(&offset.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The offset in a token; 0 for an empty token.
pub fn decode(token: &str, query: [u8; 8]) -> Result<i64, ApiError> {
    if token.is_empty() {
        return Ok(0);
    }
    let invalid = invalid_token;
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != 16 || bytes[..8] != query {
        return Err(invalid());
    }
    let offset = i64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    if offset < 0 { Err(invalid()) } else { Ok(offset) }
}

/// The error for a token that is not from this query.
pub fn invalid_token() -> ApiError {
    ApiError::invalid_field("page_token", "PAGE_TOKEN_INVALID", "is not a token from a previous page of this query")
}

/// A token for the page after `key` (keyset paging: the sort key of the last item returned).
pub fn encode_key(key: &[u8], query: [u8; 8]) -> String {
    let mut bytes = query.to_vec();
    bytes.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key in a keyset token; `None` for an empty token.
pub fn decode_key(token: &str, query: [u8; 8]) -> Result<Option<Vec<u8>>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid_token())?;
    if bytes.len() <= 8 || bytes[..8] != query {
        return Err(invalid_token());
    }
    Ok(Some(bytes[8..].to_vec()))
}

/// A token for the page after a row: its sort value (`N` bytes, big-endian, so that byte order is
/// sort order) and its id, the tie-break.
pub fn encode_position<const N: usize>(sort: [u8; N], id: Uuid, query: [u8; 8]) -> String {
    let mut key = sort.to_vec();
    key.extend_from_slice(id.as_bytes());
    encode_key(&key, query)
}

/// The row position in a token from [`encode_position`]; `None` for an empty token.
pub fn decode_position<const N: usize>(token: &str, query: [u8; 8]) -> Result<Option<([u8; N], Uuid)>, ApiError> {
    let Some(key) = decode_key(token, query)? else { return Ok(None) };
    let (sort, id) = key.split_at_checked(N).ok_or_else(invalid_token)?;
    let id = Uuid::from_slice(id).map_err(|_| invalid_token())?;
    Ok(Some((sort.try_into().map_err(|_| invalid_token())?, id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bind_to_their_query() {
        let (query, other) = (fingerprint(&["a"]), fingerprint(&["b"]));
        let id = Uuid::now_v7();
        let token = encode_position(42_i64.to_be_bytes(), id, query);
        assert_eq!(decode_position::<8>(&token, query).unwrap(), Some((42_i64.to_be_bytes(), id)));
        assert_eq!(decode_position::<8>("", query).unwrap(), None);
        assert!(decode_position::<8>(&token, other).is_err());
        assert!(decode_position::<4>(&token, query).is_err());
        assert!(decode_position::<30>(&token, query).is_err());
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let query = fingerprint(&["smith", "1970-01-01"]);
        let token = encode(40, query);
        assert_eq!(decode(&token, query).unwrap(), 40);
        assert!(decode(&token, fingerprint(&["jones"])).is_err());
        assert!(decode("not-a-token", query).is_err());
        assert_eq!(decode("", query).unwrap(), 0);
    }

    #[test]
    fn keyset_tokens_round_trip() {
        let query = fingerprint(&["clinic"]);
        let token = encode_key(b"0123456789abcdef", query);
        assert_eq!(decode_key(&token, query).unwrap().unwrap(), b"0123456789abcdef");
        assert!(decode_key(&token, fingerprint(&["other"])).is_err());
        assert_eq!(decode_key("", query).unwrap(), None);
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(0, 20, 100).unwrap(), 20);
        assert_eq!(page_size(100, 20, 100).unwrap(), 100);
        assert!(page_size(101, 20, 100).is_err());
        assert!(page_size(-1, 20, 100).is_err());
    }
}

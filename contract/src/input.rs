//! Decoding of every payload that crosses the trust boundary: activity inputs, workflow
//! inputs and signals, public and internal alike.
//!
//! The SDK's own decoder fails a payload it cannot read (too deep for serde_json's recursion
//! limit, not JSON at all) with an untyped, retryable error, before any code of ours runs: the
//! activity is then retried forever and a workflow task fails on every replay. So every entry
//! point takes the raw payload ([`RawValue`]) and decodes it here, where anything malformed,
//! huge or deep is refused at once with a non-retryable `INVALID_CONFIGURATION` that names
//! the limit and never repeats the content.

use serde::de::DeserializeOwned;
use serde_json::Value;
use temporalio_common::data_converters::{PayloadConverter, RawValue};

use crate::error::{ComputeError, Result};

/// The largest payload accepted, serialised.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;
/// The most items of one array or entries of one object.
pub const MAX_ITEMS: usize = 1000;
/// The longest string (or object key) accepted, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Encodings read as JSON: the default converter of every SDK (`json/plain`) and the one Go
/// and Java use for proto messages (`json/protobuf`, proto3's JSON mapping).
const JSON_ENCODINGS: [&[u8]; 2] = [b"json/plain", b"json/protobuf"];

/// Turns one raw payload into a JSON value within the limits. `what` names the surface in
/// messages (`input`, `signal attach-callback`).
pub fn decode(raw: &RawValue, what: &str) -> Result<Value> {
    let payload = match raw.payloads.as_slice() {
        [] => return Ok(Value::Null),
        [one] => one,
        _ => {
            return Err(ComputeError::invalid(format!(
                "{what}: must be one JSON value, got {} arguments",
                raw.payloads.len()
            )));
        }
    };
    match payload.metadata.get("encoding").map(Vec::as_slice) {
        // Some SDKs send `null` as an empty payload with `binary/null`.
        Some(b"binary/null") => return Ok(Value::Null),
        Some(b"json/protobuf") => check_message_type(payload.metadata.get("messageType"), what)?,
        Some(e) if JSON_ENCODINGS.contains(&e) => {}
        None if payload.data.is_empty() => return Ok(Value::Null),
        _ => {
            return Err(ComputeError::invalid(format!(
                "{what}: unsupported payload encoding (send JSON: json/plain or json/protobuf)"
            )));
        }
    }
    decode_bytes(&payload.data, what)
}

/// The package whose messages a `json/protobuf` payload may name (`contract/proto/`).
pub const PROTO_PACKAGE: &str = "compute.v1.";

/// A `json/protobuf` payload is read as JSON when its `messageType` (if any) is a message of
/// [`PROTO_PACKAGE`]: another package's message is not this contract, whatever its JSON.
fn check_message_type(message_type: Option<&Vec<u8>>, what: &str) -> Result<()> {
    let Some(name) = message_type else {
        return Ok(());
    };
    let known = std::str::from_utf8(name).is_ok_and(|n| {
        n.strip_prefix(PROTO_PACKAGE).is_some_and(|m| {
            !m.is_empty() && m.len() <= 100 && m.chars().all(|c| c.is_ascii_alphanumeric())
        })
    });
    if known {
        Ok(())
    } else {
        // The name is the caller's: only its length is echoed.
        Err(ComputeError::invalid(format!(
            "{what}: a json/protobuf payload must carry a message of package compute.v1 \
             (messageType compute.v1.<Message>, see contract/proto/); got a messageType of {} \
             bytes outside it",
            name.len()
        )))
    }
}

/// Decodes JSON text within the limits (see the module documentation).
pub fn decode_bytes(data: &[u8], what: &str) -> Result<Value> {
    if data.len() > MAX_INPUT_BYTES {
        return Err(ComputeError::invalid(format!(
            "{what}: is {} bytes; at most {MAX_INPUT_BYTES} bytes (256 KiB) are accepted",
            data.len()
        )));
    }
    // Before parsing: a document deeper than serde_json's recursion limit would otherwise be
    // refused with a message of the decoder's, and one within it still costs a deep parse.
    if nesting_depth(data) > MAX_DEPTH {
        return Err(too_deep(what));
    }
    let value: Value = serde_json::from_slice(data).map_err(|e| {
        // The decoder's message can quote the input; only its position is kept.
        ComputeError::invalid(format!(
            "{what}: is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    check_bounds(&value, what)?;
    Ok(value)
}

/// Checks an already decoded value against the limits (for values that arrive decoded, as a
/// workflow's own state does).
pub fn check_bounds(value: &Value, what: &str) -> Result<()> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(too_deep(what));
        }
        match v {
            Value::String(s) if s.len() > MAX_STRING_BYTES => return Err(too_long(what)),
            Value::Array(items) => {
                if items.len() > MAX_ITEMS {
                    return Err(too_many(what));
                }
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                if map.len() > MAX_ITEMS {
                    return Err(too_many(what));
                }
                if map.keys().any(|k| k.len() > MAX_STRING_BYTES) {
                    return Err(too_long(what));
                }
                stack.extend(map.values().map(|i| (i, depth + 1)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Decodes a payload into an internal message type: shape errors are refused like any other
/// bad input (the serde message names the field, and carries no value of a string type).
pub fn decode_as<T: DeserializeOwned>(raw: &RawValue, what: &str) -> Result<T> {
    let value = decode(raw, what)?;
    serde_json::from_value(value).map_err(|e| {
        ComputeError::invalid(format!(
            "{what}: does not have the expected shape ({})",
            shape_error(&e)
        ))
    })
}

/// A serde error without any quoted input: serde_json quotes unknown variants and invalid
/// values (`invalid value: string "..."`), which may be anything a caller sent.
fn shape_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(['"', '`']) {
        Some(i) => format!("{}…", text[..i].trim_end()),
        None => text,
    }
}

/// A payload holding `value` as `json/plain`, as every activity and signal of ours takes it.
pub fn raw<T: serde::Serialize + 'static>(value: &T) -> RawValue {
    RawValue::from_value(value, &PayloadConverter::serde_json())
}

/// How deep arrays and objects nest in JSON text (brackets inside strings do not count).
/// Scans the bytes once; invalid JSON is left to the parser.
fn nesting_depth(data: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in data {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn too_deep(what: &str) -> ComputeError {
    ComputeError::invalid(format!(
        "{what}: nests arrays and objects deeper than {MAX_DEPTH} levels"
    ))
}

fn too_many(what: &str) -> ComputeError {
    ComputeError::invalid(format!(
        "{what}: an array or object has more than {MAX_ITEMS} items"
    ))
}

fn too_long(what: &str) -> ComputeError {
    ComputeError::invalid(format!(
        "{what}: a string is longer than {MAX_STRING_BYTES} bytes (64 KiB)"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;
    use temporalio_common::protos::temporal::api::common::v1::Payload;

    use super::*;
    use crate::error::ErrorCode;

    fn payload(encoding: &str, data: Vec<u8>) -> RawValue {
        RawValue::new(vec![Payload {
            metadata: HashMap::from([("encoding".to_string(), encoding.as_bytes().to_vec())]),
            data,
            ..Default::default()
        }])
    }

    fn refused(r: Result<Value>) -> String {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code, ErrorCode::InvalidConfiguration);
        assert!(!e.retriable);
        e.message
    }

    fn nested(levels: usize) -> String {
        "{\"a\":".repeat(levels) + "1" + &"}".repeat(levels)
    }

    #[test]
    fn accepts_json_plain_and_protobuf_json() {
        let v = json!({"tenantId": "a", "spec": {"command": ["x"]}});
        assert_eq!(decode(&raw(&v), "input").unwrap(), v);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            decode(&payload("json/protobuf", bytes.clone()), "input").unwrap(),
            v
        );
        // With a messageType: compute.v1's messages only.
        let typed = |name: &[u8]| {
            let mut raw = payload("json/protobuf", bytes.clone());
            raw.payloads[0]
                .metadata
                .insert("messageType".into(), name.to_vec());
            decode(&raw, "input")
        };
        assert_eq!(typed(b"compute.v1.ComputeRequest").unwrap(), v);
        for other in [
            &b"acme.v1.ComputeRequest"[..],
            b"compute.v1.",
            b"compute.v1.A.B",
            b"compute.v10.ComputeRequest",
            b"\xff",
        ] {
            let m = refused(typed(other));
            assert!(m.contains("package compute.v1"), "{m}");
            assert!(!m.contains("acme"), "the name is not echoed: {m}");
        }
        assert_eq!(
            decode(&RawValue::new(vec![]), "input").unwrap(),
            Value::Null
        );
    }

    #[test]
    fn refuses_what_the_sdk_decoder_would_retry_forever() {
        // Deeper than serde_json's own recursion limit (128): still ours to refuse.
        let m = refused(decode(
            &payload("json/plain", nested(500).into_bytes()),
            "input",
        ));
        assert!(m.contains("deeper than 32"), "{m}");
        assert!(decode(&payload("json/plain", nested(31).into_bytes()), "input").is_ok());
        // Brackets in strings are not nesting.
        let s = format!("{{\"a\": \"{}\"}}", "[{".repeat(100));
        assert!(decode(&payload("json/plain", s.into_bytes()), "input").is_ok());
        let m = refused(decode(
            &payload("json/plain", b"{\"a\": tru".to_vec()),
            "input",
        ));
        assert!(m.starts_with("input: is not valid JSON"), "{m}");
        let m = refused(decode(&payload("binary/protobuf", vec![1, 2]), "input"));
        assert!(m.contains("unsupported payload encoding"), "{m}");
    }

    #[test]
    fn refuses_huge_inputs_without_echoing_them() {
        let big = json!({"tenantId": "a", "pad": "hunter2".repeat(40_000)});
        let m = refused(decode(&raw(&big), "input"));
        assert!(m.contains("256 KiB") && !m.contains("hunter2"), "{m}");
        let long = json!({"s": "x".repeat(MAX_STRING_BYTES + 1)});
        assert!(refused(decode(&raw(&long), "input")).contains("64 KiB"));
        let many = json!({"a": vec![0; MAX_ITEMS + 1]});
        assert!(refused(decode(&raw(&many), "input")).contains("more than 1000"));
        let map: serde_json::Map<String, Value> =
            (0..=MAX_ITEMS).map(|i| (i.to_string(), json!(1))).collect();
        assert!(refused(decode(&raw(&Value::Object(map)), "input")).contains("more than 1000"));
        assert!(check_bounds(&json!({"a": vec![0; MAX_ITEMS]}), "input").is_ok());
    }

    #[test]
    fn shape_errors_do_not_quote_the_input() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        enum E {
            A,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            e: E,
        }
        let e = decode_as::<S>(&raw(&json!({"e": "hunter2"})), "input").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        let e = decode_as::<S>(&raw(&json!("x")), "signal").unwrap_err();
        assert!(
            e.message.starts_with("signal: does not have"),
            "{}",
            e.message
        );
    }
}

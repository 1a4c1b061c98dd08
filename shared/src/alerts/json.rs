//! Small checked readers over one JSON object, shared by the EVE and OPC UA
//! A&C parsers.
//!
//! Fields are *removed* from the object as they are mapped, so whatever is
//! left afterwards is exactly what the parser did not understand, and goes
//! into `structured` under the format's prefix instead of being lost.

use serde_json::{Map, Value};

use super::{AlertContext, AlertError, bounded_message};

/// One parsed JSON object.
pub(crate) type Object = Map<String, Value>;

/// Check the size limit, then read `line` as one JSON object. Returns the
/// object and the line without its terminator (kept as `raw`).
pub(crate) fn parse_object<'a>(
    line: &'a [u8],
    ctx: &AlertContext,
) -> Result<(Object, &'a [u8]), AlertError> {
    let line = bounded_message(line, ctx)?;
    let text = std::str::from_utf8(line).map_err(|_| AlertError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // serde_json bounds nesting depth (128), so hostile input cannot
    // exhaust the stack.
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok((obj, line)),
        Ok(_) => Err(AlertError::Malformed("JSON line: not an object")),
        Err(_) => Err(AlertError::Malformed("JSON line")),
    }
}

/// Remove `key`; JSON `null` reads as absent.
pub(crate) fn take(obj: &mut Object, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

/// Remove a string field.
pub(crate) fn take_str(obj: &mut Object, key: &'static str) -> Result<Option<String>, AlertError> {
    match take(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AlertError::Malformed(key)),
    }
}

/// Remove a non-negative integer field.
pub(crate) fn take_u64(obj: &mut Object, key: &'static str) -> Result<Option<u64>, AlertError> {
    take(obj, key)
        .map(|v| v.as_u64().ok_or(AlertError::Malformed(key)))
        .transpose()
}

/// Remove a port number field.
pub(crate) fn take_port(obj: &mut Object, key: &'static str) -> Result<Option<u16>, AlertError> {
    take_u64(obj, key)?
        .map(|p| u16::try_from(p).map_err(|_| AlertError::Malformed(key)))
        .transpose()
}

/// A field's value as text for `structured`: strings as they are, other
/// values as compact JSON. `None` for `null`.
pub(crate) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Move every field left in `obj` into `out` as (`{prefix}{key}`, text).
pub(crate) fn drain_into(obj: Object, prefix: &str, out: &mut Vec<(String, String)>) {
    for (key, value) in obj {
        if let Some(text) = text_of(&value) {
            out.push((format!("{prefix}{key}"), text));
        }
    }
}

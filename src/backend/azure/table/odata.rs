//! Entities as the Table service's JSON (OData v3, `odata=minimalmetadata`)
//! and the URL pieces that address them.
//!
//! Every value whose JSON form does not name its type exactly (Int64,
//! DateTime, Guid, Binary, Double) is sent with a `Name@odata.type`
//! annotation. The service annotates the same types when it answers, but
//! leaves Int32, Boolean and String bare and may leave a Double bare, so a
//! bare JSON number is an Int32 unless it is written with a fraction or an
//! exponent ("42.0" is a Double, "42" an Int32).

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::backend::table::{format_datetime, Continuation, ETag, Entity, Property, Query};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const ANNOTATION: &str = "@odata.type";

/// The JSON body of a write: both keys and every property, typed. Each
/// annotation comes just before its property, as OData's JSON format asks
/// (a `serde_json::Map` would sort it after).
pub(super) fn entity_body(e: &Entity) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 48 * e.properties.len());
    out.push(b'{');
    let member = |out: &mut Vec<u8>, name: &str, value: &Value| {
        if out.len() > 1 {
            out.push(b',');
        }
        // Writing strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    };
    member(
        &mut out,
        "PartitionKey",
        &Value::String(e.partition_key.clone()),
    );
    member(&mut out, "RowKey", &Value::String(e.row_key.clone()));
    for (name, value) in &e.properties {
        let (json, annotate) = to_json(value);
        if annotate {
            let edm = Value::String(value.edm_type().into());
            member(&mut out, &format!("{name}{ANNOTATION}"), &edm);
        }
        member(&mut out, name, &json);
    }
    out.push(b'}');
    out
}

/// A value's JSON form, and whether it needs a type annotation.
fn to_json(p: &Property) -> (Value, bool) {
    match p {
        Property::String(s) => (Value::String(s.clone()), false),
        Property::Bool(b) => (Value::Bool(*b), false),
        Property::Int32(i) => (Value::Number((*i).into()), false),
        Property::Int64(i) => (Value::String(i.to_string()), true),
        // JSON has no NaN or infinities; OData spells them as strings.
        Property::Double(d) => match Number::from_f64(*d) {
            Some(n) => (Value::Number(n), true),
            None if d.is_nan() => (Value::String("NaN".into()), true),
            None if *d > 0.0 => (Value::String("Infinity".into()), true),
            None => (Value::String("-Infinity".into()), true),
        },
        Property::DateTime(t) => (Value::String(format_datetime(t)), true),
        Property::Guid(g) => (Value::String(g.hyphenated().to_string()), true),
        Property::Binary(b) => (Value::String(B64.encode(b)), true),
    }
}

/// An entity from a response object (a single GET or one of a query's
/// `value` items). `etag` is the response's ETag header, if any; the
/// object's `odata.etag` is used otherwise.
pub(super) fn parse_entity(obj: &Map<String, Value>, etag: Option<&str>) -> Result<Entity, String> {
    let key = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(format!("the entity has no {name} string")),
    };
    let mut e = Entity::new(key("PartitionKey")?, key("RowKey")?);
    e.etag = etag
        .or_else(|| obj.get("odata.etag").and_then(Value::as_str))
        .map(|s| ETag(s.to_owned()));
    if let Some(v) = obj.get("Timestamp") {
        let s = v.as_str().ok_or("Timestamp is not a string")?;
        e.timestamp = Some(parse_datetime(s).ok_or("Timestamp is not a date")?);
    }
    for (name, value) in obj {
        if name.starts_with("odata.")
            || name.contains('@')
            || matches!(name.as_str(), "PartitionKey" | "RowKey" | "Timestamp")
            // A selected property the entity lacks comes back as null.
            || value.is_null()
        {
            continue;
        }
        let annotated = obj
            .get(&format!("{name}{ANNOTATION}"))
            .and_then(Value::as_str);
        let p = from_json(value, annotated).ok_or_else(|| {
            format!(
                "property {name:?} is not a valid {}",
                annotated.unwrap_or("value")
            )
        })?;
        e.properties.insert(name.clone(), p);
    }
    Ok(e)
}

fn from_json(v: &Value, edm: Option<&str>) -> Option<Property> {
    Some(match (edm, v) {
        (None | Some("Edm.String"), Value::String(s)) => Property::String(s.clone()),
        (None | Some("Edm.Boolean"), Value::Bool(b)) => Property::Bool(*b),
        (None, Value::Number(n)) if n.is_f64() => Property::Double(n.as_f64()?),
        (None | Some("Edm.Int32"), Value::Number(n)) => {
            Property::Int32(i32::try_from(n.as_i64()?).ok()?)
        }
        (Some("Edm.Int64"), Value::String(s)) => Property::Int64(s.parse().ok()?),
        (Some("Edm.Int64"), Value::Number(n)) => Property::Int64(n.as_i64()?),
        (Some("Edm.Double"), Value::Number(n)) => Property::Double(n.as_f64()?),
        (Some("Edm.Double"), Value::String(s)) => Property::Double(match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" | "INF" => f64::INFINITY,
            "-Infinity" | "-INF" => f64::NEG_INFINITY,
            other => other.parse().ok()?,
        }),
        (Some("Edm.DateTime"), Value::String(s)) => Property::DateTime(parse_datetime(s)?),
        (Some("Edm.Guid"), Value::String(s)) => Property::Guid(Uuid::parse_str(s).ok()?),
        (Some("Edm.Binary"), Value::String(s)) => Property::Binary(B64.decode(s).ok()?),
        _ => return None,
    })
}

/// RFC 3339 in UTC with up to 7 fractional digits; a time without a zone
/// is UTC, as the service reads it.
fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// The entities of a query response body (`{"value": [...]}`).
pub(super) fn parse_query(body: &[u8]) -> Result<Vec<Entity>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = v
        .get("value")
        .and_then(Value::as_array)
        .ok_or("body has no \"value\" array")?;
    items
        .iter()
        .map(|item| {
            let obj = item.as_object().ok_or("a value item is not an object")?;
            parse_entity(obj, None)
        })
        .collect()
}

/// The `{"odata.error": {"code", "message": {"value"}}}` of an error body:
/// (code, message).
pub(super) fn parse_error(body: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v.get("odata.error")?;
    let code = err.get("code").and_then(Value::as_str).map(str::to_owned);
    let message = match err.get("message") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(m) => m.get("value").and_then(Value::as_str).map(str::to_owned),
        None => None,
    };
    Some((code, message))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// key or query value travels the same whatever the URL library keeps.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `table(PartitionKey='pk',RowKey='rk')`, quotes doubled as OData
/// wants, then percent-encoded.
pub(super) fn entity_path(table: &str, pk: &str, rk: &str) -> String {
    let key = |k: &str| encode(&k.replace('\'', "''"));
    format!("{table}(PartitionKey='{}',RowKey='{}')", key(pk), key(rk))
}

/// The query string of a Query Entities request.
pub(super) fn query_string(q: &Query, continuation: Option<&Continuation>) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &q.filter {
        parts.push(format!("$filter={}", encode(&f.to_odata())));
    }
    parts.push(format!("$top={}", q.page_size()));
    if let Some(sel) = &q.select {
        // The keys and Timestamp are needed to build the entity.
        let mut names = vec!["PartitionKey", "RowKey", "Timestamp"];
        names.extend(sel.iter().map(String::as_str).filter(|n| !names_has(n)));
        parts.push(format!("$select={}", encode(&names.join(","))));
    }
    if let Some(c) = continuation {
        parts.push(format!(
            "NextPartitionKey={}",
            encode(&c.next_partition_key)
        ));
        if let Some(rk) = &c.next_row_key {
            parts.push(format!("NextRowKey={}", encode(rk)));
        }
    }
    parts.join("&")
}

fn names_has(n: &str) -> bool {
    matches!(n, "PartitionKey" | "RowKey" | "Timestamp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::table::Filter;
    use chrono::TimeZone;

    fn round_trip(e: &Entity) -> Entity {
        let v: Value = serde_json::from_slice(&entity_body(e)).unwrap();
        parse_entity(v.as_object().unwrap(), None).unwrap()
    }

    #[test]
    fn every_type_round_trips_through_json() {
        let t = Utc.timestamp_opt(1_700_000_000, 123_456_700).unwrap();
        let e = Entity::new("p'k", "r")
            .with("S", Property::String("x".into()))
            .with("I", Property::Int32(-7))
            .with("L", Property::Int64(i64::MIN))
            .with("D", Property::Double(42.0))
            .with("F", Property::Double(0.1 + 0.2))
            .with("N", Property::Double(f64::NEG_INFINITY))
            .with("B", Property::Bool(false))
            .with("T", Property::DateTime(t))
            .with("G", Property::Guid(Uuid::new_v4()))
            .with("X", Property::Binary(vec![0, 1, 255]));
        assert_eq!(round_trip(&e), e);
        let nan = round_trip(&Entity::new("p", "r").with("N", Property::Double(f64::NAN)));
        assert!(matches!(nan.get("N"), Some(Property::Double(v)) if v.is_nan()));
    }

    #[test]
    fn annotations_precede_their_property() {
        let e = Entity::new("p", "r")
            .with("A", Property::Int64(1))
            .with("B", Property::Bool(true));
        assert_eq!(
            String::from_utf8(entity_body(&e)).unwrap(),
            r#"{"PartitionKey":"p","RowKey":"r","A@odata.type":"Edm.Int64","A":"1","B":true}"#
        );
    }

    #[test]
    fn bare_numbers_and_service_fields() {
        let body = br#"{"odata.etag":"W/\"x\"","PartitionKey":"p","RowKey":"r",
            "Timestamp":"2024-01-02T03:04:05.1234567Z","A":42,"B":42.0,"C":null,
            "T@odata.type":"Edm.DateTime","T":"2024-01-02T03:04:05"}"#;
        let v: Value = serde_json::from_slice(body).unwrap();
        let e = parse_entity(v.as_object().unwrap(), None).unwrap();
        assert_eq!(e.etag, Some(ETag("W/\"x\"".into())));
        assert_eq!(e.timestamp.unwrap().timestamp_subsec_nanos(), 123_456_700);
        assert_eq!(e.get("A"), Some(&Property::Int32(42)));
        assert_eq!(e.get("B"), Some(&Property::Double(42.0)));
        assert_eq!(e.get("C"), None);
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(e.get("T"), Some(&Property::DateTime(t)));
        let bad = br#"{"PartitionKey":"p","RowKey":"r","L@odata.type":"Edm.Int64","L":"x"}"#;
        let v: Value = serde_json::from_slice(bad).unwrap();
        assert!(parse_entity(v.as_object().unwrap(), None)
            .unwrap_err()
            .contains("\"L\""));
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(
            entity_path("t", "it's", "a b/é"),
            "t(PartitionKey='it%27%27s',RowKey='a%20b%2F%C3%A9')"
        );
        let q = Query {
            filter: Some(Filter::partition_key_eq("a&b")),
            top: Some(5),
            select: Some(vec!["X".into(), "RowKey".into()]),
        };
        let c = Continuation {
            next_partition_key: "1!8!cA--".into(),
            next_row_key: None,
        };
        assert_eq!(
            query_string(&q, Some(&c)),
            "$filter=PartitionKey%20eq%20%27a%26b%27&$top=5\
             &$select=PartitionKey%2CRowKey%2CTimestamp%2CX&NextPartitionKey=1%218%21cA--"
        );
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"3:The specified entity already exists.\nRequestId:x"}}}"#;
        let (code, msg) = parse_error(body).unwrap();
        assert_eq!(code.as_deref(), Some("EntityAlreadyExists"));
        assert!(msg.unwrap().starts_with("3:The specified"));
        assert!(parse_error(b"<xml/>").is_none());
    }
}

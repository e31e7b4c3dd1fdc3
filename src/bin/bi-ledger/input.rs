//! Parsing `append` input: one JSON object per line.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use bi_ledger::model::canonical_json;
use bi_ledger::{ExpectedVersion, NewEvent};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    payload: serde_json::Value,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default = "one")]
    schema_version: u32,
    #[serde(default)]
    expected_version: Option<Expected>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expected {
    Number(u64),
    Word(String),
}

/// Parses every line before anything is appended, so a bad line anywhere
/// means nothing is written. Blank lines are skipped.
pub fn parse_events(text: &str) -> Result<Vec<(usize, NewEvent)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => bail!("line {n}: {e}"),
        };
        let expected = match line.expected_version {
            None => ExpectedVersion::Any,
            Some(Expected::Number(v)) => ExpectedVersion::Exact(v),
            Some(Expected::Word(w)) => match w.as_str() {
                "any" => ExpectedVersion::Any,
                "no_stream" => ExpectedVersion::NoStream,
                other => bail!("line {n}: field `expected_version`: expected a number, \"any\" or \"no_stream\", found {other:?}"),
            },
        };
        let event = NewEvent {
            stream: line.stream,
            event_type: line.event_type,
            schema_version: line.schema_version,
            content_type: "application/json".into(),
            metadata: line.metadata,
            payload: canonical_json(&line.payload),
            expected_version: expected,
        };
        if let Err((field, reason)) = event.validate() {
            bail!("line {n}: field `{field}` {reason}");
        }
        out.push((n, event));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_line_and_field() {
        let e = parse_events("{\"stream\":\"a\",\"type\":\"t\",\"payload\":1}\n{\"stream\":\"\",\"type\":\"t\",\"payload\":1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: field `stream`"), "{e}");
        let e = parse_events("\n{\"stream\":\"a\",\"type\":\"t\"}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: missing field `payload`"), "{e}");
        let e = parse_events(
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":1,\"expected_version\":\"latest\"}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected_version"), "{e}");
    }

    #[test]
    fn parses_expected_versions() {
        let evs = parse_events(
            "{\"stream\":\"a\",\"type\":\"t\",\"payload\":{\"b\":1,\"a\":2},\"expected_version\":\"no_stream\"}\n{\"stream\":\"a\",\"type\":\"t\",\"payload\":null,\"expected_version\":0}",
        )
        .unwrap();
        assert_eq!(evs[0].1.expected_version, ExpectedVersion::NoStream);
        assert_eq!(evs[0].1.payload, br#"{"a":2,"b":1}"#);
        assert_eq!(evs[1].1.expected_version, ExpectedVersion::Exact(0));
    }
}

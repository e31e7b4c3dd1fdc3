//! Entity-group transactions: the `multipart/mixed` body of a `$batch`
//! request (one changeset holding every operation) and its response.
//!
//! The service answers 202 whether or not the changeset succeeded. On
//! success there is one sub-response per operation, in order; on failure
//! there is one sub-response, the failed operation's, whose error message
//! starts with the operation's 0-based index ("3:The specified entity
//! already exists.") and which carries the Content-ID we gave it.

use azure_core::http::Method;
use uuid::Uuid;

use super::odata::{entity_body, entity_path};
use crate::backend::table::{BatchOp, IfMatch};

/// How one operation travels: method, whether it names the entity in the
/// URL (all but insert), and its `If-Match`.
pub(super) fn http_parts(op: &BatchOp) -> (Method, bool, Option<&str>) {
    let (method, addressed) = match op {
        BatchOp::Insert(_) => (Method::Post, false),
        BatchOp::Replace(..) | BatchOp::InsertOrReplace(_) => (Method::Put, true),
        // PATCH is the Table service's merge (as MERGE is, which HTTP
        // libraries do not all allow).
        BatchOp::Merge(..) | BatchOp::InsertOrMerge(_) => (Method::Patch, true),
        BatchOp::Delete { .. } => (Method::Delete, true),
    };
    (method, addressed, op.condition().map(IfMatch::header_value))
}

/// The URL path (below the service endpoint) an operation goes to.
pub(super) fn op_path(table: &str, op: &BatchOp) -> String {
    let (pk, rk) = op.keys();
    if http_parts(op).1 {
        entity_path(table, pk, rk)
    } else {
        table.to_owned()
    }
}

pub(super) struct BatchRequest {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The `$batch` body. `endpoint` is the service URL ending in `/`;
/// sub-requests carry absolute URLs, as the service requires.
pub(super) fn build(endpoint: &str, table: &str, ops: &[BatchOp]) -> BatchRequest {
    let batch = format!("batch_{}", Uuid::new_v4());
    let changeset = format!("changeset_{}", Uuid::new_v4());
    let mut b: Vec<u8> = Vec::with_capacity(512 * ops.len());
    let line = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(s.as_bytes());
        b.extend_from_slice(b"\r\n");
    };
    line(&mut b, &format!("--{batch}"));
    line(
        &mut b,
        &format!("Content-Type: multipart/mixed; boundary={changeset}"),
    );
    line(&mut b, "");
    for (i, op) in ops.iter().enumerate() {
        let (method, _, if_match) = http_parts(op);
        line(&mut b, &format!("--{changeset}"));
        line(&mut b, "Content-Type: application/http");
        line(&mut b, "Content-Transfer-Encoding: binary");
        line(&mut b, "");
        line(
            &mut b,
            &format!(
                "{} {endpoint}{} HTTP/1.1",
                method.as_str(),
                op_path(table, op)
            ),
        );
        line(&mut b, &format!("Content-ID: {}", i + 1));
        line(&mut b, "Accept: application/json;odata=minimalmetadata");
        line(&mut b, "DataServiceVersion: 3.0");
        if let Some(m) = if_match {
            line(&mut b, &format!("If-Match: {m}"));
        }
        match op.entity() {
            Some(e) => {
                let json = entity_body(e);
                line(&mut b, "Content-Type: application/json");
                line(&mut b, "Prefer: return-no-content");
                line(&mut b, &format!("Content-Length: {}", json.len()));
                line(&mut b, "");
                b.extend_from_slice(&json);
                line(&mut b, "");
            }
            None => line(&mut b, ""),
        }
    }
    line(&mut b, &format!("--{changeset}--"));
    line(&mut b, &format!("--{batch}--"));
    BatchRequest {
        content_type: format!("multipart/mixed; boundary={batch}"),
        body: b,
    }
}

/// One sub-response of a `$batch` answer.
#[derive(Debug)]
pub(super) struct SubResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl SubResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The sub-responses of a `$batch` answer whose Content-Type is
/// `content_type`, in order.
pub(super) fn parse(content_type: &str, body: &[u8]) -> Result<Vec<SubResponse>, String> {
    let body = std::str::from_utf8(body).map_err(|_| "the batch response is not UTF-8")?;
    let boundary = boundary_of(content_type).ok_or_else(|| {
        format!("the batch response's Content-Type {content_type:?} has no boundary")
    })?;
    let mut out = Vec::new();
    for part in parts(body, boundary) {
        let (headers, rest) = split_head(part);
        let inner = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .and_then(|(_, v)| boundary_of(v).map(str::to_owned));
        match inner {
            // The changeset: one HTTP response a part.
            Some(cs) => {
                for sub in parts(rest, &cs) {
                    out.push(http_response(split_head(sub).1)?);
                }
            }
            // A request-level failure comes as one bare response.
            None => out.push(http_response(rest)?),
        }
    }
    if out.is_empty() {
        return Err("the batch response holds no response".into());
    }
    Ok(out)
}

fn boundary_of(content_type: &str) -> Option<&str> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"'))
    })
}

/// The parts between `--boundary` delimiters, before `--boundary--`.
fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delim = format!("--{boundary}");
    let mut pieces = body.split(delim.as_str());
    pieces.next(); // preamble
    pieces
        .take_while(|p| !p.starts_with("--"))
        .map(|p| p.trim_start_matches(['\r', '\n']))
        .collect()
}

/// MIME or HTTP headers (names lower-cased) up to the first blank line,
/// and what follows it.
fn split_head(part: &str) -> (Vec<(String, String)>, &str) {
    let (head, rest) = match part.find("\r\n\r\n") {
        Some(i) => (&part[..i], &part[i + 4..]),
        None => match part.find("\n\n") {
            Some(i) => (&part[..i], &part[i + 2..]),
            None => (part, ""),
        },
    };
    let headers = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, rest)
}

fn http_response(text: &str) -> Result<SubResponse, String> {
    let text = text.trim_start_matches(['\r', '\n']);
    let (status_line, rest) = text.split_once('\n').unwrap_or((text, ""));
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "a batch sub-response starts {:?}, not with an HTTP status line",
                truncate(status_line)
            )
        })?;
    let (headers, body) = split_head(rest);
    Ok(SubResponse {
        status,
        headers,
        body: body.trim_end().to_owned(),
    })
}

fn truncate(s: &str) -> &str {
    s.char_indices().nth(60).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::table::{Entity, IfMatch};

    #[test]
    fn request_layout() {
        let ops = vec![
            BatchOp::Insert(Entity::new("p", "a")),
            BatchOp::Delete {
                partition_key: "p".into(),
                row_key: "b".into(),
                if_match: IfMatch::Any,
            },
        ];
        let r = build("http://h/acct/", "t", &ops);
        let text = String::from_utf8(r.body).unwrap();
        let batch = r.content_type.split("boundary=").nth(1).unwrap();
        assert!(text.starts_with(&format!(
            "--{batch}\r\nContent-Type: multipart/mixed; boundary=changeset_"
        )));
        assert!(text.contains("POST http://h/acct/t HTTP/1.1\r\nContent-ID: 1\r\n"));
        assert!(text.contains(
            "DELETE http://h/acct/t(PartitionKey='p',RowKey='b') HTTP/1.1\r\nContent-ID: 2\r\n"
        ));
        assert!(text.contains("If-Match: *\r\n"));
        assert!(text.contains("\r\n\r\n{\"PartitionKey\":\"p\",\"RowKey\":\"a\"}\r\n--changeset_"));
        assert!(text.ends_with(&format!("--{batch}--\r\n")));
    }

    #[test]
    fn responses() {
        let ok = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
            --changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
            HTTP/1.1 204 No Content\r\nETag: W/\"1\"\r\n\r\n\r\n\
            --changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\r\n\
            --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        let subs = parse("multipart/mixed; boundary=batchresponse_1", ok.as_bytes()).unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].status, 204);
        assert_eq!(subs[0].header("etag"), Some("W/\"1\""));
        assert_eq!(subs[1].header("etag"), None);

        let failed = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
            --changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
            HTTP/1.1 409 Conflict\r\nContent-ID: 4\r\nContent-Type: application/json\r\n\r\n\
            {\"odata.error\":{\"code\":\"EntityAlreadyExists\"}}\r\n\
            --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        let subs = parse(
            "multipart/mixed; boundary=batchresponse_1",
            failed.as_bytes(),
        )
        .unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(
            (subs[0].status, subs[0].header("content-id")),
            (409, Some("4"))
        );
        assert!(subs[0].body.ends_with("}}"));

        let bare = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\n{}\r\n--b--";
        assert_eq!(
            parse("multipart/mixed; boundary=b", bare.as_bytes()).unwrap()[0].status,
            400
        );
        assert!(parse("multipart/mixed", b"").is_err());
    }
}

//! Service answers as the trait's errors: 404, 409 and 412 become the
//! distinct [`TableError`] variants the local store uses; anything else is
//! [`TableError::Backend`] carrying an [`AzureTableError`] that names the
//! table, the entity's keys and the service's status, code and message,
//! with secrets removed.

use crate::backend::table::{
    entity_size, truncate_to_tick, BatchOp, ETag, Entity, Property, TableError, MAX_BATCH_BYTES,
    MAX_CUSTOM_PROPERTIES, MAX_ENTITY_BYTES,
};

use super::super::transport::{code_of, status_of};
use super::batch::SubResponse;
use super::client::{http_error, Client};
use super::odata;

/// Why a call to the Table service failed, when it is not one of the
/// trait's own errors.
#[derive(Debug, thiserror::Error)]
pub enum AzureTableError {
    #[error("{0}")]
    Config(String),
    #[error("table {table}{}: {detail}{}", keys_text(.keys), hint(*.status))]
    Service {
        table: String,
        keys: Option<(String, String)>,
        /// `None` when no answer came (connection, timeout).
        status: Option<u16>,
        code: Option<String>,
        /// Status, code and message, or the transport failure; redacted.
        detail: String,
    },
    #[error("table {table}: unexpected response from the service: {why}")]
    Response { table: String, why: String },
    #[error("could not build the request: {why}")]
    Request { why: String },
}

fn keys_text(keys: &Option<(String, String)>) -> String {
    match keys {
        Some((pk, rk)) => format!(", entity ({pk:?}, {rk:?})"),
        None => String::new(),
    }
}

fn hint(status: Option<u16>) -> &'static str {
    match status {
        Some(401 | 403) => {
            " (the account key, SAS or Entra ID credential was refused; check the connection string or role assignment)"
        }
        _ => "",
    }
}

impl AzureTableError {
    pub(super) fn from_http(
        client: &Client,
        table: &str,
        keys: Option<(&str, &str)>,
        e: &azure_core::Error,
    ) -> AzureTableError {
        AzureTableError::Service {
            table: table.to_owned(),
            keys: keys.map(|(p, r)| (p.to_owned(), r.to_owned())),
            status: status_of(e),
            code: code_of(e).map(str::to_owned),
            detail: client.explain(e),
        }
    }
}

pub(super) fn backend(op: &'static str, e: AzureTableError) -> TableError {
    TableError::Backend {
        op,
        source: Box::new(e),
    }
}

/// An answer the store cannot read, as the error for `op` on `table`.
pub(super) fn bad_response<'a>(
    op: &'static str,
    table: &'a str,
) -> impl Fn(String) -> TableError + 'a {
    move |why| {
        backend(
            op,
            AzureTableError::Response {
                table: table.to_owned(),
                why,
            },
        )
    }
}

pub(super) fn no_etag(op: &'static str, table: &str) -> TableError {
    bad_response(op, table)("the write succeeded but the answer has no ETag".into())
}

/// The error for a failed write of one entity (alone or in a batch).
pub(super) fn entity_error(
    client: &Client,
    label: &'static str,
    table: &str,
    op: &BatchOp,
    e: &azure_core::Error,
) -> TableError {
    let (pk, rk) = op.keys();
    let keyed = || (table.to_owned(), pk.to_owned(), rk.to_owned());
    match (status_of(e), code_of(e)) {
        (_, Some("TableNotFound")) => TableError::TableNotFound {
            table: table.to_owned(),
        },
        (Some(404), _) => {
            let (table, partition_key, row_key) = keyed();
            TableError::EntityNotFound {
                table,
                partition_key,
                row_key,
            }
        }
        (Some(409), Some("EntityAlreadyExists")) => {
            let (table, partition_key, row_key) = keyed();
            TableError::AlreadyExists {
                table,
                partition_key,
                row_key,
            }
        }
        (Some(412), _) => {
            let (table, partition_key, row_key) = keyed();
            TableError::PreconditionFailed {
                table,
                partition_key,
                row_key,
                expected: super::batch::http_parts(op).2.unwrap_or("*").to_owned(),
            }
        }
        _ => backend(
            label,
            AzureTableError::from_http(client, table, Some((pk, rk)), e),
        ),
    }
}

/// The service's error code behind a [`TableError::Backend`], if any.
pub(super) fn service_code(err: &TableError) -> Option<&str> {
    let TableError::Backend { source, .. } = err else {
        return None;
    };
    match source.downcast_ref::<AzureTableError>()? {
        AzureTableError::Service { code, .. } => code.as_deref(),
        _ => None,
    }
}

/// A merge refused as too large or with too many properties, as the
/// trait's error, measured on the entity it would have produced (`now`,
/// the stored entity, with the merge's properties over it). `None` when
/// that entity is within the limits after all (it changed meanwhile), so
/// the service's own answer stands. Only a merge can get here:
/// `validate_entity` sizes a whole entity as Azure does.
pub(super) fn limit_error(op: &BatchOp, now: Entity) -> Option<TableError> {
    let (BatchOp::Merge(new, _) | BatchOp::InsertOrMerge(new)) = op else {
        return None;
    };
    let mut merged = now;
    merged.properties.extend(new.properties.clone());
    let (partition_key, row_key) = (new.partition_key.clone(), new.row_key.clone());
    let size = entity_size(&merged);
    if size > MAX_ENTITY_BYTES {
        return Some(TableError::EntityTooLarge {
            partition_key,
            row_key,
            size,
            limit: MAX_ENTITY_BYTES,
        });
    }
    let count = merged.properties.len();
    (count > MAX_CUSTOM_PROPERTIES).then_some(TableError::TooManyProperties {
        partition_key,
        row_key,
        count,
        limit: MAX_CUSTOM_PROPERTIES,
    })
}

/// Azure counts a batch's request payload against the 4 MiB limit: JSON
/// and base64 make it larger than the entities' own size, which
/// `validate_batch` has already checked.
pub(super) fn check_batch_size(payload: usize) -> Result<(), TableError> {
    if payload >= MAX_BATCH_BYTES {
        return Err(TableError::BatchTooLarge {
            size: payload,
            limit: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// The ETags of a batch that succeeded, or the error naming the operation
/// that failed. A failed sub-response is always an error.
pub(super) fn batch_outcome(
    client: &Client,
    table: &str,
    ops: &[BatchOp],
    subs: &[SubResponse],
) -> Result<Vec<Option<ETag>>, TableError> {
    let op = "run a batch";
    let bad = bad_response(op, table);
    if let Some(failed) = subs.iter().find(|s| !(200..300).contains(&s.status)) {
        let (index, e) = sub_error(failed, ops.len());
        let Some(index) = index else {
            let detail = client.explain(&e);
            return Err(bad(format!(
                "the batch failed ({detail}) without naming an operation"
            )));
        };
        let source = entity_error(client, op, table, &ops[index], &e);
        if let TableError::TableNotFound { .. } = source {
            return Err(source);
        }
        return Err(TableError::BatchOperationFailed {
            index,
            op: ops[index].name(),
            source: Box::new(source),
        });
    }
    if subs.len() != ops.len() {
        return Err(bad(format!(
            "{} answers to {} operations",
            subs.len(),
            ops.len()
        )));
    }
    ops.iter()
        .zip(subs)
        .enumerate()
        .map(|(i, (op, sub))| match op {
            BatchOp::Delete { .. } => Ok(None),
            _ => sub
                .header("etag")
                .map(|t| Some(ETag(t.to_owned())))
                .ok_or_else(|| bad(format!("operation {i} succeeded without an ETag"))),
        })
        .collect()
}

/// A failed sub-response as an error, and the index of the operation it
/// is about: from the message's "index:" prefix, else its Content-ID
/// (1-based, as we send it), else the only operation there is.
fn sub_error(sub: &SubResponse, n: usize) -> (Option<usize>, azure_core::Error) {
    let (_, message) = odata::parse_error(sub.body.as_bytes()).unwrap_or((None, None));
    let from_message = message.as_deref().and_then(|m| {
        let (i, _) = m.split_once(':')?;
        i.trim().parse::<usize>().ok()
    });
    let from_id = sub
        .header("content-id")
        .and_then(|c| c.parse::<usize>().ok())
        .and_then(|c| c.checked_sub(1));
    let index = from_message
        .or(from_id)
        .or((n == 1).then_some(0))
        .filter(|&i| i < n);
    // The message without its index prefix.
    let body = match (&message, from_message) {
        (Some(m), Some(_)) => {
            let rest = m.split_once(':').map_or(m.as_str(), |(_, r)| r);
            serde_json::json!({ "odata.error": {
                "code": odata::parse_error(sub.body.as_bytes()).and_then(|(c, _)| c),
                "message": { "value": rest } } })
            .to_string()
        }
        _ => sub.body.clone(),
    };
    let status = azure_core::http::StatusCode::from(sub.status);
    (
        index,
        http_error(status, sub.header("x-ms-error-code"), body.as_bytes()),
    )
}

/// Whether a value read back is the one written: DateTimes compare at
/// Azure's 100 ns tick, NaN equals NaN.
pub(super) fn same(read: &Property, written: &Property) -> bool {
    match (read, written) {
        (Property::DateTime(a), Property::DateTime(b)) => {
            truncate_to_tick(a) == truncate_to_tick(b)
        }
        (Property::Double(a), Property::Double(b)) => a == b || (a.is_nan() && b.is_nan()),
        (a, b) => a == b,
    }
}

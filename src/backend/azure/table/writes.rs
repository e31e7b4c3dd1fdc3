//! The store's writes: one entity at a time or as an entity-group
//! transaction, each retried on transient failures, with the answer to a
//! retried write judged against what the service now holds.

use azure_core::http::{Method, RawResponse};
use tracing::warn;

use super::errors::{self, backend, entity_error, AzureTableError};
use super::{addr, batch, odata, AzureTableStore};
use crate::backend::azure::transport::status_of;
use crate::backend::table::{BatchOp, ETag, IfMatch, TableError, TableStore};

impl AzureTableStore {
    /// Sends one write (anything a batch may hold) and returns its new
    /// ETag (`None` for a delete).
    pub(super) async fn send_one(
        &self,
        table: &str,
        op: &BatchOp,
    ) -> Result<Option<ETag>, TableError> {
        let (method, _, if_match) = batch::http_parts(op);
        let path = batch::op_path(&addr(table), op);
        let label = op_label(op);
        let mut req = match op.entity() {
            Some(e) => self
                .client
                .json_request(method, &path, odata::entity_body(e))
                .map_err(|why| backend(label, AzureTableError::Request { why }))?,
            None => self.request(label, method, &path, None)?,
        };
        if let Some(m) = if_match {
            req.insert_header("if-match", m.to_owned());
        }
        if matches!(op, BatchOp::Insert(_)) {
            req.insert_header("prefer", "return-no-content");
        }
        let a = self.client.send_write(label, table, req).await;
        match a.result {
            Ok(resp) => Ok(etag_of(&resp)),
            Err(e) => {
                if a.uncertain && matches!(status_of(&e), Some(404 | 409 | 412)) {
                    if let Some(mut tags) = self.landed(table, std::slice::from_ref(op)).await {
                        return Ok(tags.pop().flatten());
                    }
                }
                let mut err = entity_error(&self.client, label, table, op, &e);
                self.measure(table, op, &mut err).await;
                Err(err)
            }
        }
    }

    /// A merge refused as too large or with too many properties becomes
    /// the trait's error, measured on the entity it would have produced,
    /// read back.
    async fn measure(&self, table: &str, op: &BatchOp, err: &mut TableError) {
        if !matches!(
            errors::service_code(err),
            Some("EntityTooLarge" | "TooManyProperties")
        ) {
            return;
        }
        let (pk, rk) = op.keys();
        if let Ok(Some(now)) = self.get(table, pk, rk).await {
            if let Some(typed) = errors::limit_error(op, now) {
                *err = typed;
            }
        }
    }

    /// After a write whose first attempt may have landed was answered
    /// "exists", "not found" or "condition not met": whether the entities
    /// now hold exactly what `ops` wrote, and if so their ETags. `None`
    /// when they do not, or cannot be read.
    async fn landed(&self, table: &str, ops: &[BatchOp]) -> Option<Vec<Option<ETag>>> {
        let mut tags = Vec::with_capacity(ops.len());
        for op in ops {
            let (pk, rk) = op.keys();
            let now = self.get(table, pk, rk).await.ok()?;
            let tag = match (op, now) {
                (BatchOp::Delete { .. }, None) => None,
                (BatchOp::Delete { .. }, Some(_)) | (_, None) => return None,
                // A conditional merge answered "condition not met" may have
                // landed, but the entity's ETag now may also cover another
                // writer's change made after it: handing that ETag back
                // would let the caller's next conditional write undo that
                // change. It stays a failed condition; a re-read shows what
                // landed.
                (BatchOp::Merge(_, IfMatch::ETag(_)), Some(_)) => return None,
                (BatchOp::Merge(e, _) | BatchOp::InsertOrMerge(e), Some(now)) => {
                    let all = e
                        .properties
                        .iter()
                        .all(|(k, v)| now.get(k).is_some_and(|n| errors::same(n, v)));
                    all.then_some(now.etag)?
                }
                (_, Some(now)) => {
                    let e = op.entity()?;
                    let same = e.properties.len() == now.properties.len()
                        && e.properties
                            .iter()
                            .all(|(k, v)| now.get(k).is_some_and(|n| errors::same(n, v)));
                    same.then_some(now.etag)?
                }
            };
            tags.push(tag);
        }
        warn!(
            table,
            operations = ops.len(),
            "a write retried after an uncertain failure had already landed"
        );
        Some(tags)
    }

    pub(super) async fn run_batch(
        &self,
        table: &str,
        ops: &[BatchOp],
    ) -> Result<Vec<Option<ETag>>, TableError> {
        let op = "run a batch";
        let body = batch::build(&self.client.endpoint, &addr(table), ops);
        errors::check_batch_size(body.body.len())?;
        let mut req = self.request(op, Method::Post, "$batch", None)?;
        req.insert_header("content-type", body.content_type);
        req.set_body(body.body);
        let a = self.client.send_write(op, table, req).await;
        let resp = match a.result {
            Ok(r) => r,
            Err(e) => return Err(self.table_error(op, table, &e)),
        };
        let content_type = resp
            .headers()
            .get_optional_str(&"content-type".into())
            .unwrap_or("")
            .to_owned();
        let subs = batch::parse(&content_type, resp.body().as_ref())
            .map_err(errors::bad_response(op, table))?;
        match errors::batch_outcome(&self.client, table, ops, &subs) {
            Ok(tags) => Ok(tags),
            Err(mut e) => {
                if let TableError::BatchOperationFailed { index, source, .. } = &mut e {
                    self.measure(table, &ops[*index], source).await;
                }
                let judged = matches!(
                    e.root(),
                    TableError::AlreadyExists { .. }
                        | TableError::EntityNotFound { .. }
                        | TableError::PreconditionFailed { .. }
                );
                if a.uncertain && judged {
                    if let Some(tags) = self.landed(table, ops).await {
                        return Ok(tags);
                    }
                }
                Err(e)
            }
        }
    }
}

pub(super) fn op_label(op: &BatchOp) -> &'static str {
    match op {
        BatchOp::Insert(_) => "insert an entity",
        BatchOp::Replace(..) => "replace an entity",
        BatchOp::Merge(..) => "merge an entity",
        BatchOp::InsertOrReplace(_) => "insert or replace an entity",
        BatchOp::InsertOrMerge(_) => "insert or merge an entity",
        BatchOp::Delete { .. } => "delete an entity",
    }
}

fn etag_of(resp: &RawResponse) -> Option<ETag> {
    resp.headers()
        .get_optional_str(&"etag".into())
        .map(|s| ETag(s.to_owned()))
}

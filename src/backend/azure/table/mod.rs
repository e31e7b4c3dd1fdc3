//! The Azure table store: [`TableStore`] on Azure Table Storage, through a
//! thin client on the `azure_core` pipeline (there is no official Rust
//! Tables crate). It shares the transport, retry settings, Shared Key / SAS
//! / Entra ID authorization and secret redaction with the blob store. See
//! `../README.md` for what is atomic and how a projector recovers.
//!
//! Everything the trait checks before a write (`validate_*` in
//! `backend::table`) is checked here before anything is sent, so both
//! stores refuse the same input with the same error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{Method, Url};
use serde_json::Value;

use super::account::{sibling_endpoint, AzureAccount};
use super::auth::Redactor;
use super::config::ConnectionInfo;
use super::transport::{code_of, key_policy, status_of, RetrySettings, Service};
use crate::backend::table::{
    validate_address, validate_batch, validate_op, validate_query, validate_table_name, BatchOp,
    Continuation, ETag, Entity, Query, QueryPage, TableError, TableStore,
};

mod batch;
mod client;
mod errors;
mod odata;
mod writes;

use client::{Auth, Client};
use errors::backend;
pub use errors::AzureTableError;

#[derive(Clone, Debug)]
pub struct AzureTableOptions {
    pub retry: RetrySettings,
    pub connect_timeout: Duration,
    /// Longest wait for any read on a connection.
    pub read_timeout: Duration,
}

impl Default for AzureTableOptions {
    fn default() -> Self {
        AzureTableOptions {
            retry: RetrySettings::default(),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// An Azure Table Storage account as a [`TableStore`]. Cheap to clone.
#[derive(Clone)]
pub struct AzureTableStore {
    client: Arc<Client>,
}

impl fmt::Debug for AzureTableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTableStore")
            .field("endpoint", &self.client.endpoint)
            .finish_non_exhaustive()
    }
}

fn config_err(why: String) -> TableError {
    backend(
        "configure the Azure table store",
        AzureTableError::Config(why),
    )
}

impl AzureTableStore {
    /// The account [`crate::backend::azure::config::CONNECTION_STRING_ENV`] names. No I/O: tables are
    /// created with [`TableStore::create_table`].
    pub fn from_env(opts: AzureTableOptions) -> Result<Self, TableError> {
        let info = ConnectionInfo::from_env().map_err(|e| config_err(e.to_string()))?;
        Self::from_connection_info(info, opts)
    }

    /// The account a connection string names; `UseDevelopmentStorage=true`
    /// is Azurite.
    pub fn from_connection_string(cs: &str, opts: AzureTableOptions) -> Result<Self, TableError> {
        let info = ConnectionInfo::parse(cs).map_err(|e| config_err(e.to_string()))?;
        Self::from_connection_info(info, opts)
    }

    pub fn from_connection_info(
        info: ConnectionInfo,
        opts: AzureTableOptions,
    ) -> Result<Self, TableError> {
        let endpoint = info
            .table_endpoint()
            .map_err(|e| config_err(e.to_string()))?
            .clone();
        let redactor = Redactor::new(info.secrets());
        let auth = Auth::Policy(key_policy(info.credential, Service::Table));
        Self::build(endpoint, auth, redactor, &opts)
    }

    /// An account reached with an Entra ID credential (e.g.
    /// `azure_identity`'s managed or workload identity), with the scope
    /// `https://storage.azure.com/.default`. `table_endpoint` is the
    /// account's table service URL (https).
    pub fn with_token_credential(
        table_endpoint: Url,
        credential: Arc<dyn TokenCredential>,
        opts: AzureTableOptions,
    ) -> Result<Self, TableError> {
        Self::build(
            table_endpoint,
            Auth::Token(credential),
            Redactor::default(),
            &opts,
        )
    }

    /// The table service of `account` (see [`AzureAccount::from_env`]). For
    /// Entra ID the table URL is derived from the blob one
    /// (`https://ACCOUNT.blob.SUFFIX` → `https://ACCOUNT.table.SUFFIX`).
    pub fn open(account: &AzureAccount, opts: AzureTableOptions) -> Result<Self, TableError> {
        match account {
            AzureAccount::Keyed(info) => Self::from_connection_info((**info).clone(), opts),
            AzureAccount::Entra {
                blob_endpoint,
                credential,
                ..
            } => {
                let endpoint = sibling_endpoint(blob_endpoint, "table").ok_or_else(|| {
                    config_err(format!(
                        "cannot tell the table service of {blob_endpoint} (expected https://ACCOUNT.blob.SUFFIX)"
                    ))
                })?;
                Self::with_token_credential(endpoint, credential.clone(), opts)
            }
        }
    }

    fn build(
        endpoint: Url,
        auth: Auth,
        redactor: Redactor,
        opts: &AzureTableOptions,
    ) -> Result<Self, TableError> {
        let client = Client::new(endpoint, auth, redactor, opts).map_err(config_err)?;
        Ok(AzureTableStore {
            client: Arc::new(client),
        })
    }

    /// The table service URL.
    pub fn endpoint(&self) -> &str {
        &self.client.endpoint
    }

    /// The `azure_core` pipeline the store's writes go through: its
    /// transport and authorization, no retry policy. For sending Table REST
    /// requests directly, as `benches/azure_table.rs` does for its
    /// baseline; requests need the service's own headers (`x-ms-version`,
    /// `Accept`, `DataServiceVersion`).
    pub fn pipeline(&self) -> &azure_core::http::Pipeline {
        self.client.pipeline()
    }

    fn request(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<azure_core::http::Request, TableError> {
        self.client
            .request(method, path, query)
            .map_err(|why| backend(op, AzureTableError::Request { why }))
    }

    /// An error about `table` as a whole (no entity named).
    fn table_error(&self, op: &'static str, table: &str, e: &azure_core::Error) -> TableError {
        if status_of(e) == Some(404) {
            return TableError::TableNotFound {
                table: table.to_owned(),
            };
        }
        backend(op, AzureTableError::from_http(&self.client, table, None, e))
    }
}

/// The name a table is addressed by. Table names are case-insensitive in
/// Azure; Azurite 3.37 finds a table by the case it was created with, so
/// every request (creation included) uses the lower-cased name. Errors
/// still name the table as the caller spelled it.
fn addr(table: &str) -> String {
    table.to_ascii_lowercase()
}

#[async_trait]
impl TableStore for AzureTableStore {
    fn location(&self) -> String {
        self.client.endpoint.clone()
    }

    async fn create_table(&self, table: &str) -> Result<(), TableError> {
        validate_table_name(table)?;
        let op = "create a table";
        let body = serde_json::json!({ "TableName": addr(table) })
            .to_string()
            .into_bytes();
        let mut req = self
            .client
            .json_request(Method::Post, "Tables", body)
            .map_err(|why| backend(op, AzureTableError::Request { why }))?;
        req.insert_header("prefer", "return-no-content");
        match self.client.send_retrying(req).await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some("TableAlreadyExists") => Ok(()),
            Err(e) => Err(backend(
                op,
                AzureTableError::from_http(&self.client, table, None, &e),
            )),
        }
    }

    async fn delete_table(&self, table: &str) -> Result<(), TableError> {
        validate_table_name(table)?;
        let op = "delete a table";
        let req = self.request(
            op,
            Method::Delete,
            &format!("Tables('{}')", addr(table)),
            None,
        )?;
        let a = self.client.send_write(op, table, req).await;
        match a.result {
            Ok(_) => Ok(()),
            // Our earlier attempt deleted it.
            Err(e) if a.uncertain && status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.table_error(op, table, &e)),
        }
    }

    async fn write_one(&self, table: &str, op: BatchOp) -> Result<Option<ETag>, TableError> {
        validate_op(table, &op)?;
        let etag = self.send_one(table, &op).await?;
        if etag.is_none() && op.entity().is_some() {
            return Err(errors::no_etag(writes::op_label(&op), table));
        }
        Ok(etag)
    }

    async fn get(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Entity>, TableError> {
        validate_address(table, partition_key, row_key)?;
        let op = "read an entity";
        let path = odata::entity_path(&addr(table), partition_key, row_key);
        let req = self.request(op, Method::Get, &path, None)?;
        let resp = match self.client.send_retrying(req).await {
            Ok(r) => r,
            Err(e) if code_of(&e) == Some("TableNotFound") => {
                return Err(TableError::TableNotFound {
                    table: table.to_owned(),
                })
            }
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => {
                let keys = Some((partition_key, row_key));
                return Err(backend(
                    op,
                    AzureTableError::from_http(&self.client, table, keys, &e),
                ));
            }
        };
        let bad = errors::bad_response(op, table);
        let v: Value = serde_json::from_slice(resp.body().as_ref())
            .map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("body is not an object".into()))?;
        let etag = resp.headers().get_optional_str(&"etag".into());
        odata::parse_entity(obj, etag).map(Some).map_err(bad)
    }

    async fn query(
        &self,
        table: &str,
        query: &Query,
        continuation: Option<&Continuation>,
    ) -> Result<QueryPage, TableError> {
        validate_table_name(table)?;
        validate_query(query)?;
        let op = "query entities";
        let q = odata::query_string(query, continuation);
        let req = self.request(op, Method::Get, &format!("{}()", addr(table)), Some(&q))?;
        let resp = self
            .client
            .send_retrying(req)
            .await
            .map_err(|e| self.table_error(op, table, &e))?;
        let entities =
            odata::parse_query(resp.body().as_ref()).map_err(errors::bad_response(op, table))?;
        let header = |name: &'static str| resp.headers().get_optional_string(&name.into());
        let continuation = header("x-ms-continuation-nextpartitionkey").map(|pk| Continuation {
            next_partition_key: pk,
            next_row_key: header("x-ms-continuation-nextrowkey"),
        });
        Ok(QueryPage {
            entities: entities.into_iter().map(|e| query.project(e)).collect(),
            continuation,
        })
    }

    async fn batch(&self, table: &str, ops: &[BatchOp]) -> Result<Vec<Option<ETag>>, TableError> {
        validate_table_name(table)?;
        validate_batch(ops)?;
        self.run_batch(table, ops).await
    }
}

//! The Table service's REST calls on the `azure_core` pipeline: request
//! building, sending, and turning answers into `azure_core` errors the
//! store maps onto [`TableError`].
//!
//! Two pipelines share one transport and one authorization policy: reads
//! and idempotent calls go through the pipeline's own retry policy; writes
//! go through one without retries and are retried by
//! [`transport::attempt`](super::super::transport::attempt), which reports whether
//! an earlier attempt may have landed, so the store can judge a later
//! "already exists" or "condition not met" answer.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, RawResponse, Request,
    RetryOptions, StatusCode, Url,
};
use tracing::debug;

use super::super::auth::Redactor;
use super::super::transport::{self, describe, status_of, Attempted, RetrySettings};
use super::odata;
use super::AzureTableOptions;

/// The REST API version spoken. JSON payloads need 2013-08-15 or later.
const API_VERSION: &str = "2019-02-02";
/// The scope of an Entra ID token for Azure Storage.
pub(crate) const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
const ACCEPT: &str = "application/json;odata=minimalmetadata";

pub(super) struct Client {
    retrying: Pipeline,
    once: Pipeline,
    /// The table service URL, ending with `/`.
    pub endpoint: String,
    pub redactor: Redactor,
    pub retry: RetrySettings,
}

/// How a request is authorized.
pub(super) enum Auth {
    Policy(Arc<dyn Policy>),
    Token(Arc<dyn TokenCredential>),
}

impl Client {
    pub fn new(
        mut endpoint: Url,
        auth: Auth,
        redactor: Redactor,
        opts: &AzureTableOptions,
    ) -> Result<Client, String> {
        endpoint.set_query(None);
        if !endpoint.path().ends_with('/') {
            let p = format!("{}/", endpoint.path());
            endpoint.set_path(&p);
        }
        let transport = transport::transport(opts.connect_timeout, opts.read_timeout, &redactor)?;
        let auth: Arc<dyn Policy> = match auth {
            Auth::Policy(p) => p,
            Auth::Token(credential) => Arc::new(BearerTokenAuthorizationPolicy::new(
                credential,
                [STORAGE_SCOPE],
            )),
        };
        let pipeline = |retry: RetryOptions| {
            let options = ClientOptions {
                // Per try: every attempt is signed afresh.
                per_try_policies: vec![auth.clone()],
                retry,
                transport: Some(transport.clone()),
                ..Default::default()
            };
            Pipeline::new(
                option_env!("CARGO_PKG_NAME"),
                option_env!("CARGO_PKG_VERSION"),
                options,
                Vec::new(),
                Vec::new(),
                None,
            )
        };
        Ok(Client {
            retrying: pipeline(opts.retry.pipeline_policy()),
            once: pipeline(RetryOptions::none()),
            endpoint: endpoint.to_string(),
            redactor,
            retry: opts.retry.clone(),
        })
    }

    /// A request to `path` (below the endpoint, already encoded) with the
    /// headers every Table call carries.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Request, String> {
        let mut text = format!("{}{path}", self.endpoint);
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        let url = Url::parse(&text).map_err(|e| format!("bad request URL: {e}"))?;
        let mut r = Request::new(url, method);
        r.insert_header("x-ms-version", API_VERSION);
        r.insert_header("accept", ACCEPT);
        r.insert_header("dataserviceversion", "3.0");
        r.insert_header("maxdataserviceversion", "3.0;NetFx");
        Ok(r)
    }

    /// A request with a JSON body.
    pub fn json_request(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Request, String> {
        let mut r = self.request(method, path, None)?;
        r.insert_header("content-type", "application/json");
        r.set_body(body);
        Ok(r)
    }

    /// Sends a read or an idempotent call, retried by the pipeline. An
    /// answer other than 2xx is an error.
    pub async fn send_retrying(&self, mut req: Request) -> azure_core::Result<RawResponse> {
        send(&self.retrying, &mut req).await
    }

    /// Sends a write once per attempt, retrying transient failures here.
    pub async fn send_write(&self, op: &str, table: &str, req: Request) -> Attempted<RawResponse> {
        transport::attempt(&self.retry, &self.redactor, op, table, || {
            let mut req = req.clone();
            async move { send(&self.once, &mut req).await }
        })
        .await
    }

    /// The pipeline without retries (transport and authorization only).
    pub fn pipeline(&self) -> &Pipeline {
        &self.once
    }

    /// The error text for a caller or a log line: status, service code and
    /// message, or the transport failure; secrets removed.
    pub fn explain(&self, e: &azure_core::Error) -> String {
        self.redactor.redact(&describe(e))
    }
}

async fn send(pipeline: &Pipeline, req: &mut Request) -> azure_core::Result<RawResponse> {
    let options = PipelineSendOptions {
        skip_checks: true,
        ..Default::default()
    };
    let resp = pipeline.send(&Context::new(), req, Some(options)).await?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let e = http_error(
        resp.status(),
        resp.headers().get_optional_str(&"x-ms-error-code".into()),
        resp.body().as_ref(),
    );
    debug!(
        status = status_of(&e),
        code = transport::code_of(&e),
        "table service refused a request"
    );
    Err(e)
}

/// An `azure_core` HTTP error from a status, the error-code header and a
/// JSON (or other) error body: the code and the first line of the message.
pub(super) fn http_error(
    status: StatusCode,
    code_header: Option<&str>,
    body: &[u8],
) -> azure_core::Error {
    let (code, message) = odata::parse_error(body).unwrap_or((None, None));
    let code = code_header.map(str::to_owned).or(code);
    let message = match message {
        Some(m) => m,
        None => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    let first = message.lines().next().unwrap_or("").trim().to_owned();
    azure_core::Error::with_message(
        ErrorKind::HttpResponse {
            status,
            error_code: code,
            raw_response: None,
        },
        first,
    )
}

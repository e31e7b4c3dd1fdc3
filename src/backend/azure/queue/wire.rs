//! What goes over the wire to Azure Queue Storage and back: the message
//! body as XML, the service's times, and its errors as [`QueueError`]s.

use azure_core::http::headers::{HeaderName, Headers};
use azure_core::time::OffsetDateTime;
use chrono::{DateTime, Utc};

use crate::backend::queue::QueueError;

use super::super::transport::{code_of, status_of};

/// Why an Azure queue call failed, beyond what [`QueueError`]'s own
/// variants say. Carried as the source of [`QueueError::Backend`], so the
/// message names the queue and, through `Backend`, the operation.
#[derive(Debug, thiserror::Error)]
pub enum AzureQueueError {
    /// The store could not be set up: a setting is missing or malformed.
    #[error("{setting}: {why}")]
    Config { setting: &'static str, why: String },
    /// The service (or the way to it) failed. `detail` is the HTTP status,
    /// the service's error code and message, or the transport error, with
    /// every secret removed.
    #[error("queue {queue} at {location}: {detail}")]
    Service {
        queue: String,
        location: String,
        status: Option<u16>,
        code: Option<String>,
        detail: String,
    },
    /// The service answered something this store cannot read.
    #[error("queue {queue} at {location}: unexpected answer: {why}")]
    Answer {
        queue: String,
        location: String,
        why: String,
    },
}

pub(super) fn config(
    op: &'static str,
    setting: &'static str,
    why: impl Into<String>,
) -> QueueError {
    QueueError::Backend {
        op,
        source: Box::new(AzureQueueError::Config {
            setting,
            why: why.into(),
        }),
    }
}

/// Where a call went: enough to name it in an error.
pub(super) struct Target<'a> {
    pub op: &'static str,
    pub queue: &'a str,
    /// The message, for calls on one message.
    pub id: Option<&'a str>,
    pub location: &'a str,
}

impl Target<'_> {
    /// The trait's own error for the service's answer where there is one
    /// (queue or message not found, stale pop receipt), else `Backend`.
    /// `detail` is the already redacted description of `e`.
    pub fn error(&self, e: &azure_core::Error, detail: String) -> QueueError {
        let queue = self.queue.to_owned();
        match (status_of(e), code_of(e), self.id) {
            (Some(404), Some("QueueNotFound"), _) => QueueError::QueueNotFound { queue },
            (Some(404), Some("MessageNotFound"), Some(id)) => QueueError::MessageNotFound {
                queue,
                id: id.to_owned(),
            },
            (Some(400), Some("PopReceiptMismatch"), Some(id)) => QueueError::PopReceiptMismatch {
                queue,
                id: id.to_owned(),
            },
            (status, code, _) => {
                let hint = match status {
                    Some(401 | 403) => {
                        " (the service refused the credentials: check the account key, the SAS and its permissions, or the identity's role on the queue service)"
                    }
                    _ => "",
                };
                QueueError::Backend {
                    op: self.op,
                    source: Box::new(AzureQueueError::Service {
                        queue,
                        location: self.location.to_owned(),
                        status,
                        code: code.map(str::to_owned),
                        detail: format!("{detail}{hint}"),
                    }),
                }
            }
        }
    }

    pub fn answer(&self, why: impl Into<String>) -> QueueError {
        QueueError::Backend {
            op: self.op,
            source: Box::new(AzureQueueError::Answer {
                queue: self.queue.to_owned(),
                location: self.location.to_owned(),
                why: why.into(),
            }),
        }
    }

    /// A field the service always sends, or an error saying it did not.
    pub fn field<T>(&self, v: Option<T>, name: &str) -> Result<T, QueueError> {
        v.ok_or_else(|| self.answer(format!("no {name} in the answer")))
    }
}

/// The body of Put Message: `<QueueMessage><MessageText>…`, escaped here
/// rather than by the SDK's serializer, which escapes only `<>&'"`. XML 1.0
/// (§2.11) lets a parser turn a literal carriage return into a line feed;
/// Azurite keeps it, but the trait promises that any text
/// [`validate_message`](crate::backend::queue::validate_message) accepts
/// arrives unchanged, so `\r` travels as `&#13;`, which every conforming
/// parser reads back as `\r`.
pub(super) fn message_xml(body: &str) -> Vec<u8> {
    const OPEN: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>";
    const CLOSE: &str = "</MessageText></QueueMessage>";
    let mut out = String::with_capacity(OPEN.len() + body.len() + CLOSE.len() + 16);
    out.push_str(OPEN);
    for c in body.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out.push_str(CLOSE);
    out.into_bytes()
}

/// Azure marks a message that never expires with 9999-12-31T23:59:59.
pub(super) fn expiry(t: OffsetDateTime) -> Option<DateTime<Utc>> {
    (t.year() < 9999).then(|| chrono_time(t))
}

pub(super) fn chrono_time(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A header the service sends with an RFC 1123 date.
pub(super) fn header_time(
    target: &Target<'_>,
    headers: &Headers,
    name: &'static str,
) -> Result<DateTime<Utc>, QueueError> {
    let text = target.field(
        headers.get_optional_str(&HeaderName::from_static(name)),
        name,
    )?;
    azure_core::time::parse_rfc7231(text)
        .map(chrono_time)
        .map_err(|_| target.answer(format!("{name} is not a date: {text:?}")))
}

pub(super) fn header_str<'h>(
    target: &Target<'_>,
    headers: &'h Headers,
    name: &'static str,
) -> Result<&'h str, QueueError> {
    target.field(
        headers.get_optional_str(&HeaderName::from_static(name)),
        name,
    )
}

/// Whether `id` could be a message id: the service's are GUIDs. Anything
/// else names no message and must not reach the URL path, where the SDK
/// puts it unescaped.
pub(super) fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_escaped_for_xml() {
        let x = String::from_utf8(message_xml("a<b>&c\r\n\t'\"é")).unwrap();
        assert!(
            x.ends_with(
                "<QueueMessage><MessageText>a&lt;b&gt;&amp;c&#13;\n\t'\"é</MessageText></QueueMessage>"
            ),
            "{x}"
        );
    }

    #[test]
    fn ids() {
        assert!(plausible_id("4a8e7e5c-7b0d-4d7b-8d43-2a3b2c1d0e9f"));
        for bad in ["", "a/b", "../x", "a?b", "a b", &"a".repeat(65)] {
            assert!(!plausible_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn never_expires() {
        let never = azure_core::time::parse_rfc7231("Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
        assert_eq!(expiry(never), None);
        let t = azure_core::time::parse_rfc7231("Sat, 28 Nov 2026 04:26:41 GMT").unwrap();
        assert_eq!(expiry(t).map(|t| t.timestamp()), Some(1_795_840_001));
    }
}

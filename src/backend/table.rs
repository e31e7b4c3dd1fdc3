//! The read-model seam: an entity store shaped like Azure Table Storage.
//! Projectors keep their read models in it.
//!
//! Contract (checked by `tests/conformance/table.rs` against every
//! implementation):
//! - An entity is a PartitionKey, a RowKey and up to 252 typed properties.
//!   Every write gives it a new [`ETag`]; conditional writes ([`IfMatch`])
//!   fail with [`TableError::PreconditionFailed`] when the ETag moved on.
//! - Queries return entities in (PartitionKey, RowKey) order, in pages of at
//!   most 1,000, each with a continuation token until the last; following
//!   the tokens returns every match exactly once. A page may hold fewer
//!   entities than asked for (even none) and still have a token: Azure cuts
//!   pages at partition and time boundaries, so only a missing token ends a
//!   query.
//! - A batch (entity-group transaction) is atomic: at most 100 operations on
//!   distinct entities of one partition, under 4 MiB. If any operation fails
//!   nothing is written and the error names that operation's index.
//! - Every check Azure makes on names, keys, properties and batches is made
//!   here first (the `validate_*` functions), so both implementations refuse
//!   the same input with the same error before anything is sent.
//!
//! Keys are ordered by their UTF-8 bytes (Unicode code point order). Azure
//! agrees for keys below U+E000, so keep keys to ASCII or the BMP when the
//! order matters.
//!
//! `DateTime` values keep 100 ns precision (Azure's tick); finer digits are
//! dropped on write by both implementations, and the range is Azure's,
//! 1601-01-01 to 9999-12-31 UTC.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use uuid::Uuid;

pub use super::queue::BoxError;

/// Most operations in one batch.
pub const MAX_BATCH_OPERATIONS: usize = 100;
/// Batches must stay under this size (Azure counts the request payload;
/// we count [`entity_size`] of each operation's entity).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest entity, as Azure sizes it ([`entity_size`]).
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;
/// Most properties besides PartitionKey, RowKey and Timestamp.
pub const MAX_CUSTOM_PROPERTIES: usize = 252;
/// Longest PartitionKey or RowKey, in bytes as Azure stores keys: UTF-16,
/// so at most 512 UTF-16 units (512 ASCII characters, not 1,024). Azure
/// documents "1 KiB"; Azurite refuses a 513-unit key.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest property name, in characters.
pub const MAX_PROPERTY_NAME_CHARS: usize = 255;
/// Largest String value, in UTF-16 bytes (Azure stores UTF-16).
pub const MAX_STRING_UTF16_BYTES: usize = 64 * 1024;
/// Largest Binary value.
pub const MAX_BINARY_BYTES: usize = 64 * 1024;
/// Most entities in one query page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Names the store keeps for itself.
pub const RESERVED_PROPERTIES: [&str; 3] = ["PartitionKey", "RowKey", "Timestamp"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    PartitionKey,
    RowKey,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::PartitionKey => "PartitionKey",
            KeyKind::RowKey => "RowKey",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("invalid table name {name:?}: {why}")]
    InvalidTableName { name: String, why: &'static str },
    #[error("invalid ETag {etag:?}: it holds a control character")]
    InvalidETag { etag: String },
    #[error("table {table} does not exist")]
    TableNotFound { table: String },
    #[error("entity ({partition_key:?}, {row_key:?}) is not in table {table}")]
    EntityNotFound {
        table: String,
        partition_key: String,
        row_key: String,
    },
    #[error("entity ({partition_key:?}, {row_key:?}) already exists in table {table}")]
    AlreadyExists {
        table: String,
        partition_key: String,
        row_key: String,
    },
    #[error("entity ({partition_key:?}, {row_key:?}) in table {table} no longer has ETag {expected}: it changed since it was read")]
    PreconditionFailed {
        table: String,
        partition_key: String,
        row_key: String,
        expected: String,
    },
    #[error("invalid {kind} {key:?}: {why}")]
    InvalidKey {
        kind: KeyKind,
        key: String,
        why: String,
    },
    #[error("invalid property {name:?}: {why}")]
    InvalidProperty { name: String, why: String },
    #[error("entity ({partition_key:?}, {row_key:?}) has {count} custom properties, more than the {limit} allowed")]
    TooManyProperties {
        partition_key: String,
        row_key: String,
        count: usize,
        limit: usize,
    },
    #[error(
        "entity ({partition_key:?}, {row_key:?}) is {size} bytes, more than the {limit} allowed"
    )]
    EntityTooLarge {
        partition_key: String,
        row_key: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid query: {why}")]
    InvalidQuery { why: String },
    #[error("a batch needs at least one operation")]
    BatchEmpty,
    #[error("batch of {count} operations exceeds the limit of {limit}")]
    BatchTooManyOperations { count: usize, limit: usize },
    #[error("batch of {size} bytes exceeds the limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("batch operation {index} is on partition {partition_key:?}, but operation 0 is on {expected:?}: a batch must stay in one partition")]
    BatchMixedPartitions {
        index: usize,
        partition_key: String,
        expected: String,
    },
    #[error("batch operation {index} is on row {row_key:?}, like operation {first}: a batch may touch each entity once")]
    BatchDuplicateEntity {
        index: usize,
        first: usize,
        row_key: String,
    },
    #[error("batch operation {index} ({op}) failed, so the batch wrote nothing: {source}")]
    BatchOperationFailed {
        index: usize,
        op: &'static str,
        #[source]
        source: Box<TableError>,
    },
    #[error("table backend failed to {op}: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: BoxError,
    },
}

impl TableError {
    /// The error itself, or for a failed batch operation the operation's.
    pub fn root(&self) -> &TableError {
        match self {
            TableError::BatchOperationFailed { source, .. } => source.root(),
            e => e,
        }
    }
}

/// An opaque entity version. Changes on every write.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ETag(pub String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The condition of a replace, merge or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: any version, as long as the entity exists.
    Any,
    ETag(ETag),
}

impl IfMatch {
    /// The `If-Match` header value.
    pub fn header_value(&self) -> &str {
        match self {
            IfMatch::Any => "*",
            IfMatch::ETag(e) => &e.0,
        }
    }

    /// Whether an entity currently at `current` satisfies the condition.
    pub fn matches(&self, current: &ETag) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::ETag(e) => e == current,
        }
    }
}

impl From<ETag> for IfMatch {
    fn from(e: ETag) -> Self {
        IfMatch::ETag(e)
    }
}

/// A typed property value (the OData EDM types Azure Tables supports).
#[derive(Clone, Debug, PartialEq)]
pub enum Property {
    String(String),
    Int32(i32),
    Int64(i64),
    Double(f64),
    Bool(bool),
    /// UTC with 100 ns precision; finer digits are dropped on write.
    DateTime(DateTime<Utc>),
    Guid(Uuid),
    Binary(Vec<u8>),
}

impl Property {
    /// The EDM type name, as Azure's `@odata.type` annotation spells it.
    pub fn edm_type(&self) -> &'static str {
        match self {
            Property::String(_) => "Edm.String",
            Property::Int32(_) => "Edm.Int32",
            Property::Int64(_) => "Edm.Int64",
            Property::Double(_) => "Edm.Double",
            Property::Bool(_) => "Edm.Boolean",
            Property::DateTime(_) => "Edm.DateTime",
            Property::Guid(_) => "Edm.Guid",
            Property::Binary(_) => "Edm.Binary",
        }
    }

    /// Bytes Azure charges for the value in [`entity_size`].
    fn stored_size(&self) -> usize {
        match self {
            Property::String(s) => 4 + utf16_len(s) * 2,
            Property::Binary(b) => 4 + b.len(),
            Property::Int32(_) => 4,
            Property::Int64(_) | Property::Double(_) | Property::DateTime(_) => 8,
            Property::Bool(_) => 1,
            Property::Guid(_) => 16,
        }
    }

    /// The value as an OData (v3, Azure Tables) literal for `$filter`.
    pub fn to_odata_literal(&self) -> String {
        match self {
            Property::String(s) => format!("'{}'", s.replace('\'', "''")),
            Property::Int32(v) => v.to_string(),
            Property::Int64(v) => format!("{v}L"),
            Property::Double(v) => odata_double(*v),
            Property::Bool(v) => v.to_string(),
            Property::DateTime(t) => format!("datetime'{}'", format_datetime(t)),
            Property::Guid(g) => format!("guid'{}'", g.hyphenated()),
            Property::Binary(b) => {
                let mut s = String::with_capacity(3 + 2 * b.len());
                s.push_str("X'");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s.push('\'');
                s
            }
        }
    }

    /// Three-valued comparison for filters: `None` when the two values
    /// are of different types (Azure does not promote types: an Int64
    /// property never matches an Int32 literal) or not comparable (NaN).
    fn compare(&self, other: &Property) -> Option<Ordering> {
        use Property as P;
        match (self, other) {
            (P::String(a), P::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (P::Int32(a), P::Int32(b)) => Some(a.cmp(b)),
            (P::Int64(a), P::Int64(b)) => Some(a.cmp(b)),
            (P::Double(a), P::Double(b)) => a.partial_cmp(b),
            (P::Bool(a), P::Bool(b)) => Some(a.cmp(b)),
            (P::DateTime(a), P::DateTime(b)) => Some(truncate_to_tick(a).cmp(&truncate_to_tick(b))),
            (P::Guid(a), P::Guid(b)) => Some(a.cmp(b)),
            (P::Binary(a), P::Binary(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

fn odata_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "INF".into() } else { "-INF".into() };
    }
    // `{:?}` is the shortest exact round-trip form ("1.0", "1e300"); OData
    // wants a decimal point in the mantissa and an explicit exponent sign.
    let s = format!("{v:?}");
    match s.split_once('e') {
        None => s,
        Some((m, e)) => {
            let m = if m.contains('.') {
                m.to_owned()
            } else {
                format!("{m}.0")
            };
            let e = if e.starts_with('-') {
                e.to_owned()
            } else {
                format!("+{e}")
            };
            format!("{m}E{e}")
        }
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Earliest DateTime Azure stores.
pub fn min_datetime() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1601, 1, 1, 0, 0, 0).unwrap()
}

/// Latest DateTime Azure stores (the last tick of 9999).
pub fn max_datetime() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
        + chrono::Duration::nanoseconds(999_999_900)
}

/// Drops digits below Azure's 100 ns tick.
pub fn truncate_to_tick(t: &DateTime<Utc>) -> DateTime<Utc> {
    let ns = t.timestamp_subsec_nanos();
    *t - chrono::Duration::nanoseconds(i64::from(ns % 100))
}

/// RFC 3339 with exactly 7 fractional digits, as Azure writes DateTimes.
pub fn format_datetime(t: &DateTime<Utc>) -> String {
    let t = truncate_to_tick(t);
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // "...SS.nnnnnnnnnZ" -> "...SS.nnnnnnnZ"
    format!("{}Z", &s[..s.len() - 3])
}

/// An entity: keys, typed properties, and what the store maintains.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entity {
    pub partition_key: String,
    pub row_key: String,
    /// Custom properties by name (case-sensitive).
    pub properties: BTreeMap<String, Property>,
    /// Set by the store on reads; ignored on writes (pass an [`IfMatch`]).
    pub etag: Option<ETag>,
    /// Time of the last write, set by the store; ignored on writes.
    pub timestamp: Option<DateTime<Utc>>,
}

impl Entity {
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Self {
        Entity {
            partition_key: partition_key.into(),
            row_key: row_key.into(),
            ..Entity::default()
        }
    }

    /// Builder: sets a property.
    pub fn with(mut self, name: impl Into<String>, value: Property) -> Self {
        self.properties.insert(name.into(), value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Property> {
        self.properties.get(name)
    }

    /// The entity as written, without what the store maintains; for
    /// comparing what was written with what was read.
    pub fn content(&self) -> Entity {
        Entity {
            etag: None,
            timestamp: None,
            ..self.clone()
        }
    }
}

/// A field a filter can compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    PartitionKey,
    RowKey,
    Timestamp,
    Property(String),
}

impl Field {
    fn odata_name(&self) -> &str {
        match self {
            Field::PartitionKey => "PartitionKey",
            Field::RowKey => "RowKey",
            Field::Timestamp => "Timestamp",
            Field::Property(p) => p,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn odata(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
        }
    }
}

/// A `$filter` as a typed tree, so no caller builds OData strings by hand
/// and the local store can evaluate exactly what Azure would.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Compare {
        field: Field,
        op: CmpOp,
        value: Property,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    pub fn cmp(field: Field, op: CmpOp, value: Property) -> Filter {
        Filter::Compare { field, op, value }
    }

    pub fn partition_key_eq(pk: impl Into<String>) -> Filter {
        Filter::cmp(Field::PartitionKey, CmpOp::Eq, Property::String(pk.into()))
    }

    pub fn row_key(op: CmpOp, rk: impl Into<String>) -> Filter {
        Filter::cmp(Field::RowKey, op, Property::String(rk.into()))
    }

    pub fn property(name: impl Into<String>, op: CmpOp, value: Property) -> Filter {
        Filter::cmp(Field::Property(name.into()), op, value)
    }

    pub fn property_eq(name: impl Into<String>, value: Property) -> Filter {
        Filter::property(name, CmpOp::Eq, value)
    }

    pub fn and(self, other: Filter) -> Filter {
        Filter::And(Box::new(self), Box::new(other))
    }

    pub fn or(self, other: Filter) -> Filter {
        Filter::Or(Box::new(self), Box::new(other))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }

    /// The `$filter` expression (before URL encoding).
    pub fn to_odata(&self) -> String {
        match self {
            Filter::Compare { field, op, value } => format!(
                "{} {} {}",
                field.odata_name(),
                op.odata(),
                value.to_odata_literal()
            ),
            Filter::And(a, b) => format!("({}) and ({})", a.to_odata(), b.to_odata()),
            Filter::Or(a, b) => format!("({}) or ({})", a.to_odata(), b.to_odata()),
            Filter::Not(a) => format!("not ({})", a.to_odata()),
        }
    }

    /// Whether `e` matches. A comparison with a property the entity lacks,
    /// or of another type, is unknown rather than false, and an unknown
    /// result excludes the entity: Azure returns no entity lacking `P` for
    /// `P ne 'x'`, nor for `not (P eq 'x')`.
    pub fn matches(&self, e: &Entity) -> bool {
        self.eval(e) == Some(true)
    }

    fn eval(&self, e: &Entity) -> Option<bool> {
        match self {
            Filter::Compare { field, op, value } => {
                let ord = match field {
                    Field::PartitionKey => str_cmp(&e.partition_key, value),
                    Field::RowKey => str_cmp(&e.row_key, value),
                    Field::Timestamp => match (e.timestamp, value) {
                        (Some(t), Property::DateTime(_)) => Property::DateTime(t).compare(value),
                        _ => None,
                    },
                    Field::Property(p) => e.properties.get(p)?.compare(value),
                }?;
                Some(op.holds(ord))
            }
            Filter::And(a, b) => match (a.eval(e), b.eval(e)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval(e), b.eval(e)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval(e).map(|v| !v),
        }
    }

    /// Bounds on (PartitionKey, RowKey) that every match lies within,
    /// from the comparisons on keys joined by `and` at the top; a store
    /// scans only that range and still evaluates the whole filter.
    pub fn key_bounds(&self) -> KeyBounds {
        let mut b = KeyBounds::default();
        self.narrow(&mut b);
        b
    }

    fn narrow(&self, b: &mut KeyBounds) {
        match self {
            Filter::And(x, y) => {
                x.narrow(b);
                y.narrow(b);
            }
            Filter::Compare {
                field: Field::PartitionKey,
                op: CmpOp::Eq,
                value: Property::String(pk),
            } if b.partition_key.is_none() => b.partition_key = Some(pk.clone()),
            Filter::Compare {
                field: Field::RowKey,
                op,
                value: Property::String(rk),
            } => match op {
                CmpOp::Eq => {
                    b.raise_low(rk, true);
                    b.lower_high(rk, true);
                }
                CmpOp::Gt => b.raise_low(rk, false),
                CmpOp::Ge => b.raise_low(rk, true),
                CmpOp::Lt => b.lower_high(rk, false),
                CmpOp::Le => b.lower_high(rk, true),
                CmpOp::Ne => {}
            },
            _ => {}
        }
    }
}

fn str_cmp(key: &str, value: &Property) -> Option<Ordering> {
    match value {
        Property::String(v) => Some(key.as_bytes().cmp(v.as_bytes())),
        _ => None,
    }
}

/// See [`Filter::key_bounds`]. Row-key bounds apply only within the one
/// partition, when there is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyBounds {
    pub partition_key: Option<String>,
    /// (row key, inclusive)
    pub row_low: Option<(String, bool)>,
    /// (row key, inclusive)
    pub row_high: Option<(String, bool)>,
}

impl KeyBounds {
    fn raise_low(&mut self, rk: &str, incl: bool) {
        let tighter = match &self.row_low {
            None => true,
            Some((cur, cur_incl)) => rk > cur.as_str() || (rk == cur && *cur_incl && !incl),
        };
        if tighter {
            self.row_low = Some((rk.to_owned(), incl));
        }
    }

    fn lower_high(&mut self, rk: &str, incl: bool) {
        let tighter = match &self.row_high {
            None => true,
            Some((cur, cur_incl)) => rk < cur.as_str() || (rk == cur && *cur_incl && !incl),
        };
        if tighter {
            self.row_high = Some((rk.to_owned(), incl));
        }
    }

    /// Whether `rk` is past the upper row-key bound.
    pub fn row_above(&self, rk: &str) -> bool {
        match &self.row_high {
            None => false,
            Some((h, incl)) => rk > h.as_str() || (!incl && rk == h),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    pub filter: Option<Filter>,
    /// Page size, 1 to 1,000; `None`: 1,000. Not a limit on the whole query.
    pub top: Option<u32>,
    /// Custom properties to return (`$select`); `None`: all. Keys, ETag and
    /// Timestamp always come back (the Azure store adds PartitionKey and
    /// RowKey to `$select`); a selected property an entity lacks is absent
    /// from it (Azure answers it as null, which the Azure store drops).
    pub select: Option<Vec<String>>,
}

impl Query {
    pub fn filter(filter: Filter) -> Query {
        Query {
            filter: Some(filter),
            ..Query::default()
        }
    }

    pub fn page_size(&self) -> usize {
        self.top.unwrap_or(MAX_PAGE_SIZE) as usize
    }

    /// Cuts `e`'s properties down to the selected ones.
    pub fn project(&self, mut e: Entity) -> Entity {
        if let Some(sel) = &self.select {
            e.properties.retain(|name, _| sel.iter().any(|s| s == name));
        }
        e
    }
}

/// Where the next page starts (Azure's NextPartitionKey / NextRowKey).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuation {
    pub next_partition_key: String,
    pub next_row_key: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryPage {
    pub entities: Vec<Entity>,
    /// `None`: this was the last page.
    pub continuation: Option<Continuation>,
}

/// One operation of an entity-group transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchOp {
    Insert(Entity),
    Replace(Entity, IfMatch),
    Merge(Entity, IfMatch),
    InsertOrReplace(Entity),
    InsertOrMerge(Entity),
    Delete {
        partition_key: String,
        row_key: String,
        if_match: IfMatch,
    },
}

impl BatchOp {
    pub fn keys(&self) -> (&str, &str) {
        match self {
            BatchOp::Insert(e)
            | BatchOp::Replace(e, _)
            | BatchOp::Merge(e, _)
            | BatchOp::InsertOrReplace(e)
            | BatchOp::InsertOrMerge(e) => (&e.partition_key, &e.row_key),
            BatchOp::Delete {
                partition_key,
                row_key,
                ..
            } => (partition_key, row_key),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            BatchOp::Insert(_) => "insert",
            BatchOp::Replace(..) => "replace",
            BatchOp::Merge(..) => "merge",
            BatchOp::InsertOrReplace(_) => "insert or replace",
            BatchOp::InsertOrMerge(_) => "insert or merge",
            BatchOp::Delete { .. } => "delete",
        }
    }

    /// The operation's `If-Match` condition, where it has one.
    pub fn condition(&self) -> Option<&IfMatch> {
        match self {
            BatchOp::Replace(_, m) | BatchOp::Merge(_, m) | BatchOp::Delete { if_match: m, .. } => {
                Some(m)
            }
            _ => None,
        }
    }

    pub fn entity(&self) -> Option<&Entity> {
        match self {
            BatchOp::Insert(e)
            | BatchOp::Replace(e, _)
            | BatchOp::Merge(e, _)
            | BatchOp::InsertOrReplace(e)
            | BatchOp::InsertOrMerge(e) => Some(e),
            BatchOp::Delete { .. } => None,
        }
    }
}

#[async_trait]
pub trait TableStore: Send + Sync + fmt::Debug {
    /// Human-readable location, for logs and errors (never secrets).
    fn location(&self) -> String;

    /// Creates the table; succeeds if it exists already. Table names are
    /// case-insensitive.
    async fn create_table(&self, table: &str) -> Result<(), TableError>;
    /// Deletes the table and every entity in it.
    async fn delete_table(&self, table: &str) -> Result<(), TableError>;

    /// Applies one operation on its own, not in a batch: the write that
    /// `insert`, `replace`, `merge`, the upserts and `delete` are made of.
    /// Checks the operation first ([`validate_op`]). Returns the new ETag:
    /// one for every write of an entity, `None` for a delete.
    async fn write_one(&self, table: &str, op: BatchOp) -> Result<Option<ETag>, TableError>;

    /// The entity with its ETag and Timestamp, or `None`.
    async fn get(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Entity>, TableError>;
    /// Adds an entity; [`TableError::AlreadyExists`] if its keys are taken.
    async fn insert(&self, table: &str, entity: &Entity) -> Result<ETag, TableError> {
        let op = BatchOp::Insert(entity.clone());
        entity_etag(self.write_one(table, op).await?)
    }
    /// Replaces the whole entity if it exists and matches `if_match`.
    async fn replace(
        &self,
        table: &str,
        entity: &Entity,
        if_match: &IfMatch,
    ) -> Result<ETag, TableError> {
        let op = BatchOp::Replace(entity.clone(), if_match.clone());
        entity_etag(self.write_one(table, op).await?)
    }
    /// Sets the given properties, keeping the others, if the entity exists
    /// and matches `if_match`.
    async fn merge(
        &self,
        table: &str,
        entity: &Entity,
        if_match: &IfMatch,
    ) -> Result<ETag, TableError> {
        let op = BatchOp::Merge(entity.clone(), if_match.clone());
        entity_etag(self.write_one(table, op).await?)
    }
    async fn insert_or_replace(&self, table: &str, entity: &Entity) -> Result<ETag, TableError> {
        let op = BatchOp::InsertOrReplace(entity.clone());
        entity_etag(self.write_one(table, op).await?)
    }
    async fn insert_or_merge(&self, table: &str, entity: &Entity) -> Result<ETag, TableError> {
        let op = BatchOp::InsertOrMerge(entity.clone());
        entity_etag(self.write_one(table, op).await?)
    }
    /// Deletes the entity if it exists and matches `if_match`.
    async fn delete(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
        if_match: &IfMatch,
    ) -> Result<(), TableError> {
        let op = BatchOp::Delete {
            partition_key: partition_key.to_owned(),
            row_key: row_key.to_owned(),
            if_match: if_match.clone(),
        };
        self.write_one(table, op).await.map(|_| ())
    }

    /// One page of matches in (PartitionKey, RowKey) order, starting at
    /// `continuation` (from the previous page) or at the beginning.
    async fn query(
        &self,
        table: &str,
        query: &Query,
        continuation: Option<&Continuation>,
    ) -> Result<QueryPage, TableError>;

    /// Applies all operations or none. Returns each operation's new ETag
    /// (`None` for deletes), in order.
    async fn batch(&self, table: &str, ops: &[BatchOp]) -> Result<Vec<Option<ETag>>, TableError>;

    /// Every match, following continuations to the end.
    async fn query_all(&self, table: &str, query: &Query) -> Result<Vec<Entity>, TableError> {
        let mut all = Vec::new();
        let mut next: Option<Continuation> = None;
        loop {
            let page = self.query(table, query, next.as_ref()).await?;
            all.extend(page.entities);
            match page.continuation {
                Some(c) => next = Some(c),
                None => return Ok(all),
            }
        }
    }
}

/// Azure's table name rules: 3 to 63 ASCII letters and digits, starting
/// with a letter; "tables" is reserved. Names are case-insensitive.
pub fn validate_table_name(name: &str) -> Result<(), TableError> {
    let bad = |why| {
        Err(TableError::InvalidTableName {
            name: name.to_owned(),
            why,
        })
    };
    if !(3..=63).contains(&name.len()) {
        return bad("must be 3 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return bad("only letters A-Z, a-z and digits are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphabetic() {
        return bad("must start with a letter");
    }
    if name.eq_ignore_ascii_case("tables") {
        return bad("\"tables\" is reserved");
    }
    Ok(())
}

/// An entity's address: its table name and both keys.
pub fn validate_address(table: &str, partition_key: &str, row_key: &str) -> Result<(), TableError> {
    validate_table_name(table)?;
    validate_key(KeyKind::PartitionKey, partition_key)?;
    validate_key(KeyKind::RowKey, row_key)
}

/// Everything checked before one operation is written on its own: the
/// table name, the entity (or a delete's keys) and the ETag it is
/// conditional on, which goes into a header as it is.
pub fn validate_op(table: &str, op: &BatchOp) -> Result<(), TableError> {
    validate_table_name(table)?;
    if let Some(IfMatch::ETag(ETag(tag))) = op.condition() {
        if tag.chars().any(char::is_control) {
            return Err(TableError::InvalidETag { etag: tag.clone() });
        }
    }
    match op.entity() {
        Some(e) => validate_entity(e).map(|_| ()),
        None => {
            let (pk, rk) = op.keys();
            validate_address(table, pk, rk)
        }
    }
}

/// The ETag of a write of an entity, which a store always gives.
fn entity_etag(etag: Option<ETag>) -> Result<ETag, TableError> {
    etag.ok_or_else(|| TableError::Backend {
        op: "write an entity",
        source: "the write succeeded but the store gave no ETag".into(),
    })
}

/// Azure's key rules: at most 1 KiB in UTF-16 (512 units), without `/ \ # ?` or control
/// characters (U+0000-U+001F, U+007F-U+009F). Empty keys are allowed.
pub fn validate_key(kind: KeyKind, key: &str) -> Result<(), TableError> {
    let bad = |why: String| {
        Err(TableError::InvalidKey {
            kind,
            key: key.to_owned(),
            why,
        })
    };
    let size = utf16_len(key) * 2;
    if size > MAX_KEY_BYTES {
        return bad(format!(
            "{size} bytes in UTF-16, more than the {MAX_KEY_BYTES} allowed ({} UTF-16 units)",
            MAX_KEY_BYTES / 2
        ));
    }
    if let Some((i, c)) = key
        .char_indices()
        .find(|&(_, c)| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
    {
        return bad(format!(
            "character U+{:04X} at byte {i} is not allowed (no / \\ # ? or control characters)",
            c as u32
        ));
    }
    Ok(())
}

/// Property names are C#-style identifiers of at most 255 characters,
/// other than the reserved PartitionKey, RowKey and Timestamp.
pub fn validate_property_name(name: &str) -> Result<(), TableError> {
    let bad = |why: &str| {
        Err(TableError::InvalidProperty {
            name: name.to_owned(),
            why: why.to_owned(),
        })
    };
    let n = name.chars().count();
    if n == 0 || n > MAX_PROPERTY_NAME_CHARS {
        return bad("a name must be 1 to 255 characters long");
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('0');
    if !(first == '_' || first.is_alphabetic()) {
        return bad("a name must start with a letter or '_'");
    }
    if !chars.all(|c| c == '_' || c.is_alphanumeric()) {
        return bad("a name may hold only letters, digits and '_'");
    }
    if RESERVED_PROPERTIES.contains(&name) {
        return bad("the name is reserved for the store");
    }
    Ok(())
}

/// Type-specific limits on a value.
pub fn validate_value(name: &str, value: &Property) -> Result<(), TableError> {
    let bad = |why: String| {
        Err(TableError::InvalidProperty {
            name: name.to_owned(),
            why,
        })
    };
    match value {
        Property::String(s) => {
            let size = utf16_len(s) * 2;
            if size > MAX_STRING_UTF16_BYTES {
                return bad(format!(
                    "string of {size} UTF-16 bytes exceeds the {MAX_STRING_UTF16_BYTES}-byte limit"
                ));
            }
        }
        Property::Binary(b) if b.len() > MAX_BINARY_BYTES => {
            return bad(format!(
                "binary of {} bytes exceeds the {MAX_BINARY_BYTES}-byte limit",
                b.len()
            ));
        }
        Property::DateTime(t) if *t < min_datetime() || *t > max_datetime() => {
            return bad(format!(
                "date {t} is outside Azure's range 1601-01-01 to 9999-12-31"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Azure's size of an entity: 4 bytes, plus 2 bytes a UTF-16 unit of both
/// keys, plus per property 8 bytes, 2 a UTF-16 unit of its name and its
/// value's size (String 4 + 2 a unit, Binary 4 + its length, fixed sizes
/// for the rest).
pub fn entity_size(e: &Entity) -> usize {
    4 + (utf16_len(&e.partition_key) + utf16_len(&e.row_key)) * 2
        + e.properties
            .iter()
            .map(|(n, v)| 8 + utf16_len(n) * 2 + v.stored_size())
            .sum::<usize>()
}

/// Everything Azure checks on an entity to be written. Returns its size.
pub fn validate_entity(e: &Entity) -> Result<usize, TableError> {
    validate_key(KeyKind::PartitionKey, &e.partition_key)?;
    validate_key(KeyKind::RowKey, &e.row_key)?;
    if e.properties.len() > MAX_CUSTOM_PROPERTIES {
        return Err(TableError::TooManyProperties {
            partition_key: e.partition_key.clone(),
            row_key: e.row_key.clone(),
            count: e.properties.len(),
            limit: MAX_CUSTOM_PROPERTIES,
        });
    }
    for (name, value) in &e.properties {
        validate_property_name(name)?;
        validate_value(name, value)?;
    }
    let size = entity_size(e);
    if size > MAX_ENTITY_BYTES {
        return Err(TableError::EntityTooLarge {
            partition_key: e.partition_key.clone(),
            row_key: e.row_key.clone(),
            size,
            limit: MAX_ENTITY_BYTES,
        });
    }
    Ok(size)
}

/// Checks the page size, the selected names and the filter's field names
/// and value types.
pub fn validate_query(q: &Query) -> Result<(), TableError> {
    let bad = |why: String| Err(TableError::InvalidQuery { why });
    if let Some(top) = q.top {
        if !(1..=MAX_PAGE_SIZE).contains(&top) {
            return bad(format!("top is {top}, out of range 1..={MAX_PAGE_SIZE}"));
        }
    }
    if let Some(sel) = &q.select {
        if sel.is_empty() {
            return bad("select names no property; use None to select all".into());
        }
        for name in sel {
            if !RESERVED_PROPERTIES.contains(&name.as_str()) {
                validate_property_name(name)
                    .map_err(|e| TableError::InvalidQuery { why: e.to_string() })?;
            }
        }
    }
    if let Some(f) = &q.filter {
        validate_filter(f)?;
    }
    Ok(())
}

fn validate_filter(f: &Filter) -> Result<(), TableError> {
    match f {
        Filter::Compare { field, value, .. } => {
            let ok = match field {
                Field::PartitionKey | Field::RowKey => matches!(value, Property::String(_)),
                Field::Timestamp => matches!(value, Property::DateTime(_)),
                Field::Property(name) => {
                    validate_property_name(name)
                        .map_err(|e| TableError::InvalidQuery { why: e.to_string() })?;
                    true
                }
            };
            if !ok {
                return Err(TableError::InvalidQuery {
                    why: format!(
                        "{} cannot be compared with an {} value",
                        field.odata_name(),
                        value.edm_type()
                    ),
                });
            }
            validate_value(field.odata_name(), value)
                .map_err(|e| TableError::InvalidQuery { why: e.to_string() })
        }
        Filter::And(a, b) | Filter::Or(a, b) => {
            validate_filter(a)?;
            validate_filter(b)
        }
        Filter::Not(a) => validate_filter(a),
    }
}

/// Everything Azure checks on a batch before running it: 1 to 100
/// operations, one partition, each entity once, each operation valid, under
/// 4 MiB in all. Errors about one operation name its index.
pub fn validate_batch(ops: &[BatchOp]) -> Result<(), TableError> {
    if ops.is_empty() {
        return Err(TableError::BatchEmpty);
    }
    if ops.len() > MAX_BATCH_OPERATIONS {
        return Err(TableError::BatchTooManyOperations {
            count: ops.len(),
            limit: MAX_BATCH_OPERATIONS,
        });
    }
    let expected = ops[0].keys().0;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut total = 0usize;
    for (index, op) in ops.iter().enumerate() {
        let (pk, rk) = op.keys();
        let fail = |source| TableError::BatchOperationFailed {
            index,
            op: op.name(),
            source: Box::new(source),
        };
        // An ETag goes into a sub-request's header lines as it is: a line
        // break in one would add headers of its own.
        if let Some(IfMatch::ETag(ETag(tag))) = op.condition() {
            if tag.chars().any(char::is_control) {
                return Err(fail(TableError::InvalidETag { etag: tag.clone() }));
            }
        }
        match op.entity() {
            Some(e) => total += validate_entity(e).map_err(fail)?,
            None => {
                validate_key(KeyKind::PartitionKey, pk).map_err(fail)?;
                validate_key(KeyKind::RowKey, rk).map_err(fail)?;
                total += entity_size(&Entity::new(pk, rk));
            }
        }
        if pk != expected {
            return Err(TableError::BatchMixedPartitions {
                index,
                partition_key: pk.to_owned(),
                expected: expected.to_owned(),
            });
        }
        if let Some(&first) = seen.get(rk) {
            return Err(TableError::BatchDuplicateEntity {
                index,
                first,
                row_key: rk.to_owned(),
            });
        }
        seen.insert(rk, index);
    }
    if total >= MAX_BATCH_BYTES {
        return Err(TableError::BatchTooLarge {
            size: total,
            limit: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_refuses_an_etag_that_would_add_header_lines() {
        let sneaky = IfMatch::ETag(ETag("W/\"1\"\r\nIf-Match: *".into()));
        let ops = [BatchOp::Merge(Entity::new("p", "r"), sneaky)];
        match validate_batch(&ops) {
            Err(TableError::BatchOperationFailed {
                index: 0, source, ..
            }) => {
                assert!(
                    matches!(*source, TableError::InvalidETag { .. }),
                    "{source}"
                )
            }
            other => panic!("{other:?}"),
        }
        let fine = [BatchOp::Merge(
            Entity::new("p", "r"),
            IfMatch::ETag(ETag("W/\"1\"".into())),
        )];
        validate_batch(&fine).unwrap();
    }

    fn s(v: &str) -> Property {
        Property::String(v.into())
    }

    #[test]
    fn odata_rendering() {
        let f = Filter::partition_key_eq("o'k")
            .and(Filter::row_key(CmpOp::Ge, "a"))
            .and(Filter::row_key(CmpOp::Lt, "b"))
            .and(Filter::property_eq("N", Property::Int64(-5)).not());
        assert_eq!(
            f.to_odata(),
            "(((PartitionKey eq 'o''k') and (RowKey ge 'a')) and (RowKey lt 'b')) and (not (N eq -5L))"
        );
        let t = Utc.with_ymd_and_hms(2024, 2, 29, 12, 0, 1).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(
            Property::DateTime(t).to_odata_literal(),
            "datetime'2024-02-29T12:00:01.1234567Z'"
        );
        assert_eq!(Property::Int32(7).to_odata_literal(), "7");
        assert_eq!(Property::Double(1.0).to_odata_literal(), "1.0");
        assert_eq!(Property::Double(1e300).to_odata_literal(), "1.0E+300");
        assert_eq!(Property::Double(-2.5e-7).to_odata_literal(), "-2.5E-7");
        assert_eq!(
            Property::Double(f64::NEG_INFINITY).to_odata_literal(),
            "-INF"
        );
        assert_eq!(Property::Bool(true).to_odata_literal(), "true");
        assert_eq!(
            Property::Binary(vec![0, 0xab]).to_odata_literal(),
            "X'00ab'"
        );
        assert_eq!(
            Property::Guid(Uuid::nil()).to_odata_literal(),
            "guid'00000000-0000-0000-0000-000000000000'"
        );
    }

    #[test]
    fn filter_evaluation_is_three_valued() {
        let e = Entity::new("p", "r").with("A", Property::Int32(1));
        let a_eq_1 = Filter::property_eq("A", Property::Int32(1));
        assert!(a_eq_1.matches(&e));
        // No promotion between Int32 and Int64.
        assert!(!Filter::property_eq("A", Property::Int64(1)).matches(&e));
        // Missing property: neither `ne` nor `not eq` matches.
        assert!(!Filter::property("B", CmpOp::Ne, s("x")).matches(&e));
        assert!(!Filter::property_eq("B", s("x")).not().matches(&e));
        // ...but an `or` with a true side does.
        assert!(Filter::property_eq("B", s("x"))
            .or(a_eq_1.clone())
            .matches(&e));
        assert!(!Filter::property_eq("B", s("x")).and(a_eq_1).matches(&e));
        assert!(Filter::row_key(CmpOp::Le, "r").matches(&e));
        assert!(!Filter::row_key(CmpOp::Lt, "r").matches(&e));
    }

    #[test]
    fn key_bounds() {
        let f = Filter::partition_key_eq("p")
            .and(Filter::row_key(CmpOp::Ge, "b"))
            .and(Filter::row_key(CmpOp::Gt, "a"))
            .and(Filter::row_key(CmpOp::Lt, "m"))
            .and(Filter::row_key(CmpOp::Le, "m"));
        let b = f.key_bounds();
        assert_eq!(b.partition_key.as_deref(), Some("p"));
        assert_eq!(b.row_low, Some(("b".into(), true)));
        assert_eq!(b.row_high, Some(("m".into(), false)));
        assert!(b.row_above("m") && !b.row_above("l"));
        // Keys under an `or` narrow nothing.
        let f = Filter::partition_key_eq("p").or(Filter::partition_key_eq("q"));
        assert_eq!(f.key_bounds(), KeyBounds::default());
    }

    #[test]
    fn names_and_keys() {
        validate_table_name("Abc123").unwrap();
        for bad in ["ab", "1abc", "ab-c", "Tables", &"a".repeat(64)] {
            assert!(validate_table_name(bad).is_err(), "{bad}");
        }
        validate_key(KeyKind::RowKey, "").unwrap();
        validate_key(KeyKind::RowKey, &"k".repeat(MAX_KEY_BYTES / 2)).unwrap();
        validate_key(KeyKind::RowKey, &"é".repeat(MAX_KEY_BYTES / 2)).unwrap();
        assert!(validate_key(KeyKind::RowKey, &"😀".repeat(MAX_KEY_BYTES / 4 + 1)).is_err());
        for bad in ["a/b", "a\\b", "a#b", "a?b", "a\tb", "a\u{7f}", "a\u{9f}"] {
            assert!(validate_key(KeyKind::PartitionKey, bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(KeyKind::RowKey, &"k".repeat(MAX_KEY_BYTES / 2 + 1)).is_err());
        validate_property_name("_a1").unwrap();
        validate_property_name("Größe").unwrap();
        for bad in [
            "",
            "1a",
            "a-b",
            "a.b",
            "RowKey",
            "Timestamp",
            &"a".repeat(256),
        ] {
            assert!(validate_property_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        let e = Entity::new("pk", "rk")
            .with("S", s("abc"))
            .with("B", Property::Binary(vec![1, 2]))
            .with("I", Property::Int32(1));
        // 4 + (2+2)*2 + (8+2+4+6) + (8+2+4+2) + (8+2+4)
        assert_eq!(entity_size(&e), 4 + 8 + 20 + 16 + 14);
        let big = Entity::new("p", "r").with("S", s(&"x".repeat(32 * 1024 + 1)));
        assert!(matches!(
            validate_entity(&big),
            Err(TableError::InvalidProperty { .. })
        ));
        let mut many = Entity::new("p", "r");
        for i in 0..=MAX_CUSTOM_PROPERTIES {
            many = many.with(format!("P{i}"), Property::Bool(true));
        }
        assert!(matches!(
            validate_entity(&many),
            Err(TableError::TooManyProperties {
                count: 253,
                limit: 252,
                ..
            })
        ));
    }

    #[test]
    fn datetime_limits() {
        let ok = Property::DateTime(min_datetime());
        validate_value("T", &ok).unwrap();
        validate_value("T", &Property::DateTime(max_datetime())).unwrap();
        let early = min_datetime() - chrono::Duration::nanoseconds(100);
        assert!(validate_value("T", &Property::DateTime(early)).is_err());
        assert_eq!(
            format_datetime(&max_datetime()),
            "9999-12-31T23:59:59.9999999Z"
        );
        let t = Utc.timestamp_opt(0, 123_456_789).unwrap();
        assert_eq!(truncate_to_tick(&t).timestamp_subsec_nanos(), 123_456_700);
    }
}

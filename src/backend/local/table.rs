//! The embedded table store: Azure Table Storage semantics on one redb file.
//!
//! Layout:
//! - `tables`: lowercased name -> name as created (names are
//!   case-insensitive, as in Azure).
//! - `entities`: (lowercased table, PartitionKey, RowKey) -> record (ETag
//!   number, timestamp, typed properties). redb orders the tuple keys
//!   element by element, by bytes, which is the (PartitionKey, RowKey)
//!   order queries promise, so a query is one range scan.
//! - `meta`: the next ETag number. ETags are `W/"<n>"` for a counter kept in
//!   the file, so no two writes ever share one, even across restarts.
//!
//! Every write, a batch included, is one redb write transaction: a batch
//! whose operation fails is dropped uncommitted, leaving nothing behind.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::{blocking, open_db, Corrupt, Reader};
use crate::backend::table::{
    truncate_to_tick, validate_address, validate_batch, validate_entity, validate_op,
    validate_query, validate_table_name, BatchOp, Continuation, ETag, Entity, IfMatch, Property,
    Query, QueryPage, TableError, TableStore,
};
use crate::time::now_us;

const TABLES: TableDefinition<&str, &str> = TableDefinition::new("tables");
const ENTITIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entities");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ETAG: &str = "next_etag";

/// The database file inside the store's directory.
pub const TABLE_DB_FILE: &str = "tables.redb";

const TICKS_PER_SEC: i64 = 10_000_000;

#[derive(Clone)]
pub struct LocalTableStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl fmt::Debug for LocalTableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTableStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(op: &'static str) -> impl FnOnce(redb::Error) -> TableError {
    move |e| TableError::Backend {
        op,
        source: Box::new(e),
    }
}

fn corrupt(op: &'static str) -> impl FnOnce(Corrupt) -> TableError {
    move |e| TableError::Backend {
        op,
        source: Box::new(e),
    }
}

fn panicked(op: &'static str) -> impl FnOnce(String) -> TableError {
    move |msg| TableError::Backend {
        op,
        source: format!("task panicked: {msg}").into(),
    }
}

/// Shorthand: any redb error type into [`TableError::Backend`].
macro_rules! db {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| backend($op)(e.into()))
    };
}

impl LocalTableStore {
    /// Opens the store in `dir` (created if need be) on the blocking pool.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, TableError> {
        let dir = dir.as_ref().to_owned();
        blocking(panicked("open"), move || Self::open_blocking(&dir)).await
    }

    /// Opens the store in `dir`, blocking the calling thread.
    pub fn open_blocking(dir: &Path) -> Result<Self, TableError> {
        let op = "open the table database";
        let (db, path) = open_db(dir, TABLE_DB_FILE).map_err(backend(op))?;
        // Create every table up front so readers never meet a missing one.
        let txn = db!(op, db.begin_write())?;
        db!(op, txn.open_table(TABLES))?;
        db!(op, txn.open_table(ENTITIES))?;
        db!(op, txn.open_table(META))?;
        db!(op, txn.commit())?;
        Ok(LocalTableStore { db, path })
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::Database) -> Result<T, TableError> + Send + 'static,
    ) -> Result<T, TableError> {
        let db = self.db.clone();
        blocking(panicked(op), move || f(&db)).await
    }

    /// Runs `ops` in one write transaction; with `in_batch`, an operation's
    /// error is wrapped with its index.
    async fn write(
        &self,
        table: &str,
        ops: Vec<BatchOp>,
        in_batch: bool,
    ) -> Result<Vec<Option<ETag>>, TableError> {
        validate_table_name(table)?;
        let table = table.to_owned();
        let op = if in_batch {
            "run a batch"
        } else {
            "write an entity"
        };
        self.run(op, move |db| {
            let t = table.to_ascii_lowercase();
            let txn = db!(op, db.begin_write())?;
            let etags = {
                check_table(&db!(op, txn.open_table(TABLES))?, &t, &table, op)?;
                let mut entities = db!(op, txn.open_table(ENTITIES))?;
                let mut meta = db!(op, txn.open_table(META))?;
                let mut next = db!(op, meta.get(NEXT_ETAG))?.map_or(1, |g| g.value());
                let ticks = now_ticks();
                let mut etags = Vec::with_capacity(ops.len());
                for (index, o) in ops.iter().enumerate() {
                    match apply(&mut entities, &t, &table, o, next, ticks, op) {
                        Ok(etag) => {
                            if etag.is_some() {
                                next += 1;
                            }
                            etags.push(etag);
                        }
                        // Returning drops the transaction uncommitted.
                        Err(e) if in_batch => {
                            return Err(TableError::BatchOperationFailed {
                                index,
                                op: o.name(),
                                source: Box::new(e),
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
                db!(op, meta.insert(NEXT_ETAG, next))?;
                etags
            };
            db!(op, txn.commit())?;
            Ok(etags)
        })
        .await
    }
}

fn etag(n: u64) -> ETag {
    ETag(format!("W/\"{n}\""))
}

fn now_ticks() -> i64 {
    now_us().saturating_mul(10)
}

fn ticks_of(t: &DateTime<Utc>) -> i64 {
    let t = truncate_to_tick(t);
    t.timestamp() * TICKS_PER_SEC + i64::from(t.timestamp_subsec_nanos() / 100)
}

fn time_of(ticks: i64) -> Option<DateTime<Utc>> {
    let secs = ticks.div_euclid(TICKS_PER_SEC);
    let nanos = ticks.rem_euclid(TICKS_PER_SEC) as u32 * 100;
    Utc.timestamp_opt(secs, nanos).single()
}

fn check_table(
    tables: &impl ReadableTable<&'static str, &'static str>,
    lowered: &str,
    table: &str,
    op: &'static str,
) -> Result<(), TableError> {
    if db!(op, tables.get(lowered))?.is_none() {
        return Err(TableError::TableNotFound {
            table: table.to_owned(),
        });
    }
    Ok(())
}

/// An entity as stored.
struct Stored {
    etag: u64,
    ticks: i64,
    properties: BTreeMap<String, Property>,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&self.etag.to_le_bytes());
        v.extend_from_slice(&self.ticks.to_le_bytes());
        // At most 252 properties (validated), so a u16 count suffices.
        v.extend_from_slice(&(self.properties.len() as u16).to_le_bytes());
        for (name, value) in &self.properties {
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(name.as_bytes());
            let bytes = |v: &mut Vec<u8>, tag: u8, b: &[u8]| {
                v.push(tag);
                v.extend_from_slice(&(b.len() as u32).to_le_bytes());
                v.extend_from_slice(b);
            };
            match value {
                Property::String(s) => bytes(&mut v, 0, s.as_bytes()),
                Property::Int32(i) => {
                    v.push(1);
                    v.extend_from_slice(&i.to_le_bytes());
                }
                Property::Int64(i) => {
                    v.push(2);
                    v.extend_from_slice(&i.to_le_bytes());
                }
                Property::Double(d) => {
                    v.push(3);
                    v.extend_from_slice(&d.to_bits().to_le_bytes());
                }
                Property::Bool(b) => {
                    v.push(4);
                    v.push(u8::from(*b));
                }
                Property::DateTime(t) => {
                    v.push(5);
                    v.extend_from_slice(&ticks_of(t).to_le_bytes());
                }
                Property::Guid(g) => {
                    v.push(6);
                    v.extend_from_slice(g.as_bytes());
                }
                Property::Binary(b) => bytes(&mut v, 7, b),
            }
        }
        v
    }

    fn decode(buf: &[u8]) -> Result<Stored, Corrupt> {
        let mut r = Reader { buf };
        let etag = r.u64()?;
        let ticks = r.i64()?;
        let n = r.u16()?;
        let mut properties = BTreeMap::new();
        for _ in 0..n {
            let len = r.u16()? as usize;
            let name = r.str(len)?.to_owned();
            let value = match r.u8()? {
                0 => {
                    let len = r.u32()? as usize;
                    Property::String(r.str(len)?.to_owned())
                }
                1 => Property::Int32(i32::from_le_bytes(r.array()?)),
                2 => Property::Int64(r.i64()?),
                3 => Property::Double(f64::from_bits(r.u64()?)),
                4 => Property::Bool(r.u8()? != 0),
                5 => Property::DateTime(time_of(r.i64()?).ok_or(Corrupt("date out of range"))?),
                6 => Property::Guid(Uuid::from_bytes(r.array()?)),
                7 => {
                    let len = r.u32()? as usize;
                    Property::Binary(r.take(len)?.to_vec())
                }
                _ => return Err(Corrupt("unknown property type")),
            };
            properties.insert(name, value);
        }
        r.finish()?;
        Ok(Stored {
            etag,
            ticks,
            properties,
        })
    }

    fn into_entity(self, partition_key: &str, row_key: &str) -> Entity {
        Entity {
            partition_key: partition_key.to_owned(),
            row_key: row_key.to_owned(),
            properties: self.properties,
            etag: Some(etag(self.etag)),
            timestamp: time_of(self.ticks),
        }
    }
}

/// Applies one operation inside the caller's transaction. Returns the new
/// ETag, `None` for a delete.
fn apply(
    entities: &mut redb::Table<(&'static str, &'static str, &'static str), &'static [u8]>,
    t: &str,
    table: &str,
    o: &BatchOp,
    next_etag: u64,
    ticks: i64,
    op: &'static str,
) -> Result<Option<ETag>, TableError> {
    let (pk, rk) = o.keys();
    let existing = match db!(op, entities.get((t, pk, rk)))? {
        Some(g) => Some(Stored::decode(g.value()).map_err(corrupt(op))?),
        None => None,
    };
    let properties = match o {
        BatchOp::Insert(e) => {
            if existing.is_some() {
                return Err(TableError::AlreadyExists {
                    table: table.to_owned(),
                    partition_key: pk.to_owned(),
                    row_key: rk.to_owned(),
                });
            }
            e.properties.clone()
        }
        BatchOp::Replace(e, if_match) => {
            check_condition(existing.as_ref(), if_match, table, pk, rk)?;
            e.properties.clone()
        }
        BatchOp::Merge(e, if_match) => {
            check_condition(existing.as_ref(), if_match, table, pk, rk)?;
            merged(existing, e)?
        }
        BatchOp::InsertOrReplace(e) => e.properties.clone(),
        BatchOp::InsertOrMerge(e) => merged(existing, e)?,
        BatchOp::Delete { if_match, .. } => {
            check_condition(existing.as_ref(), if_match, table, pk, rk)?;
            db!(op, entities.remove((t, pk, rk)))?;
            return Ok(None);
        }
    };
    let stored = Stored {
        etag: next_etag,
        ticks,
        properties,
    };
    db!(op, entities.insert((t, pk, rk), stored.encode().as_slice()))?;
    Ok(Some(etag(next_etag)))
}

/// Replace, merge and delete need the entity to exist and match.
fn check_condition(
    existing: Option<&Stored>,
    if_match: &IfMatch,
    table: &str,
    pk: &str,
    rk: &str,
) -> Result<(), TableError> {
    match existing {
        None => Err(TableError::EntityNotFound {
            table: table.to_owned(),
            partition_key: pk.to_owned(),
            row_key: rk.to_owned(),
        }),
        Some(s) if !if_match.matches(&etag(s.etag)) => Err(TableError::PreconditionFailed {
            table: table.to_owned(),
            partition_key: pk.to_owned(),
            row_key: rk.to_owned(),
            expected: if_match.header_value().to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

/// `e`'s properties over the existing ones; Azure checks the result
/// against the entity limits too.
fn merged(existing: Option<Stored>, e: &Entity) -> Result<BTreeMap<String, Property>, TableError> {
    let Some(s) = existing else {
        return Ok(e.properties.clone());
    };
    let mut props = s.properties;
    props.extend(e.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    let whole = Entity {
        properties: props,
        ..Entity::new(e.partition_key.clone(), e.row_key.clone())
    };
    validate_entity(&whole)?;
    Ok(whole.properties)
}

#[async_trait]
impl TableStore for LocalTableStore {
    fn location(&self) -> String {
        format!("redb:{}", self.path.display())
    }

    async fn create_table(&self, table: &str) -> Result<(), TableError> {
        validate_table_name(table)?;
        let table = table.to_owned();
        self.run("create a table", move |db| {
            let op = "create a table";
            let t = table.to_ascii_lowercase();
            let txn = db!(op, db.begin_write())?;
            {
                let mut tables = db!(op, txn.open_table(TABLES))?;
                if db!(op, tables.get(t.as_str()))?.is_some() {
                    return Ok(());
                }
                db!(op, tables.insert(t.as_str(), table.as_str()))?;
            }
            db!(op, txn.commit())
        })
        .await
    }

    async fn delete_table(&self, table: &str) -> Result<(), TableError> {
        validate_table_name(table)?;
        let table = table.to_owned();
        self.run("delete a table", move |db| {
            let op = "delete a table";
            let t = table.to_ascii_lowercase();
            let txn = db!(op, db.begin_write())?;
            {
                let mut tables = db!(op, txn.open_table(TABLES))?;
                if db!(op, tables.remove(t.as_str()))?.is_none() {
                    return Err(TableError::TableNotFound { table });
                }
                // The smallest name after `t` bounds every (t, _, _) key.
                let past = format!("{t}\0");
                let mut entities = db!(op, txn.open_table(ENTITIES))?;
                db!(
                    op,
                    entities.retain_in((t.as_str(), "", "")..(past.as_str(), "", ""), |_, _| false)
                )?;
            }
            db!(op, txn.commit())
        })
        .await
    }

    async fn write_one(&self, table: &str, op: BatchOp) -> Result<Option<ETag>, TableError> {
        validate_op(table, &op)?;
        Ok(self.write(table, vec![op], false).await?.pop().flatten())
    }

    async fn get(
        &self,
        table: &str,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Entity>, TableError> {
        validate_address(table, partition_key, row_key)?;
        let (table, pk, rk) = (
            table.to_owned(),
            partition_key.to_owned(),
            row_key.to_owned(),
        );
        self.run("read an entity", move |db| {
            let op = "read an entity";
            let t = table.to_ascii_lowercase();
            let txn = db!(op, db.begin_read())?;
            check_table(&db!(op, txn.open_table(TABLES))?, &t, &table, op)?;
            let entities = db!(op, txn.open_table(ENTITIES))?;
            let Some(g) = db!(op, entities.get((t.as_str(), pk.as_str(), rk.as_str())))? else {
                return Ok(None);
            };
            let s = Stored::decode(g.value()).map_err(corrupt(op))?;
            Ok(Some(s.into_entity(&pk, &rk)))
        })
        .await
    }

    async fn query(
        &self,
        table: &str,
        query: &Query,
        continuation: Option<&Continuation>,
    ) -> Result<QueryPage, TableError> {
        validate_table_name(table)?;
        validate_query(query)?;
        let (table, query, continuation) = (table.to_owned(), query.clone(), continuation.cloned());
        self.run("query entities", move |db| {
            let op = "query entities";
            let t = table.to_ascii_lowercase();
            let txn = db!(op, db.begin_read())?;
            check_table(&db!(op, txn.open_table(TABLES))?, &t, &table, op)?;
            let entities = db!(op, txn.open_table(ENTITIES))?;
            let bounds = query
                .filter
                .as_ref()
                .map(|f| f.key_bounds())
                .unwrap_or_default();
            // Scan from the later of the filter's lower bound and the
            // continuation; the filter is still evaluated on every entity.
            let mut start = (String::new(), String::new());
            if let Some(pk) = &bounds.partition_key {
                let rk = bounds.row_low.as_ref().map(|(r, _)| r.clone());
                start = (pk.clone(), rk.unwrap_or_default());
            }
            if let Some(c) = continuation {
                let from = (c.next_partition_key, c.next_row_key.unwrap_or_default());
                start = start.max(from);
            }
            let past = format!("{t}\0");
            let size = query.page_size();
            let mut page = QueryPage::default();
            let range = (t.as_str(), start.0.as_str(), start.1.as_str())..(past.as_str(), "", "");
            for entry in db!(op, entities.range(range))? {
                let (k, v) = db!(op, entry)?;
                let (_, pk, rk) = k.value();
                if let Some(only) = &bounds.partition_key {
                    if pk != only || bounds.row_above(rk) {
                        break;
                    }
                }
                let e = Stored::decode(v.value())
                    .map_err(corrupt(op))?
                    .into_entity(pk, rk);
                if !query.filter.as_ref().is_none_or(|f| f.matches(&e)) {
                    continue;
                }
                // Looking ahead for the next match means the last page
                // never comes back empty with a token.
                if page.entities.len() == size {
                    page.continuation = Some(Continuation {
                        next_partition_key: pk.to_owned(),
                        next_row_key: Some(rk.to_owned()),
                    });
                    break;
                }
                page.entities.push(query.project(e));
            }
            Ok(page)
        })
        .await
    }

    async fn batch(&self, table: &str, ops: &[BatchOp]) -> Result<Vec<Option<ETag>>, TableError> {
        validate_batch(ops)?;
        self.write(table, ops.to_vec(), true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let t = Utc.with_ymd_and_hms(1601, 1, 1, 0, 0, 0).unwrap();
        let mut properties = BTreeMap::new();
        properties.insert("s".into(), Property::String("héllo".into()));
        properties.insert("i".into(), Property::Int32(i32::MIN));
        properties.insert("l".into(), Property::Int64(i64::MAX));
        properties.insert("d".into(), Property::Double(-0.0));
        properties.insert("b".into(), Property::Bool(true));
        properties.insert("t".into(), Property::DateTime(t));
        properties.insert("g".into(), Property::Guid(Uuid::new_v4()));
        properties.insert("x".into(), Property::Binary(vec![0, 255, 7]));
        let s = Stored {
            etag: 9,
            ticks: -5,
            properties,
        };
        let d = Stored::decode(&s.encode()).unwrap();
        assert_eq!((d.etag, d.ticks), (9, -5));
        assert_eq!(d.properties, s.properties);
        match d.properties["d"] {
            Property::Double(v) => assert!(v.is_sign_negative()),
            _ => unreachable!(),
        }
        let enc = s.encode();
        assert!(Stored::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn ticks() {
        let t = Utc.timestamp_opt(-1, 123_456_789).unwrap();
        let back = time_of(ticks_of(&t)).unwrap();
        assert_eq!(back, truncate_to_tick(&t));
        assert_eq!(back.timestamp_subsec_nanos(), 123_456_700);
    }
}

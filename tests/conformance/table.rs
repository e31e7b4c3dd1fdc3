//! The `TableStore` conformance suite, written once against the trait and
//! run against every implementation (the local redb store here; Azure Table
//! Storage through Azurite later).
//!
//! A backend plugs in by implementing [`Backend`] and invoking
//! [`table_conformance_tests!`] once, in a test file that declares this file
//! as `mod table`:
//!
//! ```ignore
//! #[path = "conformance/table.rs"]
//! mod table;
//! table::table_conformance_tests!(azure, AzureTables::from_env());
//! ```
//!
//! Every check works in tables of its own with unique names, so checks may
//! share one account. Checks assert on the error variant and its fields,
//! and after every refused write that nothing was written.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bi_ledger::backend::table::{
    max_datetime, min_datetime, BatchOp, CmpOp, ETag, Entity, Filter, IfMatch, KeyKind, Property,
    Query, TableError, TableStore, MAX_BATCH_OPERATIONS, MAX_BINARY_BYTES,
};
use chrono::{TimeZone, Utc};
use uuid::Uuid;

/// How the suite gets stores from a backend.
pub trait Backend: Send + Sync {
    /// A store handle on this backend's storage. Handles opened one after
    /// another see the same tables, as a restarted process would. The suite
    /// drops every handle it holds before opening the next, so a backend
    /// may allow only one open at a time (the local store locks its file).
    fn open(&self) -> Arc<dyn TableStore>;

    /// Known ways this backend's service departs from Azure Table
    /// Storage. Only an emulator declares any; see [`Deviation`].
    fn deviations(&self) -> &[Deviation] {
        &[]
    }
}

/// A known bug of an emulator. A check that meets one asserts the
/// emulator's actual behaviour in place of Azure's, so it fails (and the
/// declaration must go) once the emulator is fixed; every other backend
/// is held to Azure's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deviation {
    /// Azurite 3.37 checks a merge's request body against 1 MiB, not the
    /// entity the merge produces, so a merge may grow an entity past the
    /// limit that Azure (and the local store) enforce.
    MergeSizeUnchecked,
    /// Azurite 3.37 answers HTTP 500 to a filter comparing an Int64 literal
    /// with a property that is an Int32 on some entity (its BigNumber
    /// comparison calls a string method on the number), where Azure
    /// matches no entity of the other type.
    Int64FilterOnInt32Fails,
}

fn deviates(b: &dyn Backend, d: Deviation) -> bool {
    b.deviations().contains(&d)
}

/// The single list of checks: calls `crate::table::$m!` with `$args` and
/// the names.
macro_rules! for_each_table_check {
    ($m:ident ! ($($args:tt)*)) => {
        $crate::table::$m! { $($args)*
            names_are_validated_and_case_insensitive,
            create_is_idempotent_and_missing_table_is_not_found,
            insert_get_and_already_exists,
            typed_properties_round_trip,
            datetime_keeps_100ns,
            etag_changes_on_every_write,
            replace_with_stale_etag_fails,
            merge_keeps_and_replace_drops_properties,
            upserts,
            delete_is_conditional,
            update_of_missing_entity_is_not_found,
            keys_and_properties_are_validated,
            query_pages_return_each_entity_once_in_key_order,
            query_filters,
            query_select,
            batch_applies_all_and_returns_etags,
            batch_with_failing_op_writes_nothing,
            batch_precondition_failure_names_index,
            batch_across_partitions_refused,
            batch_limits,
            concurrent_conditional_updates_one_wins,
            delete_table_removes_entities,
            restart_keeps_entities,
        }
    };
}
pub(crate) use for_each_table_check;

/// Emits one test per check, in `mod $module`, against `$backend` (an
/// expression evaluated afresh in each test). This file must be the
/// crate-level module `table`.
macro_rules! table_conformance_tests {
    ($module:ident, $backend:expr) => {
        $crate::table::for_each_table_check!(emit_table_tests!(($module, $backend)));
    };
}
pub(crate) use table_conformance_tests;

macro_rules! emit_table_tests {
    (($module:ident, $backend:expr) $($check:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    $crate::table::$check(&$backend).await;
                }
            )*
        }
    };
}
pub(crate) use emit_table_tests;

macro_rules! define_run_all {
    (() $($check:ident),* $(,)?) => {
        /// Names of all checks, in the order `run_all` runs them.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];

        /// Runs every check in turn against `backend`.
        pub async fn run_all(backend: &dyn Backend) {
            $(
                eprintln!("table conformance: {}", stringify!($check));
                $check(backend).await;
            )*
        }
    };
}
pub(crate) use define_run_all;

for_each_table_check!(define_run_all!(()));

// ---------------------------------------------------------------- helpers

/// A table name no other check or run uses.
fn unique(tag: &str) -> String {
    let r = Uuid::new_v4().simple().to_string();
    format!("ct{tag}{}", &r[..12])
}

async fn fresh(b: &dyn Backend, tag: &str) -> (Arc<dyn TableStore>, String) {
    let s = b.open();
    let t = unique(tag);
    s.create_table(&t).await.unwrap();
    (s, t)
}

fn s(v: &str) -> Property {
    Property::String(v.into())
}

fn ent(pk: &str, rk: &str) -> Entity {
    Entity::new(pk, rk)
}

async fn get(st: &dyn TableStore, t: &str, pk: &str, rk: &str) -> Option<Entity> {
    st.get(t, pk, rk).await.unwrap()
}

/// The whole table's (PartitionKey, RowKey) pairs, in the store's order.
async fn keys(st: &dyn TableStore, t: &str) -> Vec<(String, String)> {
    st.query_all(t, &Query::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.partition_key, e.row_key))
        .collect()
}

fn assert_precondition<T: std::fmt::Debug>(r: Result<T, TableError>, pk: &str, rk: &str) {
    match r {
        Err(TableError::PreconditionFailed {
            partition_key,
            row_key,
            ..
        }) => assert_eq!((partition_key.as_str(), row_key.as_str()), (pk, rk)),
        other => panic!("({pk}, {rk}): wanted PreconditionFailed, got {other:?}"),
    }
}

fn assert_entity_not_found<T: std::fmt::Debug>(r: Result<T, TableError>, pk: &str, rk: &str) {
    match r {
        Err(TableError::EntityNotFound {
            partition_key,
            row_key,
            ..
        }) => assert_eq!((partition_key.as_str(), row_key.as_str()), (pk, rk)),
        other => panic!("({pk}, {rk}): wanted EntityNotFound, got {other:?}"),
    }
}

fn assert_already_exists<T: std::fmt::Debug>(r: Result<T, TableError>, pk: &str, rk: &str) {
    match r {
        Err(TableError::AlreadyExists {
            partition_key,
            row_key,
            ..
        }) => assert_eq!((partition_key.as_str(), row_key.as_str()), (pk, rk)),
        other => panic!("({pk}, {rk}): wanted AlreadyExists, got {other:?}"),
    }
}

fn assert_table_not_found<T: std::fmt::Debug>(r: Result<T, TableError>, t: &str) {
    match r {
        Err(TableError::TableNotFound { table }) => assert_eq!(table, t),
        other => panic!("{t}: wanted TableNotFound, got {other:?}"),
    }
}

/// A failed batch names the operation and wraps why it failed.
fn batch_failure(r: Result<Vec<Option<ETag>>, TableError>) -> (usize, TableError) {
    match r {
        Err(TableError::BatchOperationFailed { index, source, .. }) => (index, *source),
        other => panic!("wanted BatchOperationFailed, got {other:?}"),
    }
}

// ----------------------------------------------------------------- checks

pub async fn names_are_validated_and_case_insensitive(b: &dyn Backend) {
    let st = b.open();
    for bad in [
        "ab",
        "1abc",
        "has-dash",
        "has_underscore",
        "tables",
        &"a".repeat(64),
    ] {
        match st.create_table(bad).await {
            Err(TableError::InvalidTableName { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: wanted InvalidTableName, got {other:?}"),
        }
    }
    let t = unique("Case");
    st.create_table(&t).await.unwrap();
    let upper = t.to_ascii_uppercase();
    st.create_table(&upper).await.unwrap();
    st.insert(&upper, &ent("p", "r")).await.unwrap();
    assert!(get(&*st, &t.to_ascii_lowercase(), "p", "r").await.is_some());
    st.delete_table(&t).await.unwrap();
    assert_table_not_found(st.get(&upper, "p", "r").await, &upper);
}

pub async fn create_is_idempotent_and_missing_table_is_not_found(b: &dyn Backend) {
    let (st, t) = fresh(b, "create").await;
    st.insert(&t, &ent("p", "r")).await.unwrap();
    st.create_table(&t).await.unwrap();
    assert!(
        get(&*st, &t, "p", "r").await.is_some(),
        "create kept the entities"
    );

    let m = unique("missing");
    let e = ent("p", "r");
    assert_table_not_found(st.insert(&m, &e).await, &m);
    assert_table_not_found(st.get(&m, "p", "r").await, &m);
    assert_table_not_found(st.replace(&m, &e, &IfMatch::Any).await, &m);
    assert_table_not_found(st.merge(&m, &e, &IfMatch::Any).await, &m);
    assert_table_not_found(st.insert_or_replace(&m, &e).await, &m);
    assert_table_not_found(st.insert_or_merge(&m, &e).await, &m);
    assert_table_not_found(st.delete(&m, "p", "r", &IfMatch::Any).await, &m);
    assert_table_not_found(st.query(&m, &Query::default(), None).await, &m);
    assert_table_not_found(st.batch(&m, &[BatchOp::Insert(e.clone())]).await, &m);
    assert_table_not_found(st.delete_table(&m).await, &m);
}

pub async fn insert_get_and_already_exists(b: &dyn Backend) {
    let (st, t) = fresh(b, "insert").await;
    let e = ent("p1", "r1")
        .with("Name", s("first"))
        .with("N", Property::Int32(1));
    let before = Utc::now() - chrono::Duration::seconds(60);
    let etag = st.insert(&t, &e).await.unwrap();
    let got = get(&*st, &t, "p1", "r1").await.expect("inserted");
    assert_eq!(got.content(), e);
    assert_eq!(got.etag.as_ref(), Some(&etag));
    let ts = got.timestamp.expect("the store stamps writes");
    assert!(ts > before && ts < Utc::now() + chrono::Duration::seconds(60));

    let again = ent("p1", "r1").with("Name", s("second"));
    assert_already_exists(st.insert(&t, &again).await, "p1", "r1");
    assert_eq!(
        get(&*st, &t, "p1", "r1").await.unwrap().content(),
        e,
        "unchanged"
    );
    assert!(get(&*st, &t, "p1", "r2").await.is_none());
    assert!(get(&*st, &t, "p2", "r1").await.is_none());
    // Empty keys are keys like any other.
    st.insert(&t, &ent("", "")).await.unwrap();
    assert!(get(&*st, &t, "", "").await.is_some());
}

pub async fn typed_properties_round_trip(b: &dyn Backend) {
    let (st, t) = fresh(b, "types").await;
    let when = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap()
        + chrono::Duration::nanoseconds(123_456_700);
    let guid = Uuid::new_v4();
    let all_bytes: Vec<u8> = (0..=255).collect();
    let e = ent("types", "all")
        .with("Str", s("ünïcödé 😀 'quoted' \"double\" <xml/> & more"))
        .with("EmptyStr", s(""))
        .with("I32Min", Property::Int32(i32::MIN))
        .with("I32Max", Property::Int32(i32::MAX))
        .with("I64Min", Property::Int64(i64::MIN))
        .with("I64Max", Property::Int64(i64::MAX))
        .with("I64Big", Property::Int64(9_007_199_254_740_993)) // 2^53 + 1
        .with("Dbl", Property::Double(0.1 + 0.2))
        .with("DblNeg", Property::Double(-1.5e-300))
        .with("DblInt", Property::Double(42.0))
        .with("True", Property::Bool(true))
        .with("False", Property::Bool(false))
        .with("When", Property::DateTime(when))
        .with(
            "Epoch",
            Property::DateTime(Utc.timestamp_opt(0, 0).unwrap()),
        )
        .with("Earliest", Property::DateTime(min_datetime()))
        .with("Latest", Property::DateTime(max_datetime()))
        .with("Id", Property::Guid(guid))
        .with("NilId", Property::Guid(Uuid::nil()))
        .with("Bytes", Property::Binary(all_bytes))
        .with("NoBytes", Property::Binary(Vec::new()))
        .with("MaxBytes", Property::Binary(vec![0xa5; MAX_BINARY_BYTES]));
    st.insert(&t, &e).await.unwrap();
    let got = get(&*st, &t, "types", "all").await.unwrap();
    for (name, want) in &e.properties {
        assert_eq!(got.get(name), Some(want), "property {name}");
    }
    assert_eq!(got.content(), e, "no property added or lost");
    // The same values through a query, and after a merge rewrote the entity.
    st.merge(
        &t,
        &ent("types", "all").with("Extra", Property::Bool(true)),
        &IfMatch::Any,
    )
    .await
    .unwrap();
    let q = st
        .query_all(&t, &Query::filter(Filter::partition_key_eq("types")))
        .await;
    let q = q.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        q[0].content(),
        e.clone().with("Extra", Property::Bool(true))
    );
}

pub async fn datetime_keeps_100ns(b: &dyn Backend) {
    let (st, t) = fresh(b, "ticks").await;
    // Digits below Azure's 100 ns tick are dropped, the rest kept.
    let fine = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
    st.insert(&t, &ent("p", "r").with("T", Property::DateTime(fine)))
        .await
        .unwrap();
    match get(&*st, &t, "p", "r").await.unwrap().get("T") {
        Some(Property::DateTime(back)) => {
            assert_eq!(back.timestamp(), 1_700_000_000);
            assert_eq!(back.timestamp_subsec_nanos(), 123_456_700);
        }
        other => panic!("{other:?}"),
    }
    let early = ent("p", "early").with(
        "T",
        Property::DateTime(Utc.with_ymd_and_hms(1600, 12, 31, 0, 0, 0).unwrap()),
    );
    match st.insert(&t, &early).await {
        Err(TableError::InvalidProperty { name, .. }) => assert_eq!(name, "T"),
        other => panic!("wanted InvalidProperty, got {other:?}"),
    }
    assert!(get(&*st, &t, "p", "early").await.is_none());
}

pub async fn etag_changes_on_every_write(b: &dyn Backend) {
    let (st, t) = fresh(b, "etag").await;
    let e = ent("p", "r").with("V", Property::Int32(0));
    let mut seen = BTreeSet::new();
    let mut check = |tag: ETag, what: &str| {
        assert!(seen.insert(tag.clone()), "{what} reused ETag {tag}");
        tag
    };
    let mut last = check(st.insert(&t, &e).await.unwrap(), "insert");
    for i in 1..=3 {
        let e = ent("p", "r").with("V", Property::Int32(i));
        last = check(
            st.replace(&t, &e, &IfMatch::ETag(last)).await.unwrap(),
            "replace",
        );
        check(
            st.merge(&t, &e, &IfMatch::ETag(last)).await.unwrap(),
            "merge",
        );
        // Writing identical content still moves the ETag.
        check(
            st.insert_or_replace(&t, &e).await.unwrap(),
            "insert or replace",
        );
        last = check(st.insert_or_merge(&t, &e).await.unwrap(), "insert or merge");
    }
    assert_eq!(get(&*st, &t, "p", "r").await.unwrap().etag, Some(last));
    // Another entity's ETag is its own, too.
    check(
        st.insert(&t, &ent("p", "r2")).await.unwrap(),
        "second entity",
    );
}

pub async fn replace_with_stale_etag_fails(b: &dyn Backend) {
    let (st, t) = fresh(b, "stale").await;
    let v1 = ent("p", "r").with("V", s("one"));
    let e1 = st.insert(&t, &v1).await.unwrap();
    let v2 = ent("p", "r").with("V", s("two"));
    let e2 = st
        .replace(&t, &v2, &IfMatch::ETag(e1.clone()))
        .await
        .unwrap();

    let v3 = ent("p", "r").with("V", s("three"));
    assert_precondition(
        st.replace(&t, &v3, &IfMatch::ETag(e1.clone())).await,
        "p",
        "r",
    );
    assert_precondition(
        st.merge(&t, &v3, &IfMatch::ETag(e1.clone())).await,
        "p",
        "r",
    );
    // An ETag goes into a request header as it is: one with a line break
    // would add headers of its own, so it is refused before anything is sent.
    let forged = IfMatch::ETag(ETag(format!("{}\r\nx-ms-forged: 1", e2.0)));
    for (what, r) in [
        ("replace", st.replace(&t, &v3, &forged).await.map(|_| ())),
        ("merge", st.merge(&t, &v3, &forged).await.map(|_| ())),
        ("delete", st.delete(&t, "p", "r", &forged).await),
    ] {
        assert!(
            matches!(r, Err(TableError::InvalidETag { .. })),
            "{what} with a line break in its ETag: {r:?}"
        );
    }
    let now = get(&*st, &t, "p", "r").await.unwrap();
    assert_eq!(
        (now.content(), now.etag),
        (v2, Some(e2)),
        "refused writes changed nothing"
    );

    // `*` matches whatever version is there.
    st.replace(&t, &v3, &IfMatch::Any).await.unwrap();
    assert_eq!(get(&*st, &t, "p", "r").await.unwrap().content(), v3);
}

pub async fn merge_keeps_and_replace_drops_properties(b: &dyn Backend) {
    let (st, t) = fresh(b, "merge").await;
    let base = ent("p", "r")
        .with("A", s("a"))
        .with("B", Property::Int64(2));
    st.insert(&t, &base).await.unwrap();
    st.merge(
        &t,
        &ent("p", "r")
            .with("B", Property::Int32(3))
            .with("C", s("c")),
        &IfMatch::Any,
    )
    .await
    .unwrap();
    let want = ent("p", "r")
        .with("A", s("a"))
        .with("B", Property::Int32(3)) // the type changes with the value
        .with("C", s("c"));
    assert_eq!(get(&*st, &t, "p", "r").await.unwrap().content(), want);

    st.replace(&t, &ent("p", "r").with("D", s("d")), &IfMatch::Any)
        .await
        .unwrap();
    assert_eq!(
        get(&*st, &t, "p", "r").await.unwrap().content(),
        ent("p", "r").with("D", s("d"))
    );
}

pub async fn upserts(b: &dyn Backend) {
    let (st, t) = fresh(b, "upsert").await;
    let a = ent("p", "a").with("X", s("1")).with("Y", s("1"));
    st.insert_or_replace(&t, &a).await.unwrap();
    assert_eq!(
        get(&*st, &t, "p", "a").await.unwrap().content(),
        a,
        "inserted"
    );
    let a2 = ent("p", "a").with("Y", s("2"));
    st.insert_or_replace(&t, &a2).await.unwrap();
    assert_eq!(
        get(&*st, &t, "p", "a").await.unwrap().content(),
        a2,
        "replaced"
    );

    let m = ent("p", "m").with("X", s("1"));
    st.insert_or_merge(&t, &m).await.unwrap();
    assert_eq!(
        get(&*st, &t, "p", "m").await.unwrap().content(),
        m,
        "inserted"
    );
    st.insert_or_merge(&t, &ent("p", "m").with("Y", s("2")))
        .await
        .unwrap();
    assert_eq!(
        get(&*st, &t, "p", "m").await.unwrap().content(),
        ent("p", "m").with("X", s("1")).with("Y", s("2")),
        "merged"
    );
}

pub async fn delete_is_conditional(b: &dyn Backend) {
    let (st, t) = fresh(b, "delete").await;
    let old = st.insert(&t, &ent("p", "r")).await.unwrap();
    let new = st
        .merge(
            &t,
            &ent("p", "r").with("V", Property::Bool(true)),
            &IfMatch::Any,
        )
        .await
        .unwrap();
    assert_precondition(st.delete(&t, "p", "r", &IfMatch::ETag(old)).await, "p", "r");
    assert!(
        get(&*st, &t, "p", "r").await.is_some(),
        "refused delete kept it"
    );
    st.delete(&t, "p", "r", &IfMatch::ETag(new)).await.unwrap();
    assert!(get(&*st, &t, "p", "r").await.is_none());
    assert_entity_not_found(st.delete(&t, "p", "r", &IfMatch::Any).await, "p", "r");

    st.insert(&t, &ent("p", "any")).await.unwrap();
    st.delete(&t, "p", "any", &IfMatch::Any).await.unwrap();
    assert!(keys(&*st, &t).await.is_empty());
}

pub async fn update_of_missing_entity_is_not_found(b: &dyn Backend) {
    let (st, t) = fresh(b, "missing").await;
    let e = ent("p", "nope").with("V", Property::Int32(1));
    assert_entity_not_found(st.replace(&t, &e, &IfMatch::Any).await, "p", "nope");
    assert_entity_not_found(st.merge(&t, &e, &IfMatch::Any).await, "p", "nope");
    let stale = IfMatch::ETag(ETag("W/\"datetime'2020-01-01T00%3A00%3A00Z'\"".into()));
    assert_entity_not_found(st.replace(&t, &e, &stale).await, "p", "nope");
    assert!(
        keys(&*st, &t).await.is_empty(),
        "no update created anything"
    );
}

pub async fn keys_and_properties_are_validated(b: &dyn Backend) {
    let (st, t) = fresh(b, "rules").await;
    for (pk, rk, kind) in [
        ("a/b", "r", KeyKind::PartitionKey),
        ("a\\b", "r", KeyKind::PartitionKey),
        ("p", "a#b", KeyKind::RowKey),
        ("p", "a?b", KeyKind::RowKey),
        ("p", "tab\there", KeyKind::RowKey),
        ("p\u{7f}", "r", KeyKind::PartitionKey),
    ] {
        match st.insert(&t, &ent(pk, rk)).await {
            Err(TableError::InvalidKey { kind: k, key, .. }) => {
                assert_eq!(k, kind);
                assert_eq!(
                    key,
                    if kind == KeyKind::PartitionKey {
                        pk
                    } else {
                        rk
                    }
                );
            }
            other => panic!("({pk:?}, {rk:?}): wanted InvalidKey, got {other:?}"),
        }
    }
    // Keys are limited to 1 KiB as Azure stores them, in UTF-16: 512
    // units, whatever their UTF-8 length.
    for long in ["k".repeat(513), "é".repeat(513), "😀".repeat(257)] {
        assert!(
            matches!(
                st.insert(&t, &ent("p", &long)).await,
                Err(TableError::InvalidKey {
                    kind: KeyKind::RowKey,
                    ..
                })
            ),
            "{} UTF-16 units",
            long.encode_utf16().count()
        );
    }
    st.insert(&t, &ent("p", &"k".repeat(512))).await.unwrap();
    st.insert(&t, &ent("p", &"é".repeat(512))).await.unwrap();

    for name in ["PartitionKey", "Timestamp", "1st", "has-dash", "has space"] {
        match st
            .insert(&t, &ent("p", "props").with(name, Property::Bool(true)))
            .await
        {
            Err(TableError::InvalidProperty { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name:?}: wanted InvalidProperty, got {other:?}"),
        }
    }
    let mut many = ent("p", "many");
    for i in 0..253 {
        many = many.with(format!("P{i}"), Property::Int32(i));
    }
    assert!(matches!(
        st.insert(&t, &many).await,
        Err(TableError::TooManyProperties {
            count: 253,
            limit: 252,
            ..
        })
    ));
    many.properties.remove("P252");
    st.insert(&t, &many).await.unwrap();

    let mut huge = ent("p", "huge");
    for i in 0..17 {
        huge = huge.with(
            format!("B{i}"),
            Property::Binary(vec![i as u8; MAX_BINARY_BYTES]),
        );
    }
    match st.insert(&t, &huge).await {
        Err(TableError::EntityTooLarge { size, limit, .. }) => {
            assert_eq!(limit, 1024 * 1024);
            assert!(size > limit);
        }
        other => panic!("wanted EntityTooLarge, got {other:?}"),
    }
    // A merge that would grow an entity past the limit is refused too.
    let mut half = ent("p", "grows");
    let mut rest = ent("p", "grows");
    for i in 0..17 {
        let p = Property::Binary(vec![1; MAX_BINARY_BYTES]);
        if i < 9 {
            half = half.with(format!("B{i}"), p);
        } else {
            rest = rest.with(format!("B{i}"), p);
        }
    }
    st.insert(&t, &half).await.unwrap();
    let grown = st.merge(&t, &rest, &IfMatch::Any).await;
    if deviates(b, Deviation::MergeSizeUnchecked) {
        grown.expect("the emulator accepts a merge past the entity size limit");
    } else {
        assert!(
            matches!(grown, Err(TableError::EntityTooLarge { .. })),
            "{grown:?}"
        );
        assert_eq!(get(&*st, &t, "p", "grows").await.unwrap().content(), half);
    }
    let got: BTreeSet<String> = keys(&*st, &t).await.into_iter().map(|k| k.1).collect();
    let want: BTreeSet<String> = [
        "k".repeat(512),
        "é".repeat(512),
        "many".into(),
        "grows".into(),
    ]
    .into();
    assert_eq!(got, want, "only the valid entities were written");
}

/// 3 partitions × 25 rows, written in a scrambled order.
async fn fill_grid(st: &dyn TableStore, t: &str) -> Vec<(String, String)> {
    let mut want = Vec::new();
    for p in ["pa", "pb", "pc"] {
        let mut ops = Vec::new();
        for i in 0..25 {
            let n = (i * 7) % 25;
            let r = format!("r{n:02}");
            let e = ent(p, &r)
                .with("N", Property::Int32(n))
                .with("Even", Property::Bool(n % 2 == 0))
                .with("Part", s(p));
            ops.push(BatchOp::Insert(e));
            want.push((p.to_owned(), r));
        }
        st.batch(t, &ops).await.unwrap();
    }
    want.sort();
    want
}

pub async fn query_pages_return_each_entity_once_in_key_order(b: &dyn Backend) {
    let (st, t) = fresh(b, "pages").await;
    let want = fill_grid(&*st, &t).await;
    for top in [1u32, 7, 25, 1000] {
        let q = Query {
            top: Some(top),
            ..Query::default()
        };
        let mut got = Vec::new();
        let mut next = None;
        let mut pages = 0;
        loop {
            let page = st.query(&t, &q, next.as_ref()).await.unwrap();
            pages += 1;
            assert!(page.entities.len() <= top as usize, "page over top {top}");
            got.extend(
                page.entities
                    .into_iter()
                    .map(|e| (e.partition_key, e.row_key)),
            );
            match page.continuation {
                Some(c) => next = Some(c),
                None => break,
            }
            assert!(pages <= 200, "continuations never end");
        }
        assert_eq!(got, want, "top {top}: every entity once, in key order");
        assert!(pages >= want.len().div_ceil(top as usize));
    }
    // A continued query with a filter resumes inside the filter's range.
    let q = Query {
        filter: Some(Filter::partition_key_eq("pb").and(Filter::row_key(CmpOp::Ge, "r10"))),
        top: Some(4),
        select: None,
    };
    let rows: Vec<String> = st
        .query_all(&t, &q)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.row_key)
        .collect();
    let want: Vec<String> = (10..25).map(|i| format!("r{i:02}")).collect();
    assert_eq!(rows, want);
}

pub async fn query_filters(b: &dyn Backend) {
    let (st, t) = fresh(b, "filter").await;
    fill_grid(&*st, &t).await;
    st.insert(
        &t,
        &ent("pd", "big").with("N", Property::Int64(5)).with(
            "When",
            Property::DateTime(Utc.timestamp_opt(86_400, 0).unwrap()),
        ),
    )
    .await
    .unwrap();
    let run = |f: Filter| {
        let st = st.clone();
        let t = t.clone();
        async move {
            let q = Query {
                filter: Some(f),
                top: Some(10),
                select: None,
            };
            st.query_all(&t, &q)
                .await
                .unwrap()
                .into_iter()
                .map(|e| format!("{}/{}", e.partition_key, e.row_key))
                .collect::<Vec<_>>()
        }
    };
    let rows = |p: &str, r: std::ops::Range<u32>| -> Vec<String> {
        r.map(|i| format!("{p}/r{i:02}")).collect()
    };

    assert_eq!(run(Filter::partition_key_eq("pb")).await, rows("pb", 0..25));
    let ge_lt = Filter::partition_key_eq("pa")
        .and(Filter::row_key(CmpOp::Ge, "r05"))
        .and(Filter::row_key(CmpOp::Lt, "r09"));
    assert_eq!(run(ge_lt).await, rows("pa", 5..9));
    let gt_le = Filter::partition_key_eq("pc")
        .and(Filter::row_key(CmpOp::Gt, "r05"))
        .and(Filter::row_key(CmpOp::Le, "r09"));
    assert_eq!(run(gt_le).await, rows("pc", 6..10));
    // A row range across all partitions.
    let across = Filter::row_key(CmpOp::Ge, "r23");
    let mut want = Vec::new();
    for p in ["pa", "pb", "pc"] {
        want.extend(rows(p, 23..25));
    }
    assert_eq!(run(across).await, want);

    // Property equality is typed: Int32 7 is not Int64 7.
    let n7 = Filter::property_eq("N", Property::Int32(7));
    assert_eq!(run(n7).await, ["pa/r07", "pb/r07", "pc/r07"]);
    if deviates(b, Deviation::Int64FilterOnInt32Fails) {
        let q = Query::filter(Filter::property_eq("N", Property::Int64(5)));
        let r = st.query_all(&t, &q).await;
        assert!(
            matches!(r, Err(TableError::Backend { .. })),
            "the emulator fails the query: {r:?}"
        );
    } else {
        assert_eq!(
            run(Filter::property_eq("N", Property::Int64(5))).await,
            ["pd/big"]
        );
        assert!(run(Filter::property_eq("N", Property::Int64(7)))
            .await
            .is_empty());
    }
    let odd_in_pb = Filter::partition_key_eq("pb")
        .and(Filter::property_eq("Even", Property::Bool(false)))
        .and(Filter::property("N", CmpOp::Lt, Property::Int32(6)));
    assert_eq!(run(odd_in_pb).await, ["pb/r01", "pb/r03", "pb/r05"]);
    let either = Filter::property_eq("Part", s("pc"))
        .and(Filter::property_eq("N", Property::Int32(0)))
        .or(Filter::partition_key_eq("pd"));
    assert_eq!(run(either).await, ["pc/r00", "pd/big"]);
    let not_pa = Filter::partition_key_eq("pa")
        .not()
        .and(Filter::property_eq("N", Property::Int32(24)));
    assert_eq!(run(not_pa).await, ["pb/r24", "pc/r24"]);
    let when = Filter::property(
        "When",
        CmpOp::Ge,
        Property::DateTime(Utc.timestamp_opt(3_600, 0).unwrap()),
    );
    assert_eq!(run(when).await, ["pd/big"]);
    // Entities without the property never match a comparison on it.
    let ne = Filter::property("When", CmpOp::Ne, Property::DateTime(Utc::now()));
    assert_eq!(run(ne).await, ["pd/big"]);
    assert!(run(Filter::partition_key_eq("nope")).await.is_empty());

    match st
        .query(
            &t,
            &Query {
                top: Some(1001),
                ..Query::default()
            },
            None,
        )
        .await
    {
        Err(TableError::InvalidQuery { why }) => assert!(why.contains("1001"), "{why}"),
        other => panic!("wanted InvalidQuery, got {other:?}"),
    }
}

pub async fn query_select(b: &dyn Backend) {
    let (st, t) = fresh(b, "select").await;
    let e = ent("p", "r")
        .with("A", s("a"))
        .with("B", Property::Int64(-1))
        .with("C", Property::Binary(vec![1, 2, 3]));
    let etag = st.insert(&t, &e).await.unwrap();
    let q = Query {
        filter: None,
        top: None,
        select: Some(vec!["B".into(), "C".into(), "Missing".into()]),
    };
    let got = st.query_all(&t, &q).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].partition_key.as_str(), got[0].row_key.as_str()),
        ("p", "r")
    );
    assert_eq!(
        got[0].etag.as_ref(),
        Some(&etag),
        "keys and ETag always come"
    );
    let names: Vec<&str> = got[0].properties.keys().map(String::as_str).collect();
    assert_eq!(names, ["B", "C"]);
    assert_eq!(got[0].get("B"), Some(&Property::Int64(-1)));
}

pub async fn batch_applies_all_and_returns_etags(b: &dyn Backend) {
    let (st, t) = fresh(b, "batch").await;
    let rep = st
        .insert(&t, &ent("p", "rep").with("V", s("old")))
        .await
        .unwrap();
    st.insert(&t, &ent("p", "mrg").with("Keep", s("k")))
        .await
        .unwrap();
    st.insert(&t, &ent("p", "del")).await.unwrap();
    let ops = vec![
        BatchOp::Insert(ent("p", "new").with("V", s("new"))),
        BatchOp::Replace(ent("p", "rep").with("V", s("replaced")), IfMatch::ETag(rep)),
        BatchOp::Merge(ent("p", "mrg").with("Add", s("a")), IfMatch::Any),
        BatchOp::InsertOrReplace(ent("p", "ior").with("V", s("ior"))),
        BatchOp::InsertOrMerge(ent("p", "iom").with("V", s("iom"))),
        BatchOp::Delete {
            partition_key: "p".into(),
            row_key: "del".into(),
            if_match: IfMatch::Any,
        },
    ];
    let etags = st.batch(&t, &ops).await.unwrap();
    assert_eq!(etags.len(), ops.len());
    assert!(etags[5].is_none(), "a delete has no ETag");
    for (op, etag) in ops.iter().zip(&etags).take(5) {
        let (pk, rk) = op.keys();
        let now = get(&*st, &t, pk, rk).await.unwrap();
        assert_eq!(now.etag.as_ref(), etag.as_ref(), "{rk}");
    }
    assert_eq!(
        get(&*st, &t, "p", "mrg").await.unwrap().content(),
        ent("p", "mrg").with("Keep", s("k")).with("Add", s("a"))
    );
    assert_eq!(
        get(&*st, &t, "p", "rep").await.unwrap().get("V"),
        Some(&s("replaced"))
    );
    assert!(get(&*st, &t, "p", "del").await.is_none());
    let rows: Vec<String> = keys(&*st, &t).await.into_iter().map(|k| k.1).collect();
    assert_eq!(rows, ["iom", "ior", "mrg", "new", "rep"]);
}

pub async fn batch_with_failing_op_writes_nothing(b: &dyn Backend) {
    let (st, t) = fresh(b, "atomic").await;
    let taken = ent("p", "taken").with("V", s("original"));
    st.insert(&t, &taken).await.unwrap();
    st.insert(&t, &ent("p", "doomed")).await.unwrap();
    let before = st.query_all(&t, &Query::default()).await.unwrap();

    let ops = vec![
        BatchOp::Insert(ent("p", "a")),
        BatchOp::InsertOrReplace(ent("p", "b").with("V", s("b"))),
        BatchOp::Delete {
            partition_key: "p".into(),
            row_key: "doomed".into(),
            if_match: IfMatch::Any,
        },
        BatchOp::Insert(ent("p", "taken").with("V", s("clobbered"))),
        BatchOp::Insert(ent("p", "e")),
    ];
    let r = st.batch(&t, &ops).await;
    let text = format!("{:?}", r.as_ref().err());
    let (index, cause) = batch_failure(r);
    assert_eq!(index, 3, "the failing operation is named: {text}");
    assert_already_exists(Err::<(), _>(cause), "p", "taken");
    let after = st.query_all(&t, &Query::default()).await.unwrap();
    assert_eq!(after, before, "nothing written, nothing deleted");

    // An operation that fails validation is named too, and stops the batch
    // before anything is sent.
    let ops = vec![
        BatchOp::Insert(ent("p", "ok")),
        BatchOp::Insert(ent("p", "bad#key")),
    ];
    let (index, cause) = batch_failure(st.batch(&t, &ops).await);
    assert_eq!(index, 1);
    assert!(matches!(cause, TableError::InvalidKey { .. }), "{cause:?}");
    assert!(get(&*st, &t, "p", "ok").await.is_none());
}

pub async fn batch_precondition_failure_names_index(b: &dyn Backend) {
    let (st, t) = fresh(b, "batchcond").await;
    let old = st
        .insert(&t, &ent("p", "x").with("V", Property::Int32(1)))
        .await
        .unwrap();
    st.replace(
        &t,
        &ent("p", "x").with("V", Property::Int32(2)),
        &IfMatch::Any,
    )
    .await
    .unwrap();
    let ops = vec![
        BatchOp::Insert(ent("p", "fresh")),
        BatchOp::Merge(
            ent("p", "x").with("V", Property::Int32(3)),
            IfMatch::ETag(old),
        ),
    ];
    let (index, cause) = batch_failure(st.batch(&t, &ops).await);
    assert_eq!(index, 1);
    assert_precondition(Err::<(), _>(cause), "p", "x");
    let ops = vec![
        BatchOp::Insert(ent("p", "fresh")),
        BatchOp::Delete {
            partition_key: "p".into(),
            row_key: "ghost".into(),
            if_match: IfMatch::Any,
        },
    ];
    let (index, cause) = batch_failure(st.batch(&t, &ops).await);
    assert_eq!(index, 1);
    assert_entity_not_found(Err::<(), _>(cause), "p", "ghost");
    assert_eq!(keys(&*st, &t).await, [("p".to_owned(), "x".to_owned())]);
    assert_eq!(
        get(&*st, &t, "p", "x").await.unwrap().get("V"),
        Some(&Property::Int32(2))
    );
}

pub async fn batch_across_partitions_refused(b: &dyn Backend) {
    let (st, t) = fresh(b, "twoparts").await;
    let ops = vec![
        BatchOp::Insert(ent("p1", "a")),
        BatchOp::Insert(ent("p1", "b")),
        BatchOp::Insert(ent("p2", "a")),
    ];
    match st.batch(&t, &ops).await {
        Err(TableError::BatchMixedPartitions {
            index,
            partition_key,
            expected,
        }) => {
            assert_eq!(index, 2);
            assert_eq!((partition_key.as_str(), expected.as_str()), ("p2", "p1"));
        }
        other => panic!("wanted BatchMixedPartitions, got {other:?}"),
    }
    assert!(keys(&*st, &t).await.is_empty());
}

pub async fn batch_limits(b: &dyn Backend) {
    let (st, t) = fresh(b, "batchlim").await;
    assert!(matches!(
        st.batch(&t, &[]).await,
        Err(TableError::BatchEmpty)
    ));

    let ops: Vec<BatchOp> = (0..=MAX_BATCH_OPERATIONS)
        .map(|i| BatchOp::Insert(ent("p", &format!("r{i:03}"))))
        .collect();
    assert!(matches!(
        st.batch(&t, &ops).await,
        Err(TableError::BatchTooManyOperations {
            count: 101,
            limit: 100
        })
    ));
    // Exactly 100 is fine.
    let etags = st.batch(&t, &ops[..MAX_BATCH_OPERATIONS]).await.unwrap();
    assert_eq!(etags.len(), 100);
    assert_eq!(keys(&*st, &t).await.len(), 100);

    let dup = vec![
        BatchOp::Insert(ent("q", "a")),
        BatchOp::Insert(ent("q", "b")),
        BatchOp::Merge(ent("q", "a"), IfMatch::Any),
    ];
    match st.batch(&t, &dup).await {
        Err(TableError::BatchDuplicateEntity {
            index,
            first,
            row_key,
        }) => assert_eq!((index, first, row_key.as_str()), (2, 0, "a")),
        other => panic!("wanted BatchDuplicateEntity, got {other:?}"),
    }

    // Five entities of ~960 KiB each: every one is allowed, together they
    // pass 4 MiB.
    let big = |r: &str| {
        let mut e = ent("q", r);
        for i in 0..15 {
            e = e.with(format!("B{i}"), Property::Binary(vec![7; MAX_BINARY_BYTES]));
        }
        BatchOp::Insert(e)
    };
    let ops: Vec<BatchOp> = ["a", "b", "c", "d", "e"].iter().map(|r| big(r)).collect();
    match st.batch(&t, &ops).await {
        Err(TableError::BatchTooLarge { size, limit }) => {
            assert_eq!(limit, 4 * 1024 * 1024);
            assert!(size > limit);
        }
        other => panic!("wanted BatchTooLarge, got {other:?}"),
    }
    assert_eq!(
        keys(&*st, &t).await.len(),
        100,
        "refused batches wrote nothing"
    );
}

pub async fn concurrent_conditional_updates_one_wins(b: &dyn Backend) {
    let (st, t) = fresh(b, "race").await;
    let etag = st
        .insert(&t, &ent("p", "r").with("W", Property::Int32(-1)))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (st, t, etag) = (st.clone(), t.clone(), etag.clone());
        tasks.push(tokio::spawn(async move {
            let e = ent("p", "r").with("W", Property::Int32(w));
            (w, st.replace(&t, &e, &IfMatch::ETag(etag)).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (w, Ok(tag)) => winners.push((w, tag)),
            (_, r) => assert_precondition(r, "p", "r"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one conditional writer wins");
    let (w, tag) = winners.pop().unwrap();
    let now = get(&*st, &t, "p", "r").await.unwrap();
    assert_eq!(now.get("W"), Some(&Property::Int32(w)));
    assert_eq!(now.etag, Some(tag));
}

pub async fn delete_table_removes_entities(b: &dyn Backend) {
    let (st, t) = fresh(b, "deltab").await;
    let other = unique("deltabother");
    st.create_table(&other).await.unwrap();
    st.insert(&t, &ent("p", "r")).await.unwrap();
    st.insert(&other, &ent("p", "r")).await.unwrap();
    st.delete_table(&t).await.unwrap();
    assert_table_not_found(st.get(&t, "p", "r").await, &t);
    assert!(
        get(&*st, &other, "p", "r").await.is_some(),
        "other tables untouched"
    );
    st.delete_table(&other).await.unwrap();
}

pub async fn restart_keeps_entities(b: &dyn Backend) {
    let t = unique("restart");
    let e = ent("p", "r")
        .with("I64", Property::Int64(i64::MIN))
        .with("T", Property::DateTime(max_datetime()));
    let (etag, batch_tags) = {
        let st = b.open();
        st.create_table(&t).await.unwrap();
        let etag = st.insert(&t, &e).await.unwrap();
        let ops: Vec<BatchOp> = (0..10)
            .map(|i| BatchOp::Insert(ent("q", &format!("{i}"))))
            .collect();
        (etag, st.batch(&t, &ops).await.unwrap())
    };
    let st = b.open();
    let got = get(&*st, &t, "p", "r").await.expect("survived the restart");
    assert_eq!(got.content(), e);
    assert_eq!(got.etag.as_ref(), Some(&etag));
    assert_eq!(keys(&*st, &t).await.len(), 11);
    // ETags issued after the restart are new ones.
    let next = st.insert_or_merge(&t, &ent("p", "r")).await.unwrap();
    assert_ne!(next, etag);
    assert!(batch_tags.iter().all(|b| b.as_ref() != Some(&next)));
    assert_precondition(
        st.delete(&t, "p", "r", &IfMatch::ETag(etag)).await,
        "p",
        "r",
    );
}

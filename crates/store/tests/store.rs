//! The store against real files and a real SQLite database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pneumo_store::{Incoming, IngestOutcome, Listing, MadeInstances, Store, StoreError};
use sha2::{Digest, Sha256};

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const ELE: &str = "1.2.840.10008.1.2.1";

/// Writes a small Part-10 file into the spool and describes it as received.
fn spooled(store: &Store, sop: &str, modality: &str, comment: &str) -> Incoming {
    spooled_in(store, sop, modality, comment, ELE)
}

/// The same, in transfer syntax `ts`.
fn spooled_in(store: &Store, sop: &str, modality: &str, comment: &str, ts: &str) -> Incoming {
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, CR),
        (tags::SOP_INSTANCE_UID, VR::UI, sop),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4"),
        (tags::MODALITY, VR::CS, modality),
        (tags::IMAGE_COMMENTS, VR::LT, comment),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let path = store
        .spool_dir()
        .join(format!("{sop}-{}-{ts}.part", comment.len()));
    file.write_to_file(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let dataset = &bytes[144 + group_len..];
    Incoming {
        spool_path: path,
        sop_class_uid: CR.into(),
        sop_instance_uid: sop.into(),
        transfer_syntax_uid: ts.into(),
        dataset_len: dataset.len() as u64,
        dataset_sha256: Sha256::digest(dataset).into(),
        calling_ae: "TEST".into(),
        peer_address: "127.0.0.1:1".into(),
        generated: false,
    }
}

/// What an analysis without a companion image made.
fn report(id: i64) -> MadeInstances {
    MadeInstances {
        report: id,
        companion: None,
    }
}

/// Stores a generated instance (a report) and returns its id.
async fn generated(store: &Store, sop: &str) -> i64 {
    let mut inc = spooled(store, sop, "SR", "report");
    inc.generated = true;
    match store.ingest(&inc, |_| vec![]).await.unwrap() {
        IngestOutcome::Stored { instance_id, .. } => instance_id,
        other => panic!("not stored: {other:?}"),
    }
}

async fn open(dir: &Path) -> Store {
    Store::open(dir, None).await.unwrap()
}

fn instance_file(dir: &Path, sop: &str) -> PathBuf {
    dir.join("instances/1.2.3/1.2.3.4")
        .join(format!("{sop}.dcm"))
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_duplicates_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = spooled(&store, "1.9.1", "CR", "a");
    assert!(matches!(
        store.ingest(&first, |_| vec![]).await.unwrap(),
        IngestOutcome::Stored { .. }
    ));
    assert!(instance_file(dir.path(), "1.9.1").exists());
    assert!(
        !first.spool_path.exists(),
        "the spool file was renamed into place"
    );

    let again = spooled(&store, "1.9.1", "CR", "a");
    assert!(matches!(
        store.ingest(&again, |_| vec![]).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    // The same data set in Implicit and in Explicit VR Big Endian: other
    // bytes, the same instance.
    for ts in ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2"] {
        let reencoded = spooled_in(&store, "1.9.1", "CR", "a", ts);
        assert!(
            matches!(
                store.ingest(&reencoded, |_| vec![]).await.unwrap(),
                IngestOutcome::Duplicate { .. }
            ),
            "{ts}"
        );
    }
    let other = spooled(&store, "1.9.1", "CR", "bb");
    assert!(matches!(
        store.ingest(&other, |_| vec![]).await.unwrap(),
        IngestOutcome::StoredConflicting { .. }
    ));
    assert_eq!(store.count_instances_with_uid("1.9.1").await.unwrap(), 2);
    let files = std::fs::read_dir(dir.path().join("instances/1.2.3/1.2.3.4"))
        .unwrap()
        .count();
    assert_eq!(
        files, 2,
        "the conflicting copy is beside the first, not over it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mismatched_uid_is_refused_and_nothing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut incoming = spooled(&store, "1.9.2", "CR", "a");
    incoming.sop_instance_uid = "1.9.999".into();
    let err = store.ingest(&incoming, |_| vec![]).await.unwrap_err();
    assert!(err.to_string().contains("1.9.999"), "{err}");
    assert_eq!(store.count_instances_with_uid("1.9.2").await.unwrap(), 0);
    assert!(!instance_file(dir.path(), "1.9.2").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_routed_claimed_reclaimed_after_lease_and_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for (sop, modality) in [("1.9.10", "CR"), ("1.9.11", "MR")] {
        let inc = spooled(&store, sop, modality, "x");
        store.ingest(&inc, |_| vec!["pacs".into()]).await.unwrap();
    }
    let (queued, skipped) = store
        .route_received_jobs(|h, _| {
            (h.modality.as_deref() != Some("CR")).then(|| "not CR".to_string())
        })
        .await
        .unwrap();
    assert_eq!((queued, skipped), (1, 1));

    let claimed = store
        .claim_jobs("worker-a", Duration::from_millis(50), 10, 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].sop_instance_uid, "1.9.10");
    assert!(store
        .claim_jobs("worker-b", Duration::from_secs(60), 10, 3)
        .await
        .unwrap()
        .is_empty());
    // The holder dies: once its lease expires, another worker takes the job.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let reclaimed = store
        .claim_jobs("worker-b", Duration::from_secs(60), 10, 3)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].attempts, 2);
    // The dead holder's late completion changes nothing.
    let sr = spooled(&store, "1.9.20", "SR", "report");
    let IngestOutcome::Stored {
        instance_id: sr_id, ..
    } = store.ingest(&sr, |_| vec![]).await.unwrap()
    else {
        panic!("SR not stored");
    };
    assert!(!store
        .complete_job(claimed[0].job_id, "worker-a", "{}", report(sr_id), &[])
        .await
        .unwrap());
    assert!(store
        .complete_job(
            reclaimed[0].job_id,
            "worker-b",
            "{\"p\":0.7}",
            report(sr_id),
            &["pacs".into()]
        )
        .await
        .unwrap());
    let counts = store.job_counts().await.unwrap();
    assert!(
        counts.iter().any(|c| c.state == "reported" && c.count == 1),
        "{counts:?}"
    );
    // Originals and the SR are owed to the destination once each.
    let due = store.due_deliveries(None, 100).await.unwrap();
    assert_eq!(due.len(), 3);
    for item in &due {
        store.mark_sent(item, "0000H", None).await.unwrap();
    }
    let counts = store.job_counts().await.unwrap();
    assert!(
        counts
            .iter()
            .any(|c| c.state == "delivered" && c.count == 1),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_holder_dies_every_time_fails_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for sop in ["1.9.30", "1.9.31"] {
        let inc = spooled(&store, sop, "CR", sop);
        store.ingest(&inc, |_| vec![]).await.unwrap();
    }
    store.route_received_jobs(|_, _| None).await.unwrap();
    let lease = Duration::from_millis(20);
    // 1.9.30 is claimed twice and its holder dies each time.
    for attempt in 1..=2 {
        assert!(store.fail_exhausted_jobs(2).await.unwrap().is_empty());
        let claimed = store.claim_jobs("w", lease, 1, 2).await.unwrap();
        assert_eq!(claimed[0].sop_instance_uid, "1.9.30");
        assert_eq!(claimed[0].attempts, attempt);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Not claimed a third time: failed, with the reason, and the next job goes on.
    let exhausted = store.fail_exhausted_jobs(2).await.unwrap();
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].sop_instance_uid, "1.9.30");
    assert!(exhausted[0].reason.contains("never finished"));
    let next = store
        .claim_jobs("w", Duration::from_secs(60), 10, 2)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].sop_instance_uid, "1.9.31");
    let failed = store
        .list_jobs(
            &Listing {
                states: vec!["failed"],
                limit: 10,
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("analysis started 2 times and never finished"));
    // A live lease is never failed, whatever its count.
    assert!(store.fail_exhausted_jobs(1).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_sends_failed_jobs_and_parked_deliveries_back() {
    use pneumo_store::RetryableState;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for sop in ["1.9.40", "1.9.41", "1.9.42"] {
        let inc = spooled(&store, sop, "CR", sop);
        store.ingest(&inc, |_| vec!["pacs".into()]).await.unwrap();
    }
    store
        .route_received_jobs(|h, _| (h.sop_instance_uid == "1.9.42").then(|| "rule".into()))
        .await
        .unwrap();
    let claimed = store
        .claim_jobs("w", Duration::from_secs(60), 10, 3)
        .await
        .unwrap();
    for job in &claimed {
        store
            .fail_job(job.job_id, "w", "broken model")
            .await
            .unwrap();
    }
    // one instance's failed job, then every failed one; skipped left alone
    let n = store
        .requeue_jobs(&[RetryableState::Failed], Some("1.9.40"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        store
            .requeue_jobs(&[RetryableState::Failed], None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .list_jobs(
                &Listing {
                    states: vec!["received"],
                    limit: 10,
                    ..Default::default()
                },
                true
            )
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .list_jobs(
                &Listing {
                    states: vec!["skipped"],
                    limit: 10,
                    ..Default::default()
                },
                true
            )
            .await
            .unwrap()
            .len(),
        1
    );
    let again = store
        .list_jobs(
            &Listing {
                states: vec!["received"],
                limit: 10,
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
    assert!(again.iter().all(|j| j.reason.is_none() && j.attempts == 0));

    // deliveries: park both, send back one destination's
    let due = store.due_deliveries(None, 10).await.unwrap();
    assert_eq!(due.len(), 3);
    for d in &due {
        store.mark_parked(d, "A900H").await.unwrap();
    }
    assert_eq!(
        store.requeue_deliveries(Some("elsewhere")).await.unwrap(),
        0
    );
    assert_eq!(store.requeue_deliveries(Some("pacs")).await.unwrap(), 3);
    let due = store.due_deliveries(None, 10).await.unwrap();
    assert_eq!(due.len(), 3);
    assert!(due.iter().all(|d| d.attempts == 0));
}

/// The data set bytes of a stored Part-10 file (after its File Meta group).
fn dataset_sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    hex::encode(Sha256::digest(&bytes[144 + group_len..]))
}

/// Two associations delivering different data sets under one SOP Instance
/// UID at the same moment: both are kept, each row's file holding its own
/// bytes (neither rename may land on the other's path).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conflicting_instances_are_both_kept_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..40 {
        let sop = format!("1.9.7.{i}");
        let a = spooled(&store, &sop, "CR", "a");
        let b = spooled(&store, &sop, "CR", "bb");
        let (ra, rb) = tokio::join!(store.ingest(&a, |_| vec![]), store.ingest(&b, |_| vec![]));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let conflicting = [&ra, &rb]
            .iter()
            .filter(|o| matches!(o, IngestOutcome::StoredConflicting { .. }))
            .count();
        assert_eq!(conflicting, 1, "{sop}: {ra:?} {rb:?}");
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT path, sha256 FROM instances WHERE sop_instance_uid = ?")
                .bind(&sop)
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows.len(), 2, "{sop}");
        for (path, sha) in rows {
            assert_eq!(
                dataset_sha256_of(&dir.path().join(&path)),
                sha,
                "{sop}: {path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_serves_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    // A spool file of a transfer in progress: a second store must not clear it.
    let transfer = dir.path().join("spool").join("in-progress.part");
    std::fs::write(&transfer, b"half a data set").unwrap();
    let second = Store::open(dir.path(), None).await;
    assert!(matches!(second, Err(StoreError::InUse { .. })));
    let message = second.err().unwrap().to_string();
    assert!(
        message.contains("in use by another pneumo-node process"),
        "{message}"
    );
    assert!(transfer.exists());
    drop(first);
    let _again = open(dir.path()).await; // released with the store
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_store_could_not_finish_runs_again_later_without_using_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let inc = spooled(&store, "1.9.40", "CR", "1.9.40");
    store.ingest(&inc, |_| vec![]).await.unwrap();
    store.route_received_jobs(|_, _| None).await.unwrap();
    let lease = Duration::from_secs(60);
    for _ in 0..5 {
        // More times than max_attempts (2): never failed for it.
        let claimed = store.claim_jobs("w", lease, 1, 2).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        let later = Duration::from_millis(30);
        assert!(store
            .retry_job_later(claimed[0].job_id, "w", "database is locked", later)
            .await
            .unwrap());
        // Not before its time; the reason shows meanwhile.
        assert!(store.claim_jobs("w", lease, 1, 2).await.unwrap().is_empty());
        let waiting = store
            .list_jobs(
                &Listing {
                    states: vec![],
                    limit: 10,
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
        assert_eq!(waiting[0].reason.as_deref(), Some("database is locked"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(store.fail_exhausted_jobs(2).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_left_reported_with_its_report_delivered_everywhere_is_settled_at_start() {
    // An earlier build marked the delivery sent and the job delivered in two
    // writes; killed between them, the job stayed `reported` for good.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut sr_ids = Vec::new();
    for (sop, sr_sop) in [("1.9.30", "1.9.40"), ("1.9.31", "1.9.41")] {
        let inc = spooled(&store, sop, "CR", "x");
        store.ingest(&inc, |_| vec![]).await.unwrap();
        let sr = spooled(&store, sr_sop, "SR", "report");
        let IngestOutcome::Stored { instance_id, .. } =
            store.ingest(&sr, |_| vec![]).await.unwrap()
        else {
            panic!("SR not stored");
        };
        sr_ids.push(instance_id);
    }
    store
        .route_received_jobs(|h, _| (h.modality.as_deref() != Some("CR")).then(String::new))
        .await
        .unwrap();
    let jobs = store
        .claim_jobs("w", Duration::from_secs(60), 10, 3)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    // The first report is owed to a PACS, the second to nobody.
    store
        .complete_job(
            jobs[0].job_id,
            "w",
            "{}",
            report(sr_ids[0]),
            &["pacs".into()],
        )
        .await
        .unwrap();
    store
        .complete_job(jobs[1].job_id, "w", "{}", report(sr_ids[1]), &[])
        .await
        .unwrap();
    for item in store.due_deliveries(None, 10).await.unwrap() {
        store.mark_sent(&item, "0000H", None).await.unwrap();
    }
    sqlx::query("UPDATE jobs SET state = 'reported' WHERE state = 'delivered'")
        .execute(store.pool())
        .await
        .unwrap();
    drop(store);

    let store = open(dir.path()).await;
    let states: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, state FROM jobs WHERE state != 'skipped' ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![
            (jobs[0].job_id, "delivered".to_string()),
            // Owed to no destination: `reported` is where it ends.
            (jobs[1].job_id, "reported".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_released_on_a_clean_stop_are_queued_without_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let inc = spooled(&store, "1.9.50", "CR", "x");
    store.ingest(&inc, |_| vec![]).await.unwrap();
    store.route_received_jobs(|_, _| None).await.unwrap();
    let claimed = store
        .claim_jobs("stopping", Duration::from_secs(60), 10, 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(store.release_jobs("someone-else").await.unwrap(), 0);
    assert_eq!(store.release_jobs("stopping").await.unwrap(), 1);
    let (state, attempts): (String, i64) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = ?")
            .bind(claimed[0].job_id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("queued", 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_destination_puts_off_its_other_rows_untried() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for sop in ["1.9.60", "1.9.61", "1.9.62"] {
        let inc = spooled(&store, sop, "CR", "x");
        store
            .ingest(&inc, |_| vec!["pacs".into(), "archive".into()])
            .await
            .unwrap();
    }
    let pacs = |store: &Store| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT next_attempt_at_ms, attempts FROM outbox WHERE destination = 'pacs' ORDER BY id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    // One row already waits longer than the put-off: it keeps its time.
    sqlx::query("UPDATE outbox SET next_attempt_at_ms = 9e15 WHERE id = (SELECT MAX(id) FROM outbox WHERE destination = 'pacs')")
        .execute(store.pool())
        .await
        .unwrap();
    let before = pacs(&store).await;
    assert_eq!(
        store
            .put_off_destination("pacs", Duration::from_secs(600), true)
            .await
            .unwrap(),
        2
    );
    let after = pacs(&store).await;
    assert!(after[0].0 >= before[0].0 + 590_000 && after[0].0 == after[1].0);
    assert_eq!(after[2], before[2]);
    assert!(after.iter().all(|(_, attempts)| *attempts == 0), "untried");
    // Another destination's rows are not touched.
    assert_eq!(
        store
            .due_deliveries(Some("archive"), 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_re_sent_copy_restores_a_missing_or_damaged_file() {
    // The file deleted by hand: the re-sent copy was acknowledged as a
    // duplicate and nothing was written, so the node did not hold it.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let first = spooled(&store, "1.9.70", "CR", "a");
    store.ingest(&first, |_| vec![]).await.unwrap();
    let path = instance_file(dir.path(), "1.9.70");
    let kept = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let again = spooled(&store, "1.9.70", "CR", "a");
    assert!(matches!(
        store.ingest(&again, |_| vec![]).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    assert_eq!(std::fs::read(&path).unwrap(), kept, "restored");
    assert_eq!(store.count_instances_with_uid("1.9.70").await.unwrap(), 1);
    // With the file there, a further copy writes nothing.
    let third = spooled(&store, "1.9.70", "CR", "a");
    store.ingest(&third, |_| vec![]).await.unwrap();
    assert!(third.spool_path.exists(), "left for the SCP to remove");

    // Truncated, or the same size with other bytes: repaired the same way.
    let truncated = &kept[..kept.len() - 5];
    let mut flipped = kept.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    for damaged in [truncated, flipped.as_slice(), &kept[..100]] {
        std::fs::write(&path, damaged).unwrap();
        let copy = spooled(&store, "1.9.70", "CR", "a");
        store.ingest(&copy, |_| vec![]).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), kept, "repaired");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_delivered_once_its_report_and_companion_image_are() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let inc = spooled(&store, "1.9.60", "CR", "x");
    store.ingest(&inc, |_| vec![]).await.unwrap();
    store.route_received_jobs(|_, _| None).await.unwrap();
    let job = store
        .claim_jobs("w", Duration::from_secs(60), 1, 3)
        .await
        .unwrap()
        .remove(0);
    let made = MadeInstances {
        report: generated(&store, "1.9.61").await,
        companion: Some(generated(&store, "1.9.62").await),
    };
    assert!(store
        .complete_job(job.job_id, "w", "{}", made, &["pacs".into()])
        .await
        .unwrap());
    let state = |store: &Store| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM jobs")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let due = store.due_deliveries(None, 10).await.unwrap();
    let uids: Vec<&str> = due.iter().map(|d| d.sop_instance_uid.as_str()).collect();
    assert_eq!(uids, ["1.9.61", "1.9.62"], "both owed to the PACS");
    store.mark_sent(&due[0], "0000H", None).await.unwrap();
    assert_eq!(
        state(&store).await,
        "reported",
        "the companion is still owed"
    );
    store.mark_sent(&due[1], "0000H", None).await.unwrap();
    assert_eq!(state(&store).await, "delivered");

    // The status view lists both deliveries of what the job made.
    let details = store.instance_details("1.9.60").await.unwrap();
    let delivered: Vec<(&str, &str)> = details[0]
        .2
        .iter()
        .map(|d| (d.kind.as_str(), d.sop_instance_uid.as_str()))
        .collect();
    assert_eq!(delivered, [("report", "1.9.61"), ("report", "1.9.62")]);

    // A results destination added later is owed both.
    let added = store
        .owe_report_of(job.instance_id, &["archive".into()])
        .await
        .unwrap();
    assert_eq!(added, 2);
    assert_eq!(state(&store).await, "reported");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_a_later_build_migrated_still_opens() {
    // A downgrade: the database has a migration this build does not know.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'a later build''s', 1, x'00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    drop(store);
    let store = open(dir.path()).await;
    let inc = spooled(&store, "1.9.70", "CR", "x");
    assert!(matches!(
        store.ingest(&inc, |_| vec![]).await.unwrap(),
        IngestOutcome::Stored { .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_left_inside_a_transaction_never_takes_an_acknowledged_write() {
    // The state a write failing with SQLITE_FULL can leave a pooled
    // connection in (SQLite rolled the transaction back by itself, sqlx's
    // ROLLBACK failed, a later savepoint's ROLLBACK TO kept a transaction
    // open): made here on every connection of the pool by abandoning an
    // open transaction. An instance ingested next used to "commit" inside
    // it: acknowledged, and gone at the next start.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut held {
        use sqlx::Connection;
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM jobs")
            .execute(&mut *tx)
            .await
            .unwrap();
        std::mem::forget(tx);
    }
    drop(held);

    let inc = spooled(&store, "1.9.80", "CR", "x");
    assert!(matches!(
        store.ingest(&inc, |_| vec![]).await.unwrap(),
        IngestOutcome::Stored { .. }
    ));
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.count_instances_with_uid("1.9.80").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_only_the_files_of_finished_instances_left_alone_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sops = [
        "1.9.90", "1.9.91", "1.9.92", "1.9.93", "1.9.94", "1.9.95", "1.9.96",
    ];
    for sop in sops {
        let inc = spooled(&store, sop, "CR", "x");
        store.ingest(&inc, |_| vec!["pacs".into()]).await.unwrap();
    }
    let report = generated(&store, "1.9.99").await;
    store.enqueue(report, "pacs").await.unwrap();
    store.route_received_jobs(|_, _| None).await.unwrap();
    let jobs = store
        .claim_jobs("w", Duration::from_secs(60), 6, 3)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 6, "1.9.96 stays queued");
    for job in &jobs {
        store.fail_job(job.job_id, "w", "test").await.unwrap();
    }
    // Every delivery sent, but 1.9.92's parked and 1.9.93's still owed.
    for item in store.due_deliveries(None, 100).await.unwrap() {
        match item.sop_instance_uid.as_str() {
            "1.9.92" => store.mark_parked(&item, "A900H").await.unwrap(),
            "1.9.93" => {}
            _ => store.mark_sent(&item, "0000H", None).await.unwrap(),
        }
    }
    // Everything happened ten days ago, except to 1.9.94's job yesterday.
    let day = 86_400_000i64;
    let ten_days_ago = pneumo_now() - 10 * day;
    for sql in [
        "UPDATE instances SET received_at_ms = ?",
        "UPDATE jobs SET updated_at_ms = ?",
        "UPDATE outbox SET updated_at_ms = ?",
    ] {
        sqlx::query(sql)
            .bind(ten_days_ago)
            .execute(store.pool())
            .await
            .unwrap();
    }
    sqlx::query("UPDATE jobs SET updated_at_ms = ? WHERE instance_id = (SELECT id FROM instances WHERE sop_instance_uid = '1.9.94')")
        .bind(pneumo_now() - day)
        .execute(store.pool())
        .await
        .unwrap();

    let purged = store
        .purge_before(pneumo_now() - 7 * day, 500)
        .await
        .unwrap();
    let kept = |sop: &str| instance_file(dir.path(), sop).exists();
    // 1.9.90, .91, .95: finished, delivered, old; the report too.
    assert_eq!(purged.files, 4, "{purged:?}");
    for sop in ["1.9.90", "1.9.91", "1.9.95"] {
        assert!(!kept(sop), "{sop} kept");
    }
    assert!(!instance_file(dir.path(), "1.9.99").exists());
    // Parked, owed, touched yesterday, queued: kept.
    for sop in ["1.9.92", "1.9.93", "1.9.94", "1.9.96"] {
        assert!(kept(sop), "{sop} removed");
    }
    // The rows stay, marked; a second pass finds nothing more.
    assert_eq!(store.count_instances_with_uid("1.9.90").await.unwrap(), 1);
    let marked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE purged_at_ms IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(marked, 4);
    assert_eq!(
        store
            .purge_before(pneumo_now() - 7 * day, 500)
            .await
            .unwrap()
            .files,
        0
    );
    // A candidate whose file was already gone counts as examined, so that
    // a pass goes on to the next batch although it removed nothing here.
    sqlx::query(
        "UPDATE instances SET purged_at_ms = NULL WHERE sop_instance_uid IN ('1.9.90', '1.9.91')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let one = store.purge_before(pneumo_now() - 7 * day, 1).await.unwrap();
    assert_eq!((one.files, one.examined), (0, 1), "{one:?}");
    // A copy sent again brings the file back, no longer marked.
    let again = spooled(&store, "1.9.90", "CR", "x");
    store.ingest(&again, |_| vec![]).await.unwrap();
    assert!(kept("1.9.90"));
    let marked: Option<i64> =
        sqlx::query_scalar("SELECT purged_at_ms FROM instances WHERE sop_instance_uid = '1.9.90'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(marked, None);
}

fn pneumo_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_the_jobs_it_cut_are_analysed_one_at_a_time() {
    // Job 1's image kills the node every time; jobs 2 and 3 were being
    // analysed beside it. They used to be claimed together after each
    // restart and all three failed "never finished" after three crashes.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for sop in ["1.9.100", "1.9.101", "1.9.102", "1.9.103"] {
        let inc = spooled(&store, sop, "CR", "x");
        store.ingest(&inc, |_| vec![]).await.unwrap();
    }
    store.route_received_jobs(|_, _| None).await.unwrap();
    let lease = Duration::from_secs(60);
    let claimed = store.claim_jobs("w", lease, 3, 3).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let poison = claimed[0].job_id;
    let mut reported = Vec::new();
    for _crash in 0..4 {
        // The process dies; the next one takes back what it held.
        store.release_all_leases().await.unwrap();
        store.fail_exhausted_jobs(3).await.unwrap();
        loop {
            let batch = store.claim_jobs("w", lease, 3, 3).await.unwrap();
            let Some(job) = batch.first() else { break };
            if job.job_id == poison {
                break; // analysing it kills the node
            }
            assert_eq!(batch.len(), 1, "a job cut by a crash is claimed alone");
            assert!(
                store.claim_jobs("w", lease, 3, 3).await.unwrap().is_empty(),
                "nothing beside it"
            );
            assert!(store.fail_job(job.job_id, "w", "done").await.unwrap());
            reported.push(job.job_id);
        }
    }
    let states: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, state, attempts FROM jobs ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    // Only the poison used up its attempts; the others ran (marked failed
    // "done" here, by the test), the fourth job too, after the suspects.
    assert_eq!(states[0].1, "failed");
    assert_eq!(states[0].2, 3);
    assert_eq!(reported.len(), 3, "{states:?}");
    for (_, _, attempts) in &states[1..] {
        assert!(*attempts <= 2, "{states:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outside_the_data_directory_serves_one_store_at_a_time() {
    // A configuration copied and half edited: another data directory, the
    // first node's database. The second took the first's deliveries and
    // parked them ("the stored file … is missing").
    let shared = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        shared.path().join("db.sqlite").display()
    );
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Store::open(a.path(), Some(&url)).await.unwrap();
    let second = Store::open(b.path(), Some(&url)).await;
    let message = second.err().expect("refused").to_string();
    assert!(
        message.contains("database") && message.contains("database.url"),
        "{message}"
    );
    drop(first);
    let again = Store::open(b.path(), Some(&url)).await.unwrap();
    drop(again);

    // The first node keeps its database in its data directory (no URL):
    // the second, naming that file, is refused all the same.
    let first = open(a.path()).await;
    let inside = format!(
        "sqlite://{}?mode=rwc",
        a.path().join("pneumo-node.sqlite").display()
    );
    let second = Store::open(b.path(), Some(&inside)).await;
    assert!(matches!(second, Err(StoreError::DatabaseInUse { .. })));
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn commitment_results_are_owed_until_answered_and_forgotten_a_while_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let answered = store
        .owe_commitment_result("ORTHANC", "1.2.3", 1, b"data")
        .await
        .unwrap();
    let owed = store
        .owe_commitment_result("ORTHANC", "1.2.4", 2, b"data")
        .await
        .unwrap();
    let due: Vec<i64> = store
        .due_commitment_results("ORTHANC")
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, [answered, owed]);
    store
        .commitment_result_answered(answered, "0000H")
        .await
        .unwrap();
    store
        .commitment_result_retry(owed, "down", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store
        .due_commitment_results("ORTHANC")
        .await
        .unwrap()
        .is_empty());
    assert!(
        store
            .next_commitment_result_in("ORTHANC")
            .await
            .unwrap()
            .unwrap()
            > std::time::Duration::from_secs(50)
    );
    // kept a while, then forgotten; one still owed never is
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    assert_eq!(
        store
            .forget_finished_commitment_results(week)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let none = std::time::Duration::ZERO;
    assert_eq!(
        store
            .forget_finished_commitment_results(none)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.commitment_requesters_owed().await.unwrap(),
        ["ORTHANC"]
    );
    let why = "the requester is no longer in dicom.commitment_requesters";
    let counts = store.commitment_result_counts().await.unwrap();
    assert_eq!(
        counts,
        [pneumo_store::CommitmentResultCount {
            state: "pending".into(),
            count: 1
        }]
    );
    assert_eq!(
        store
            .give_up_commitment_results_of("ORTHANC", why)
            .await
            .unwrap(),
        1
    );
    assert!(store.commitment_requesters_owed().await.unwrap().is_empty());
}

//! A migration that a build has applied anywhere is never edited: sqlx
//! then refuses the database ("migration N was previously applied but has
//! been modified") and the node exits at every start. A change is a new
//! migration. When adding one, add its name and SHA-256 here.

use sha2::{Digest, Sha256};

const APPLIED: &[(&str, &str)] = &[
    (
        "0001_instances_and_jobs.sql",
        "4e15b214a0485d5092d98cc6a934786e3b6a10d40b377ac6df1a08c58b6783d1",
    ),
    (
        "0002_outbox.sql",
        "d9ed038f56d5d26850f14b6c489d85b2e13733fdd8aa887db52f0fcf311b2c05",
    ),
    (
        "0003_pipeline.sql",
        "64275c3d48734af1092a7dfdc755b42b88363c4060cc3be92c802a21dee9bed9",
    ),
    (
        "0004_generated.sql",
        "4c3d24a47c3b7dad157f82b9068eaa495a90832864c35a1727c7ae333af0ed21",
    ),
    (
        "0005_companion.sql",
        "e00339afb93ee5fe614434cac84b47e567630cd73d46762507ae3e09a0580378",
    ),
    (
        "0006_retention.sql",
        "ddaaec66080a17a735a68d42e07bd1262a3b41f2f3180f50eb47dbab127d1c4c",
    ),
    (
        "0007_outbox_by_destination.sql",
        "ae1b5fe3e941e503189ba25731d4ba35c07aa0a1e34cb3dd159045b21f81f797",
    ),
    (
        "0008_instance_callers.sql",
        "6372eabf17709676af22e36f579f36530bf28c90e39e9ef3250c4fbfc188f69c",
    ),
    (
        "0009_accession_number.sql",
        "ab69a2d3f0b67ce75ac89bc2c79e94d5ccc2a2ea85db73c3a18a2cea7a5e618f",
    ),
    (
        "0010_node_flags.sql",
        "4b38344558793b6c263c635348a9174be2e5686fad5d271e7f6514421744a57a",
    ),
    (
        "0011_outbox_sent_as.sql",
        "76584290650c5e9c7c59adb3e3fa3423785210ec6f660ade4fb9e484f79d8219",
    ),
    (
        "0012_patient_age.sql",
        "a4501da59bbfcee6504146ce1f64d16c2e48b423aacce0a600f7a252be0730ed",
    ),
    (
        "0013_outbox_sent_at.sql",
        "ea5350580ed30b29459c10f2e58d7e40701ed25b9be42d17a4606cac8bd307f2",
    ),
    (
        "0014_image_type.sql",
        "16cd86a144abc0fc26d1b619538adc2a4f6720c828c63b94db5961ed80a7d520",
    ),
    (
        "0015_not_analysed_notice.sql",
        "33fbdc556460eb11a158bc6aadea0bb7056fde17018859b8ea174bad8ba34fff",
    ),
    (
        "0016_not_analysed_notice_image.sql",
        "2627b05d8937577f5c4031b9d6f7f2224727c23f0f7195fd37c93179e577bfb5",
    ),
    (
        "0017_notice_indexes.sql",
        "af8dd8b45af211b35b55e02deb261b9bf406b258ed42f83e0508ba8f16d97dea",
    ),
    (
        "0018_outbox_owed_since.sql",
        "636167dcaaea44bdc5604d65e64eaed61fb546c79f5a6198c452f3bcf880503b",
    ),
    (
        "0019_jobs_by_companion.sql",
        "bb5739eef23d2efb9e4ad6990e1bbe6cb0f6e572561d8c70eb08901d093d2587",
    ),
    (
        "0020_made_for.sql",
        "1bf979b6d334252f1daff22ae6da90fa8b418fe219d6ac481a7ca2a1b73c477a",
    ),
    (
        "0021_destination_put_off.sql",
        "e18056b9bf38c9aa3e1ea266e71ef724dd4f7eb99220e6d1b1fb8450a09c0692",
    ),
    (
        "0022_conversion_type.sql",
        "b9a5d8165a6ecd652714dba52e69b13c7fd89004442a6f3b4d610b8227f92231",
    ),
    (
        "0023_report_results.sql",
        "a4269eee2696c596292a666e498221aba75d156d173a4e9af5a81b9735f80105",
    ),
    (
        "0024_commitment_results.sql",
        "4f24466330631799eacd3fb69608ce9f715449a7237c33e3b23dafe1a32ba446",
    ),
    (
        "0025_restored_at.sql",
        "e18c4f074facbda69c23d91a1aaec5772d4ca65cf2872c36465e1c027c13db2f",
    ),
];

#[test]
fn applied_migrations_are_never_edited_and_each_is_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for (name, sha) in APPLIED {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            *sha,
            "{name} was edited after a build applied it: add a new migration instead"
        );
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(
        files,
        APPLIED.len(),
        "a migration is not listed here: add its name and SHA-256"
    );
}

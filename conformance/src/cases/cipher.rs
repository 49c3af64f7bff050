//! Encryption at rest (`key_file=`), on every fixture whose store declares
//! it ([`Capabilities::encryption`](koda_persistence_api::Capabilities::encryption)):
//! nothing of a planted secret in any file and search still finding it; a
//! wrong, missing or misplaced key refused with `PermissionDenied` and every
//! file unchanged; a missing, public or empty key file refused with the
//! mend, creating nothing; a changed or moved value `Corrupt`, never another
//! row's text. The stores these cases open come from the fixture's
//! [`AtRest`] kit, each at a location of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use koda_persistence_api::{PersistenceError, Role};

use crate::Fixture;
use crate::at_rest::{AtRest, Tamper};
use crate::secrets::{PLANTED_HITS, PLANTED_MESSAGES, SECRET, contains, key_file, plant, planted_output};

/// The fixture's kit when its store declares encryption; `None` (and a
/// `SKIPPED` line naming the capability) when it declares none.
fn kit<'f>(fx: &'f Fixture, case: &str) -> Result<Option<&'f Arc<dyn AtRest>>> {
    let declared = fx.store.capabilities().encryption;
    if !declared.is_encrypted() {
        crate::say_skipped(case, &format!("needs the capability encryption (this store declares {declared:?})"));
        return Ok(None);
    }
    match fx.at_rest() {
        Some(kit) => Ok(Some(kit)),
        None => bail!(
            "the store declares encryption {declared:?}, but the factory gives no AtRest kit \
             (Fixture::with_at_rest) for the cipher area"
        ),
    }
}

fn kind(e: &anyhow::Error) -> Option<&PersistenceError> {
    PersistenceError::of(e)
}

fn denied(e: &anyhow::Error) -> bool {
    matches!(kind(e), Some(PersistenceError::PermissionDenied(_)))
}

fn key(kit: &dyn AtRest, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    key_file(kit.key_dir(), name, bytes, mode)
}

/// Opens `name` with `key`, expecting a refusal.
async fn refused(kit: &dyn AtRest, name: &str, key: Option<&Path>) -> Result<anyhow::Error> {
    match kit.open(name, key).await {
        Ok(_) => bail!("{name} opened with key {key:?}"),
        Err(e) => Ok(e),
    }
}

/// Nothing of a planted secret (nor the plain SHA-256 of a planted body)
/// in any file, with a raw key and with a passphrase, before and after a
/// reopen; search finds it and the store's own check is clean.
pub async fn nothing_of_a_secret_reaches_the_disk_and_search_still_finds_it(fx: &Fixture) -> Result<()> {
    let Some(kit) = kit(fx, "cipher::nothing_of_a_secret_reaches_the_disk")? else {
        return Ok(());
    };
    let raw = key(kit.as_ref(), "raw.key", &[7u8; 32], 0o600)?;
    let pass = key(kit.as_ref(), "pass.key", b"correct horse battery staple\n", 0o600)?;
    let plain_address = koda_persistence_api::bodies::body_hash(&planted_output());
    for (name, key) in [("raw", &raw), ("pass", &pass)] {
        let store = kit.open(name, Some(key)).await?;
        let sid = plant(store.as_ref()).await?;
        let hits = store.search_messages("planted", &Default::default(), 10).await?;
        ensure!(hits.len() == PLANTED_HITS, "{name}: search found {hits:?}");
        let health = store.health().await?;
        ensure!(health.problems.is_empty(), "{name}: {:?}", health.problems);
        drop(store);
        for round in ["written", "reopened"] {
            for (file, bytes) in kit.files(name).await? {
                ensure!(!contains(&bytes, SECRET.as_bytes()), "{name}, {round}: the secret is in {}", file.display());
                ensure!(
                    !contains(&bytes, &plain_address),
                    "{name}, {round}: the output's plain hash is in {}",
                    file.display()
                );
            }
            let store = kit.open(name, Some(key)).await?;
            let back = store.load_all_messages(&sid).await?;
            ensure!(back.len() == PLANTED_MESSAGES, "{name}: {back:?}");
            ensure!(
                back[0].content.as_deref() == Some(&*format!("token {SECRET}")),
                "{name}: the user's message reads {:?}",
                back[0].content
            );
            ensure!(store.get_metadata(&sid, "env").await?.as_deref() == Some(SECRET), "{name}: metadata");
        }
    }
    Ok(())
}

/// Another key, another passphrase or no key: `PermissionDenied` naming
/// the key, the key's bytes in no message, every file byte-identical;
/// right after, with no pause, the right key opens the store.
pub async fn a_wrong_or_missing_key_is_refused_and_nothing_changes(fx: &Fixture) -> Result<()> {
    let Some(kit) = kit(fx, "cipher::a_wrong_or_missing_key_is_refused")? else {
        return Ok(());
    };
    let right = key(kit.as_ref(), "right.key", &[1u8; 32], 0o600)?;
    let wrong = key(kit.as_ref(), "wrong.key", &[2u8; 32], 0o600)?;
    let pass = key(kit.as_ref(), "pass.key", b"a passphrase\n", 0o600)?;
    let store = kit.open("store", Some(&right)).await?;
    let sid = plant(store.as_ref()).await?;
    drop(store);
    let before = kit.files("store").await?;
    ensure!(!before.is_empty(), "the store kept no file");
    for key in [Some(wrong.as_path()), Some(pass.as_path()), None] {
        let e = refused(kit.as_ref(), "store", key).await?;
        let shown = format!("{e:#}");
        ensure!(denied(&e), "key {key:?}: {shown}");
        ensure!(shown.contains("key"), "the refusal names no key: {shown}");
        ensure!(!format!("{e:?}").contains("0202"), "the key leaked: {e:?}");
        ensure!(kit.files("store").await? == before, "a refused open (key {key:?}) changed the store's files");
    }
    drop(refused(kit.as_ref(), "store", Some(&wrong)).await?);
    let store = kit.open("store", Some(&right)).await.context("the right key, right after a refusal")?;
    let n = store.load_all_messages(&sid).await?.len();
    ensure!(n == PLANTED_MESSAGES, "{n} messages back");
    Ok(())
}

/// A store written without a key, opened with one: `PermissionDenied`,
/// every file unchanged, and it still opens without the key.
pub async fn a_plaintext_store_opened_with_a_key_is_refused(fx: &Fixture) -> Result<()> {
    let Some(kit) = kit(fx, "cipher::a_plaintext_store_opened_with_a_key_is_refused")? else {
        return Ok(());
    };
    let key = key(kit.as_ref(), "k.key", &[3u8; 32], 0o600)?;
    let store = kit.open("plain", None).await?;
    ensure!(
        !store.capabilities().encryption.is_encrypted(),
        "a store opened without a key declares {:?}",
        store.capabilities().encryption
    );
    let sid = plant(store.as_ref()).await?;
    drop(store);
    let before = kit.files("plain").await?;
    let e = refused(kit.as_ref(), "plain", Some(&key)).await?;
    ensure!(denied(&e), "{e:#}");
    ensure!(kit.files("plain").await? == before, "the refused open changed the plaintext store's files");
    let store = kit.open("plain", None).await?;
    let n = store.load_all_messages(&sid).await?.len();
    ensure!(n == PLANTED_MESSAGES, "{n} messages back");
    Ok(())
}

/// A key file that does not exist, that others may read (the refusal
/// names `chmod 600`), or that is empty (`InvalidInput`): refused before
/// the store is created.
pub async fn a_missing_public_or_empty_key_file_is_refused_with_the_mend(fx: &Fixture) -> Result<()> {
    let Some(kit) = kit(fx, "cipher::a_missing_public_or_empty_key_file_is_refused")? else {
        return Ok(());
    };
    let missing = kit.key_dir().join("nope.key");
    let e = refused(kit.as_ref(), "new", Some(&missing)).await?;
    ensure!(denied(&e), "a missing key file: {e:#}");
    if cfg!(unix) {
        let public = key(kit.as_ref(), "public.key", &[4u8; 32], 0o644)?;
        let e = refused(kit.as_ref(), "new", Some(&public)).await?;
        ensure!(denied(&e) && format!("{e:#}").contains("chmod 600"), "a public key file: {e:#}");
    }
    let empty = key(kit.as_ref(), "empty.key", b"", 0o600)?;
    let e = refused(kit.as_ref(), "new", Some(&empty)).await?;
    ensure!(matches!(kind(&e), Some(PersistenceError::InvalidInput(_))), "an empty key file: {e:#}");
    ensure!(!kit.created("new"), "a refused key file created the store");
    Ok(())
}

/// A stored value moved to another session's row, or changed by one
/// byte: that read is `Corrupt` (or, for a file whose pages are changed,
/// the open is refused), never the other row's text; the store's own
/// check reports it.
pub async fn a_changed_or_moved_value_is_corrupt_never_wrong_text(fx: &Fixture) -> Result<()> {
    let case = "cipher::a_changed_or_moved_value_is_corrupt";
    let Some(kit) = kit(fx, case)? else {
        return Ok(());
    };
    let key = key(kit.as_ref(), "k.key", &[5u8; 32], 0o600)?;
    let store = kit.open("store", Some(&key)).await?;
    let a = plant(store.as_ref()).await?;
    let b = store.create_session("main", Path::new("/p")).await?;
    store.insert_message(&b, &Role::User, Some("b's own text"), None, None, None).await?;
    drop(store);

    if kit.tamper("store", Tamper::Move { from: &a, to: &b }).await? {
        let store = kit.open("store", Some(&key)).await?;
        let n = store.load_all_messages(&a).await?.len();
        ensure!(n == PLANTED_MESSAGES, "the source session lost messages: {n}");
        match store.load_all_messages(&b).await {
            Ok(ms) => bail!("a moved value read back as {ms:?}"),
            Err(e) => ensure!(matches!(kind(&e), Some(PersistenceError::Corrupt(_))), "a moved value: {e:#}"),
        }
        let health = store.health().await?;
        ensure!(!health.problems.is_empty(), "doctor saw no moved value");
    } else {
        crate::say_skipped(
            &format!("{case} (moved value)"),
            "the store binds pages to their place, not values to rows",
        );
    }

    ensure!(kit.tamper("store", Tamper::Flip { session: &a }).await?, "the kit changed no byte");
    match kit.open("store", Some(&key)).await {
        Err(e) => ensure!(
            matches!(kind(&e), Some(PersistenceError::Corrupt(_) | PersistenceError::PermissionDenied(_))),
            "a changed file refused as {e:#}"
        ),
        Ok(store) => match store.load_all_messages(&a).await {
            Ok(ms) => bail!("a changed value read back as {} messages", ms.len()),
            Err(e) => ensure!(matches!(kind(&e), Some(PersistenceError::Corrupt(_))), "a changed value: {e:#}"),
        },
    }
    Ok(())
}

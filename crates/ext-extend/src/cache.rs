//! `ext-extend cache verify`: re-hash every blob of the registry blob cache.

use anyhow::anyhow;
use ext_oci::BlobStore;

use crate::Failure;
use crate::cli::CacheArgs;

pub fn verify(args: CacheArgs) -> Result<(), Failure> {
    let dir = args.store.options().cache_dir();
    let store = BlobStore::new(&dir);
    let ext_oci::layout::VerifyReport { good, removed } = store.verify_all()?;
    for (digest, e) in &removed {
        eprintln!("removed corrupt blob {digest}: {e}");
    }
    println!("{}: {} blobs verified, {} corrupt removed", dir.display(), good.len(), removed.len());
    if removed.is_empty() {
        Ok(())
    } else {
        Err(Failure::other(anyhow!(
            "{} corrupt blobs were removed from {} (they are downloaded again when needed)",
            removed.len(),
            dir.display()
        )))
    }
}

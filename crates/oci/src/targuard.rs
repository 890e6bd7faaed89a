//! Bounds on what a tar reader buffers for one entry.
//!
//! The `tar` crate reads GNU long names (`L`/`K` entries) and PAX extended headers whole into
//! memory, however large their headers say they are: a layer whose long-name entry claims
//! 3 GB takes 3 GB of RSS. [`MetadataGuard`] sits under the archive and lets the reader take at
//! most [`MAX_ENTRY_METADATA`] bytes while it looks for the next entry (headers, long names,
//! PAX records); entry data, read between those calls, is not limited.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// The most bytes of headers, GNU long names and PAX records one entry may have. Linux paths
/// are at most 4 KiB and xattrs 64 KiB each; real layers never come near this.
pub const MAX_ENTRY_METADATA: u64 = 4 << 20;

/// The error a [`MetadataGuard`] returns once the budget is spent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tar headers of one entry (GNU long names, PAX records) exceed {} MiB", MAX_ENTRY_METADATA >> 20)]
pub struct MetadataTooLarge;

/// A reader that fails when more than the budget is read while the budget is armed.
pub struct MetadataGuard<R> {
    inner: R,
    budget: Rc<Cell<Option<u64>>>,
}

/// Arms the guard around each step of a `tar::Entries` iterator.
#[derive(Clone)]
pub struct GuardHandle {
    budget: Rc<Cell<Option<u64>>>,
}

/// Wraps `reader` for `tar::Archive::new`; use the handle's [`GuardHandle::next`] instead of
/// `Entries::next`, and read (or drain) each entry's data before asking for the next one, so
/// the skipped data of an entry is not counted as the next one's headers.
pub fn guard<R: Read>(reader: R) -> (MetadataGuard<R>, GuardHandle) {
    let budget = Rc::new(Cell::new(None));
    (MetadataGuard { inner: reader, budget: budget.clone() }, GuardHandle { budget })
}

impl GuardHandle {
    /// The next entry, with the headers it takes bounded by [`MAX_ENTRY_METADATA`].
    pub fn next<'a, R: Read>(&self, entries: &mut tar::Entries<'a, R>) -> Option<io::Result<tar::Entry<'a, R>>> {
        self.budget.set(Some(MAX_ENTRY_METADATA));
        let next = entries.next();
        self.budget.set(None);
        next
    }
}

impl<R: Read> Read for MetadataGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.budget.get() {
            None => self.inner.read(buf),
            Some(0) if !buf.is_empty() => Err(io::Error::new(io::ErrorKind::InvalidData, MetadataTooLarge)),
            Some(left) => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..max])?;
                self.budget.set(Some(left - n as u64));
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_name_tar(name_len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "x".repeat(name_len), &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "second", &b"de"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn names(tar_bytes: &[u8]) -> io::Result<Vec<usize>> {
        let (reader, handle) = guard(tar_bytes);
        let mut archive = tar::Archive::new(reader);
        let mut entries = archive.entries()?;
        let mut out = Vec::new();
        while let Some(entry) = handle.next(&mut entries) {
            let mut entry = entry?;
            out.push(entry.path_bytes().len());
            io::copy(&mut entry, &mut io::sink())?;
        }
        Ok(out)
    }

    #[test]
    fn long_names_within_the_budget_pass() {
        assert_eq!(names(&long_name_tar(5000)).unwrap(), vec![5000, 6]);
    }

    #[test]
    fn a_long_name_over_the_budget_fails_without_buffering_it() {
        let err = names(&long_name_tar(MAX_ENTRY_METADATA as usize + 10)).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<MetadataTooLarge>()), "{err}");
    }

    #[test]
    fn entry_data_is_not_limited() {
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![7u8; MAX_ENTRY_METADATA as usize * 2];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "big", &data[..]).unwrap();
        assert_eq!(names(&b.into_inner().unwrap()).unwrap(), vec![3]);
    }
}

//! `ADD <http(s) url>`: the session downloads each URL source into its scratch dir, as
//! BuildKit's HTTP source does (file name from the URL path, 0600, root's, mtime from
//! `Last-Modified`), and the copy then reads it like a file of a context. Without
//! `--checksum` the content is known only once downloaded, so the download comes before the
//! step cache key (which names its digest); with `--checksum` the key has the digest already
//! and a step cache hit needs no download.

use std::path::PathBuf;

use ext_dockerfile::{CopyOp, CopySource, Location};

use super::Session;
use crate::context::BuildContext;
use crate::copy::Downloaded;
use crate::error::{ExecError, Result};

impl Session {
    /// Where one step's downloads are kept (removed after the step).
    pub(super) fn downloads_dir(&self) -> PathBuf {
        self.opts.scratch.join("downloads")
    }

    /// Downloads every URL source of `op` (none if it has none).
    pub(super) fn download_urls(&self, op: &CopyOp, at: &Location) -> Result<Vec<Downloaded>> {
        let urls: Vec<&str> = op
            .sources
            .iter()
            .filter_map(|s| match s {
                CopySource::Url(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        let expected = match &op.checksum {
            Some(c) => {
                Some(c.parse::<ext_oci::Digest>().map_err(|e| ExecError::step(at, format!("--checksum={c}: {e}")))?)
            }
            None => None,
        };
        let root = self.downloads_dir();
        let _ = std::fs::remove_dir_all(&root);
        let mut out = Vec::with_capacity(urls.len());
        for (n, url) in urls.into_iter().enumerate() {
            // One directory per URL: two URLs may end in the same file name.
            let dir = root.join(n.to_string());
            std::fs::create_dir_all(&dir)
                .map_err(|e| ExecError::step(at, format!("ADD {url}: {}: {e}", dir.display())))?;
            let name = ext_oci::http::file_name_of(url);
            let download = ext_oci::http::download(url, &dir.join(&name), expected.as_ref())
                .map_err(|e| ExecError::step(at, e.to_string()))?;
            out.push(Downloaded {
                url: url.to_string(),
                name,
                digest: download.digest,
                mtime: download.mtime,
                context: BuildContext::open_download(&dir, url)?,
            });
        }
        Ok(out)
    }
}

//! Where catalog entries come from, and hot reload.
//!
//! Sources are read again every reload interval; when their bytes changed the whole catalog is
//! rebuilt and swapped in atomically. A broken update (bad YAML, an invalid entry, a duplicate name)
//! keeps the last good catalog in service, and the error — naming the file and line — is returned
//! to the caller, which logs it and counts it. Directories are read the way a mounted `ConfigMap`
//! looks: every regular file not starting with `.`, following kubelet's `..data` symlinks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;

use super::{Catalog, CatalogError, entries_from_value, parse_catalog};

/// One place catalog entries come from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SourceKind {
    /// Entries written inline in the configuration file (already parsed).
    Inline(Value),
    /// A catalog file, or a directory of them (a mounted `ConfigMap`).
    Path(PathBuf),
}

/// A catalog source with a name for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogSource {
    /// What to read.
    pub kind: SourceKind,
}

impl CatalogSource {
    /// Inline entries from the configuration.
    #[must_use]
    pub fn inline(value: Value) -> Self {
        Self { kind: SourceKind::Inline(value) }
    }

    /// A file or directory.
    #[must_use]
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self { kind: SourceKind::Path(path.into()) }
    }
}

/// The bytes read from every file, to tell whether anything changed.
type Snapshot = Vec<(String, Vec<u8>)>;

fn io_error(path: &Path, e: &std::io::Error) -> CatalogError {
    CatalogError::Io { source_name: path.display().to_string(), message: e.to_string() }
}

fn read_files(path: &Path, out: &mut Snapshot) -> Result<(), CatalogError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if meta.is_file() {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
        out.push((path.display().to_string(), bytes));
        return Ok(());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| io_error(path, &e))?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| io_error(&file, &e))?;
        out.push((file.display().to_string(), bytes));
    }
    Ok(())
}

fn snapshot(sources: &[CatalogSource]) -> Result<Snapshot, CatalogError> {
    let mut out = Vec::new();
    for source in sources {
        if let SourceKind::Path(path) = &source.kind {
            read_files(path, &mut out)?;
        }
    }
    Ok(out)
}

fn build(sources: &[CatalogSource], files: &Snapshot) -> Result<Catalog, CatalogError> {
    let mut catalog = Catalog::new();
    for source in sources {
        if let SourceKind::Inline(value) = &source.kind {
            catalog.extend(
                entries_from_value(value, "the configuration's `sidecars`")?,
                "the configuration's `sidecars`",
            )?;
        }
    }
    for (name, bytes) in files {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| CatalogError::Syntax { source_name: name.clone(), message: format!("not UTF-8: {e}") })?;
        catalog.extend(parse_catalog(text, name)?, name)?;
    }
    Ok(catalog)
}

/// Loads every source once.
pub fn load(sources: &[CatalogSource]) -> Result<Catalog, CatalogError> {
    build(sources, &snapshot(sources)?)
}

/// The catalog in service, reloaded from its sources.
#[derive(Debug)]
pub struct CatalogStore {
    sources: Vec<CatalogSource>,
    current: ArcSwap<Catalog>,
    /// The bytes of the last reload attempt, good or not.
    seen: Mutex<Snapshot>,
}

impl CatalogStore {
    /// Loads the sources; fails if the first load fails (nothing good to keep yet).
    pub fn load(sources: Vec<CatalogSource>) -> Result<Self, CatalogError> {
        let files = snapshot(&sources)?;
        let catalog = build(&sources, &files)?;
        Ok(Self { sources, current: ArcSwap::from_pointee(catalog), seen: Mutex::new(files) })
    }

    /// A store serving a fixed catalog (tests, offline use).
    #[must_use]
    pub fn fixed(catalog: Catalog) -> Self {
        Self { sources: Vec::new(), current: ArcSwap::from_pointee(catalog), seen: Mutex::new(Vec::new()) }
    }

    /// The catalog in service.
    #[must_use]
    pub fn current(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Polls the sources every `interval` in a background task: a changed catalog is swapped in and
    /// logged, a broken one is logged with its file and line and the last good one kept; both are
    /// counted in `metrics` when given.
    pub fn spawn_reload(
        self: Arc<Self>,
        interval: std::time::Duration,
        metrics: Option<crate::metrics::InjectorMetrics>,
    ) {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match self.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        let catalog = self.current();
                        if let Some(m) = &metrics {
                            m.reloaded(true, catalog.len());
                        }
                        tracing::info!(sidecars = %catalog, "catalog reloaded");
                    }
                    Err(error) => {
                        if let Some(m) = &metrics {
                            m.reloaded(false, 0);
                        }
                        tracing::error!(%error, "catalog not reloaded; keeping the last good catalog");
                    }
                }
            }
        });
    }

    /// Reads the sources again. `Ok(true)` when a changed catalog was swapped in, `Ok(false)` when
    /// nothing changed since the last attempt (so a broken file is reported once, not every poll);
    /// on error the last good catalog stays in service.
    pub fn reload(&self) -> Result<bool, CatalogError> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let files = match snapshot(&self.sources) {
            Ok(files) => files,
            Err(error) => {
                // An unreadable source is recorded like a snapshot (no real file has an empty
                // name), so the same failure is reported once too.
                let failed = vec![(String::new(), error.to_string().into_bytes())];
                if *seen == failed {
                    return Ok(false);
                }
                *seen = failed;
                return Err(error);
            }
        };
        if *seen == files {
            return Ok(false);
        }
        let built = build(&self.sources, &files);
        *seen = files;
        self.current.store(Arc::new(built?));
        Ok(true)
    }
}

//! Where catalog entries come from, and hot reload.
//!
//! Sources are read again every reload interval; when their bytes changed the whole catalog is
//! rebuilt and swapped in atomically, never in part. A broken update keeps the last good catalog in
//! service, and the error — naming the file and, for syntax, the line — is returned to the caller,
//! which logs it and counts it. Broken means: bad YAML, an invalid entry, a duplicate name, a
//! configured file that became a directory (or the reverse), a dangling symbolic link, an
//! unreadable file, or a file whose bytes differ between two reads (a writer caught part-way): the
//! reload loop reads a changed source again after a settle time, and every reload reads the
//! sources on both sides of the parse. Directories are read the way a mounted `ConfigMap` looks: every file not
//! starting with `.`, following kubelet's `..data` symlinks; anything else in them is an error.

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

/// What a configured path is. A path that was a file when first loaded must stay a file (and a
/// directory a directory): a file replaced by a directory would otherwise read as a directory with
/// no catalog in it, and its sidecars would vanish without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    File,
    Directory,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Self::File => "a file",
            Self::Directory => "a directory",
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> CatalogError {
    failure(path, e.to_string())
}

fn failure(path: &Path, message: impl Into<String>) -> CatalogError {
    CatalogError::Io { source_name: path.display().to_string(), message: message.into() }
}

/// The metadata of `path`, following symbolic links; a link whose target is gone is named as such
/// (kubelet's `..data` links dangle when a mount is half torn down).
fn metadata(path: &Path) -> Result<std::fs::Metadata, CatalogError> {
    std::fs::metadata(path).map_err(|e| {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            failure(path, format!("is a symbolic link whose target cannot be read ({e})"))
        } else {
            io_error(path, &e)
        }
    })
}

/// Reads one configured path into `out`. Anything that is not a readable catalog file where one is
/// expected is an error, never a skipped file: skipping would drop that file's sidecars from the
/// catalog while the reload reported success.
fn read_path(path: &Path, expected: Option<Shape>, out: &mut Snapshot) -> Result<Shape, CatalogError> {
    let meta = metadata(path)?;
    let shape = if meta.is_file() {
        Shape::File
    } else if meta.is_dir() {
        Shape::Directory
    } else {
        return Err(failure(path, "is neither a file nor a directory"));
    };
    if let Some(expected) = expected
        && expected != shape
    {
        return Err(failure(
            path,
            format!("was {} when the catalog was first loaded and is now {}", expected.describe(), shape.describe()),
        ));
    }
    if shape == Shape::File {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
        out.push((path.display().to_string(), bytes));
        return Ok(shape);
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| io_error(path, &e))? {
        let entry = entry.map_err(|e| io_error(path, &e))?;
        // Hidden names are kubelet's `..data` and timestamped directories of a mounted ConfigMap.
        if !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(entry.path());
        }
    }
    files.sort();
    for file in files {
        let meta = metadata(&file)?;
        if meta.is_dir() {
            return Err(failure(&file, "is a directory; a catalog directory holds only catalog files"));
        }
        if !meta.is_file() {
            return Err(failure(&file, "is not a regular file"));
        }
        let bytes = std::fs::read(&file).map_err(|e| io_error(&file, &e))?;
        out.push((file.display().to_string(), bytes));
    }
    Ok(shape)
}

/// Reads every path source; `shapes` (one per source, `None` for inline ones and on the first
/// load) says what each path must still be, and is filled in on the first load.
fn snapshot(sources: &[CatalogSource], shapes: &mut [Option<Shape>]) -> Result<Snapshot, CatalogError> {
    let mut out = Vec::new();
    for (source, shape) in sources.iter().zip(shapes.iter_mut()) {
        if let SourceKind::Path(path) = &source.kind {
            *shape = Some(read_path(path, *shape, &mut out)?);
        }
    }
    Ok(out)
}

/// Reads the sources, runs `work` on what was read (the parse), and reads them again: the result
/// stands only when both reads agree. A file caught while a writer is part-way through it (a
/// truncated copy that may well parse) then fails the comparison instead of replacing the catalog.
fn read_stable<T>(
    sources: &[CatalogSource],
    shapes: &mut [Option<Shape>],
    work: impl FnOnce(&Snapshot) -> T,
) -> Result<(Snapshot, T), CatalogError> {
    let files = snapshot(sources, shapes)?;
    let result = work(&files);
    let again = snapshot(sources, shapes)?;
    if again != files {
        return Err(changed_while_read(&files, &again));
    }
    Ok((files, result))
}

/// The error for sources that read differently twice, naming the first that changed.
fn changed_while_read(first: &Snapshot, again: &Snapshot) -> CatalogError {
    let changed = first
        .iter()
        .zip(again)
        .find(|(a, b)| a != b)
        .or_else(|| first.first().zip(again.first()))
        .map_or_else(|| "a catalog source".to_owned(), |(a, _)| a.0.clone());
    CatalogError::Io {
        source_name: changed,
        message: "changed while it was being read; it will be read again at the next poll".to_owned(),
    }
}

/// [`read_stable`] for tests: `between` runs between the two reads.
#[cfg(test)]
pub(super) fn read_stable_for_tests(
    sources: &[CatalogSource],
    between: impl FnOnce(&Snapshot),
) -> Result<(), CatalogError> {
    read_stable(sources, &mut vec![None; sources.len()], between).map(drop)
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
    catalog.check_conflicts()?;
    Ok(catalog)
}

/// The first load: a source read while it changes is read again a few times before giving up,
/// since there is no good catalog to keep yet.
fn first_load(sources: &[CatalogSource], shapes: &mut [Option<Shape>]) -> Result<(Snapshot, Catalog), CatalogError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match read_stable(sources, shapes, |files| build(sources, files)) {
            Ok((files, built)) => return Ok((files, built?)),
            Err(error) if attempts >= 5 => return Err(error),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Loads every source once.
pub fn load(sources: &[CatalogSource]) -> Result<Catalog, CatalogError> {
    Ok(first_load(sources, &mut vec![None; sources.len()])?.1)
}

/// The catalog in service, reloaded from its sources.
#[derive(Debug)]
pub struct CatalogStore {
    sources: Vec<CatalogSource>,
    current: ArcSwap<Catalog>,
    /// The bytes of the last reload attempt, good or not, and what each path source is.
    seen: Mutex<(Snapshot, Vec<Option<Shape>>)>,
}

impl CatalogStore {
    /// Loads the sources; fails if the first load fails (nothing good to keep yet).
    pub fn load(sources: Vec<CatalogSource>) -> Result<Self, CatalogError> {
        let mut shapes = vec![None; sources.len()];
        let (files, catalog) = first_load(&sources, &mut shapes)?;
        Ok(Self { sources, current: ArcSwap::from_pointee(catalog), seen: Mutex::new((files, shapes)) })
    }

    /// A store serving a fixed catalog (tests, offline use).
    #[must_use]
    pub fn fixed(catalog: Catalog) -> Self {
        Self {
            sources: Vec::new(),
            current: ArcSwap::from_pointee(catalog),
            seen: Mutex::new((Vec::new(), Vec::new())),
        }
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
            // A writer caught part-way through a file must still be writing when it is read again:
            // a changed file is read again after this settle time before it is taken.
            let settle = (interval / 4).min(std::time::Duration::from_millis(250));
            loop {
                ticker.tick().await;
                match self.reload_settled(settle).await {
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
        self.reload_expecting(None)
    }

    /// As [`CatalogStore::reload`], but a change is taken only if the sources still read the same
    /// after `settle`: a file caught while a writer is part-way through it (a truncated copy that
    /// may well parse) fails the comparison unless the writer paused for longer than `settle`.
    pub async fn reload_settled(&self, settle: std::time::Duration) -> Result<bool, CatalogError> {
        let first = {
            let mut guard = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (seen, shapes) = &mut *guard;
            match snapshot(&self.sources, &mut shapes.clone()) {
                Ok(files) if files == *seen => return Ok(false),
                Ok(files) => Some(files),
                // Reported by the read below.
                Err(_) => None,
            }
        };
        tokio::time::sleep(settle).await;
        self.reload_expecting(first.as_ref())
    }

    fn reload_expecting(&self, expected: Option<&Snapshot>) -> Result<bool, CatalogError> {
        let mut guard = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seen, shapes) = &mut *guard;
        // Building only when the bytes changed keeps an idle poll cheap; the build runs between the
        // two reads, so that what is swapped in was read identically twice.
        let read = read_stable(&self.sources, shapes, |files| (*seen != *files).then(|| build(&self.sources, files)))
            .and_then(|read| match expected {
                Some(expected) if *expected != read.0 => Err(changed_while_read(expected, &read.0)),
                _ => Ok(read),
            });
        let (files, built) = match read {
            Ok(read) => read,
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
        let Some(built) = built else { return Ok(false) };
        *seen = files;
        self.current.store(Arc::new(built?));
        Ok(true)
    }
}

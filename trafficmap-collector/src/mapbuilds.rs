//! Bounds on map builds for the HTTP API: at most `map_builds` at once, each off the async
//! workers, waiting at most [`SLOT_WAIT`] for a slot; answers cached by (view, range, store
//! version) in a small cache.
//!
//! A map build of a long range reads and resolves millions of rows: on the async workers it
//! would stall ingest, and unbounded it lets any reader exhaust the CPU. The store version is
//! bumped by every committed ingest batch and by maintenance (see [`StoreVersion`]), so a
//! cached map is never older than the store's data; enrichment (EC2, DNS) that changed since is
//! picked up at the next ingest, which in a live fleet is within a minute.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;
use trafficmap_model::map::View;

use crate::mapservice::Span;

/// How long a request waits for a build slot before it is answered 503.
pub const SLOT_WAIT: Duration = Duration::from_secs(10);
/// Maps kept. A fleet's map can be hundreds of megabytes: keep few.
pub const CACHE_ENTRIES: usize = 8;

/// A counter of changes to the store's data: bumped after every committed ingest batch and
/// every maintenance run (roll-ups, retention).
#[derive(Clone, Debug, Default)]
pub struct StoreVersion(Arc<AtomicU64>);

impl StoreVersion {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a cached answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub view: View,
    pub span: Span,
    pub version: u64,
}

/// Why no map came out of [`MapBuilds::get`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError<E> {
    /// Every slot stayed taken for [`SLOT_WAIT`].
    #[error("map builds busy; retry later")]
    Busy,
    /// The build task panicked or was cancelled (a bug; logged by the caller).
    #[error("map build failed")]
    Aborted,
    #[error(transparent)]
    Build(E),
}

/// The build slots and the cache.
pub struct MapBuilds<V> {
    slots: Arc<Semaphore>,
    wait: Duration,
    capacity: usize,
    cache: Mutex<VecDeque<(Key, Arc<V>)>>,
}

impl<V: Send + Sync + 'static> MapBuilds<V> {
    pub fn new(slots: usize, wait: Duration, capacity: usize) -> MapBuilds<V> {
        MapBuilds {
            slots: Arc::new(Semaphore::new(slots)),
            wait,
            capacity,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    fn cached(&self, key: &Key) -> Option<Arc<V>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let at = cache.iter().position(|(k, _)| k == key)?;
        // Most recently used at the front.
        let entry = cache.remove(at)?;
        let value = entry.1.clone();
        cache.push_front(entry);
        Some(value)
    }

    fn insert(&self, key: Key, value: Arc<V>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of older store versions can never be asked for again.
        cache.retain(|(k, _)| k.version >= key.version && *k != key);
        cache.push_front((key, value));
        cache.truncate(self.capacity);
    }

    /// The cached answer for `key`, or `build` run on the blocking pool once a slot is free.
    /// Errors are not cached. `build` runs to its end even if the caller goes away (it holds its
    /// slot meanwhile), so slots always bound the work actually running.
    pub async fn get<E, F>(&self, key: Key, build: F) -> Result<Arc<V>, BuildError<E>>
    where
        E: Send + 'static,
        F: FnOnce() -> Result<V, E> + Send + 'static,
    {
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(BuildError::Busy),
        };
        // Another request for the same map may have finished while this one waited.
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let task = tokio::task::spawn_blocking(move || {
            let out = build();
            drop(permit);
            out
        });
        let value = Arc::new(
            task.await
                .map_err(|_| BuildError::Aborted)?
                .map_err(BuildError::Build)?,
        );
        self.insert(key, value.clone());
        Ok(value)
    }

    /// Maps held (for tests and metrics).
    pub fn cached_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use chrono::NaiveDate;

    use super::*;

    fn key(day: u32, version: u64) -> Key {
        Key {
            view: View::Instances,
            span: Span::Day(NaiveDate::from_ymd_opt(2026, 11, day).unwrap()),
            version,
        }
    }

    #[tokio::test]
    async fn cached_by_key_and_version() {
        let b: MapBuilds<u32> = MapBuilds::new(1, Duration::from_secs(1), 2);
        let runs = Arc::new(AtomicUsize::new(0));
        let build = |v: u32| {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(v)
            }
        };
        assert_eq!(*b.get(key(1, 0), build(1)).await.unwrap(), 1);
        assert_eq!(*b.get(key(1, 0), build(99)).await.unwrap(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A new store version: built again; the old version's entry is gone.
        assert_eq!(*b.get(key(1, 1), build(2)).await.unwrap(), 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(b.cached_len(), 1);
        // Bounded: three keys, two kept, the least recently used dropped.
        b.get(key(2, 1), build(3)).await.unwrap();
        b.get(key(3, 1), build(4)).await.unwrap();
        assert_eq!(b.cached_len(), 2);
        assert_eq!(*b.get(key(1, 1), build(5)).await.unwrap(), 5);
        // Errors are not cached.
        assert!(matches!(
            b.get(key(9, 1), || Err::<u32, _>("bad")).await,
            Err(BuildError::Build("bad"))
        ));
        assert_eq!(*b.get(key(9, 1), build(6)).await.unwrap(), 6);
        assert_eq!(runs.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn at_most_n_builds_then_busy() {
        let b: Arc<MapBuilds<u32>> = Arc::new(MapBuilds::new(1, Duration::from_millis(200), 8));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let b1 = b.clone();
        let first = tokio::spawn(async move {
            b1.get(key(1, 0), move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, ()>(1)
            })
            .await
            .map(|v| *v)
        });
        // The first build holds the only slot.
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        let second = b.get(key(2, 0), || Ok::<_, ()>(2)).await;
        assert!(matches!(second, Err(BuildError::Busy)), "{second:?}");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        // The slot is free again.
        assert_eq!(*b.get(key(2, 0), || Ok::<_, ()>(2)).await.unwrap(), 2);
    }
}

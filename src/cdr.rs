//! Call records: every call attempt, admitted or not, leaves one, written to
//! the database in the background so that no call waits on it.
//!
//! [`CdrWriter::record`] hands a record over without blocking; a task
//! ([`CdrTask::run`], or the `JoinHandle` of [`CdrWriter::start`]) writes
//! them through [`Store::call_records_insert`] in batches: every
//! [`CdrSettings::flush_interval`], or at once when
//! [`CdrSettings::batch_max`] are waiting. While the database is unavailable
//! it keeps them in memory and retries with exponential backoff; on shutdown
//! it writes everything it holds before returning.
//!
//! The hand-over is an **unbounded** channel: `record` is called from call
//! handling that must neither wait nor lose the record, and a bounded
//! channel would force one of the two when full. Memory is bounded one step
//! later instead, in one place: the task takes the channel's records into
//! its buffer on each interval and whenever a full batch is waiting (it is
//! not woken per record), and the buffer holds at most
//! [`CdrSettings::max_buffered`] records; past that (a long outage) the
//! oldest are dropped, counted in [`CdrStats::dropped`] and logged as errors.
//!
//! A record the database refuses as such (a constraint it breaks) would
//! block every record behind it if retried: when a batch is refused, its
//! records are written one by one and only the faulty ones are dropped
//! ([`CdrStats::rejected`], logged with their Call-ID).

/// How a call attempt ended: the `outcome` of its record (and the label of
/// `trunkgate_calls_ended_total`). Stored as its [`Outcome::as_str`] token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Refused by admission (the record's `reason` says why).
    Refused,
    /// Answered and ended by a BYE from either side.
    Completed,
    /// Every user busy.
    Busy,
    /// A user declined (603).
    Declined,
    /// No user could be reached.
    Unavailable,
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The caller cancelled before an answer.
    Cancelled,
    /// Ended by the portal's maximum call duration.
    MaxDuration,
    /// Ended by a protocol failure (the record's `reason` says which).
    Failed,
}

impl Outcome {
    /// The stable token stored in call records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Completed => "completed",
            Outcome::Busy => "busy",
            Outcome::Declined => "declined",
            Outcome::Unavailable => "unavailable",
            Outcome::NoAnswer => "no-answer",
            Outcome::Cancelled => "cancelled",
            Outcome::MaxDuration => "max-duration",
            Outcome::Failed => "failed",
        }
    }
}

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::store::{CallRecord, Store, StoreError};

/// How the writer batches and retries. The defaults suit production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrSettings {
    /// Longest time a record waits before its batch is written. Default: 200 ms.
    pub flush_interval: Duration,
    /// Most records written in one transaction; this many waiting are written
    /// at once. Default: 500.
    pub batch_max: usize,
    /// Most records kept in memory while the database is unavailable; past
    /// it the oldest are dropped (and logged). Default: 100 000.
    pub max_buffered: usize,
    /// First pause after a failed write. Default: 200 ms.
    pub retry_min: Duration,
    /// Longest pause between retries (the pause doubles up to it). Default: 5 s.
    pub retry_max: Duration,
    /// How long shutdown keeps retrying when the database is unavailable
    /// before the records still held are given up (and logged). Default: 10 s.
    pub shutdown_grace: Duration,
}

impl Default for CdrSettings {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(200),
            batch_max: 500,
            max_buffered: 100_000,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What the writer has done so far, for metrics, health and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CdrStats {
    /// Records written.
    pub written: u64,
    /// Successful insert transactions (a batch, or one record of a refused batch).
    pub batches: u64,
    /// Records held in memory, not written yet (those still in the channel
    /// are not counted).
    pub pending: usize,
    /// Writes that failed with the database unavailable (each is retried).
    pub failed_attempts: u64,
    /// Records the database refused as such (dropped, logged).
    pub rejected: u64,
    /// Records lost: over [`CdrSettings::max_buffered`], or still held when
    /// the shutdown grace ran out (logged).
    pub dropped: u64,
}

/// Handle to hand call records to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CdrWriter {
    tx: mpsc::UnboundedSender<CallRecord>,
    queued: Arc<Queued>,
    stats: watch::Receiver<CdrStats>,
}

/// Records handed over and not yet taken by the task, and the signal that
/// a full batch is waiting. The task is not woken per record (at thousands
/// of calls a second that is thousands of wake-ups, often of a parked
/// thread): it takes the channel's records on its interval, or when the
/// record that makes a full batch rings.
#[derive(Debug)]
struct Queued {
    count: AtomicUsize,
    batch_max: usize,
    full: Notify,
}

/// The writer task: run it once (see [`CdrTask::run`]).
#[derive(Debug)]
pub struct CdrTask {
    inner: Flusher<Store>,
}

impl CdrWriter {
    /// A handle and its task with the default [`CdrSettings`], the task
    /// spawned on the current tokio runtime. The handle returns once
    /// `shutdown` is cancelled and every record is written (or the
    /// [`CdrSettings::shutdown_grace`] ran out).
    pub fn start(store: Store, shutdown: CancellationToken) -> (CdrWriter, JoinHandle<()>) {
        Self::start_with(store, CdrSettings::default(), shutdown)
    }

    /// [`CdrWriter::start`] with given settings.
    pub fn start_with(store: Store, settings: CdrSettings, shutdown: CancellationToken) -> (CdrWriter, JoinHandle<()>) {
        let (writer, task) = Self::new(store, settings);
        (writer, tokio::spawn(task.run(shutdown)))
    }

    /// A handle and its task, not started: for callers that drive the task
    /// themselves.
    pub fn new(store: Store, settings: CdrSettings) -> (CdrWriter, CdrTask) {
        let (writer, inner) = Flusher::new(store, settings);
        (writer, CdrTask { inner })
    }

    /// Queues a record; never blocks, never waits on the database.
    ///
    /// Cancel the writer's shutdown token only once nothing records any
    /// more: a record queued after the task finished is lost, and logged.
    pub fn record(&self, record: CallRecord) {
        // Counted before it is sent, so the task (which counts down as it
        // takes) never sees fewer than it holds.
        let before = self.queued.count.fetch_add(1, Ordering::Relaxed);
        match self.tx.send(record) {
            Ok(()) if before + 1 == self.queued.batch_max => self.queued.full.notify_one(),
            Ok(()) => {}
            Err(mpsc::error::SendError(r)) => {
                self.queued.count.fetch_sub(1, Ordering::Relaxed);
                error!(call_id = %r.call_id, outcome = %r.outcome, "call record after the writer stopped: lost");
            }
        }
    }

    /// The writer's counters now.
    pub fn stats(&self) -> CdrStats {
        *self.stats.borrow()
    }

    /// The writer's counters, updated as it works (e.g. `wait_for(|s| …)`).
    pub fn watch_stats(&self) -> watch::Receiver<CdrStats> {
        self.stats.clone()
    }
}

impl CdrTask {
    /// Writes records until `shutdown` is cancelled (or every [`CdrWriter`]
    /// is dropped), then writes what remains and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        self.inner.run(shutdown).await
    }
}

/// Where records go: the store, or a fake in unit tests.
trait Sink: Send + Sync + 'static {
    fn insert(&self, records: &[CallRecord]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Sink for Store {
    fn insert(&self, records: &[CallRecord]) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.call_records_insert(records)
    }
}

/// True when the database refused the records themselves (retrying cannot
/// help), false when it failed or could not be reached.
fn is_rejection(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => !matches!(d.kind(), sqlx::error::ErrorKind::Other),
        StoreError::Database(sqlx::Error::Encode(_)) => true,
        StoreError::Database(_) => false,
        StoreError::Invalid { .. } | StoreError::Conflict { .. } | StoreError::NotFound { .. } => true,
        _ => false,
    }
}

/// The next pause after a failure: `min` first, then doubling up to `max`.
fn next_backoff(current: Option<Duration>, min: Duration, max: Duration) -> Duration {
    current.map_or(min, |d| d.saturating_mul(2)).clamp(min, max.max(min))
}

#[derive(Debug)]
struct Flusher<S> {
    sink: S,
    rx: mpsc::UnboundedReceiver<CallRecord>,
    queued: Arc<Queued>,
    buf: VecDeque<CallRecord>,
    settings: CdrSettings,
    stats: CdrStats,
    stats_tx: watch::Sender<CdrStats>,
    /// Set while the database is failing: the current pause and when to retry.
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    /// Records dropped over the cap since the last report.
    overflowed: u64,
}

impl<S: Sink> Flusher<S> {
    fn new(sink: S, mut settings: CdrSettings) -> (CdrWriter, Self) {
        settings.batch_max = settings.batch_max.max(1);
        settings.max_buffered = settings.max_buffered.max(settings.batch_max);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(CdrStats::default());
        let queued =
            Arc::new(Queued { count: AtomicUsize::new(0), batch_max: settings.batch_max, full: Notify::new() });
        let flusher = Flusher {
            sink,
            rx,
            queued: queued.clone(),
            buf: VecDeque::new(),
            settings,
            stats: CdrStats::default(),
            stats_tx,
            backoff: None,
            retry_at: None,
            overflowed: 0,
        };
        (CdrWriter { tx, queued, stats }, flusher)
    }

    async fn run(mut self, shutdown: CancellationToken) {
        // Not `interval`: its first tick is immediate and would write a
        // partial batch of whatever arrived by then.
        let every = self.settings.flush_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let queued = self.queued.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                _ = async {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.retry_at = None;
                    self.take_queued();
                    self.flush().await;
                }
                _ = tick.tick() => {
                    let open = self.take_queued();
                    if self.retry_at.is_none() && !self.buf.is_empty() {
                        self.flush().await;
                    }
                    if !open {
                        break;
                    }
                }
                _ = queued.full.notified() => {
                    self.take_queued();
                    if self.retry_at.is_none() {
                        self.flush_full().await;
                    }
                }
            }
            self.publish();
        }
        self.finish().await;
    }

    /// Takes every record waiting in the channel into the buffer (which
    /// drops the oldest over its cap). False once every writer is gone.
    fn take_queued(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(record) => {
                    self.queued.count.fetch_sub(1, Ordering::Relaxed);
                    self.push(record);
                }
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Shutdown: take what is still in the channel and write everything,
    /// retrying until the grace runs out.
    async fn finish(&mut self) {
        self.rx.close();
        self.take_queued();
        let grace = self.settings.shutdown_grace;
        let written = tokio::time::timeout(grace, async {
            loop {
                if self.flush().await {
                    return;
                }
                self.publish();
                if let Some(t) = self.retry_at.take() {
                    tokio::time::sleep_until(t).await;
                }
            }
        })
        .await;
        if written.is_err() && !self.buf.is_empty() {
            let lost = self.buf.len();
            error!(lost, "shutdown: the database stayed unavailable; call records not written are lost");
            self.stats.dropped += lost as u64;
            self.buf.clear();
        } else {
            debug!(written = self.stats.written, "call records flushed");
        }
        self.publish();
    }

    fn push(&mut self, record: CallRecord) {
        if self.buf.len() >= self.settings.max_buffered
            && let Some(old) = self.buf.pop_front()
        {
            if self.overflowed == 0 {
                error!(
                    max = self.settings.max_buffered,
                    call_id = %old.call_id,
                    "call record buffer full while the database is unavailable: dropping the oldest"
                );
            }
            self.overflowed += 1;
            self.stats.dropped += 1;
        }
        self.buf.push_back(record);
    }

    /// Writes every held record, a batch at a time. False when the database
    /// failed: the rest is kept and a retry is scheduled.
    async fn flush(&mut self) -> bool {
        while !self.buf.is_empty() {
            if !self.write_batch().await {
                return false;
            }
        }
        self.recovered();
        true
    }

    /// Writes the full batches held; a partial one waits for the interval.
    async fn flush_full(&mut self) {
        while self.buf.len() >= self.settings.batch_max {
            if !self.write_batch().await {
                return;
            }
        }
    }

    /// Writes the oldest batch held. False when the database failed (a
    /// retry is scheduled).
    async fn write_batch(&mut self) -> bool {
        let n = self.buf.len().min(self.settings.batch_max);
        let res = self.sink.insert(&self.buf.make_contiguous()[..n]).await;
        let res = match res {
            Ok(()) => {
                self.buf.drain(..n);
                self.stats.written += n as u64;
                self.stats.batches += 1;
                Ok(())
            }
            Err(e) if is_rejection(&e) => self.write_one_by_one(n).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    async fn write_one_by_one(&mut self, n: usize) -> Result<(), StoreError> {
        for _ in 0..n {
            let Some(record) = self.buf.front() else { break };
            match self.sink.insert(std::slice::from_ref(record)).await {
                Ok(()) => {
                    self.stats.written += 1;
                    self.stats.batches += 1;
                }
                Err(e) if is_rejection(&e) => {
                    error!(call_id = %record.call_id, error = %e, "call record refused by the database: dropped");
                    self.stats.rejected += 1;
                }
                Err(e) => return Err(e),
            }
            self.buf.pop_front();
        }
        Ok(())
    }

    fn failed(&mut self, e: &StoreError) {
        self.stats.failed_attempts += 1;
        if self.backoff.is_none() {
            warn!(error = %e, pending = self.buf.len(), "cannot write call records; keeping them and retrying");
        }
        let pause = next_backoff(self.backoff, self.settings.retry_min, self.settings.retry_max);
        self.backoff = Some(pause);
        self.retry_at = Some(Instant::now() + pause);
    }

    fn recovered(&mut self) {
        if self.backoff.take().is_some() {
            info!(written = self.stats.written, "database reachable again; call records written");
        }
        self.retry_at = None;
        if self.overflowed > 0 {
            error!(lost = self.overflowed, "call records were dropped while the database was unavailable");
            self.overflowed = 0;
        }
    }

    fn publish(&mut self) {
        self.stats.pending = self.buf.len() + self.queued.count.load(Ordering::Relaxed);
        let stats = self.stats;
        self.stats_tx.send_if_modified(|s| {
            let changed = *s != stats;
            *s = stats;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn rec(call_id: impl Into<String>) -> CallRecord {
        CallRecord {
            id: 0,
            call_id: call_id.into(),
            node_id: "n1".into(),
            portal_id: Some("p".into()),
            trunk: None,
            direction: "inbound".into(),
            caller: None,
            callee: None,
            target_user: None,
            started_at: 0,
            answered_at: None,
            ended_at: None,
            outcome: "admitted".into(),
            sip_status: None,
            reason: None,
            media: None,
        }
    }

    /// A database that can be down, and refuses records whose Call-ID
    /// starts with `bad`.
    #[derive(Debug, Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Debug, Default)]
    struct FakeState {
        down: bool,
        rows: Vec<String>,
        batches: Vec<usize>,
    }

    impl Fake {
        fn set_down(&self, down: bool) {
            self.0.lock().expect("lock").down = down;
        }
        fn rows(&self) -> Vec<String> {
            self.0.lock().expect("lock").rows.clone()
        }
        fn batches(&self) -> Vec<usize> {
            self.0.lock().expect("lock").batches.clone()
        }
    }

    impl Sink for Fake {
        fn insert(&self, records: &[CallRecord]) -> impl Future<Output = Result<(), StoreError>> + Send {
            let res = {
                let mut s = self.0.lock().expect("lock");
                if s.down {
                    Err(StoreError::Database(sqlx::Error::PoolTimedOut))
                } else if records.iter().any(|r| r.call_id.starts_with("bad")) {
                    Err(StoreError::Invalid { field: "direction", detail: "refused".into() })
                } else {
                    s.rows.extend(records.iter().map(|r| r.call_id.clone()));
                    s.batches.push(records.len());
                    Ok(())
                }
            };
            async move { res }
        }
    }

    fn fast() -> CdrSettings {
        CdrSettings {
            flush_interval: Duration::from_millis(5),
            batch_max: 10,
            max_buffered: 1000,
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    fn start(fake: &Fake, settings: CdrSettings) -> (CdrWriter, CancellationToken, JoinHandle<()>) {
        let (writer, flusher) = Flusher::new(fake.clone(), settings);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flusher.run(shutdown.clone()));
        (writer, shutdown, task)
    }

    async fn wait(writer: &CdrWriter, what: &str, f: impl FnMut(&CdrStats) -> bool) {
        let mut rx = writer.watch_stats();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(f))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", writer.stats()))
            .expect("writer alive");
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(next_backoff(None, min, max), min);
        assert_eq!(next_backoff(Some(min), min, max), Duration::from_millis(400));
        assert_eq!(next_backoff(Some(Duration::from_secs(4)), min, max), max);
        assert_eq!(next_backoff(Some(Duration::MAX), min, max), max);
    }

    #[test]
    fn unavailable_is_retried_refusals_are_not() {
        assert!(!is_rejection(&StoreError::Database(sqlx::Error::PoolTimedOut)));
        assert!(!is_rejection(&StoreError::Database(sqlx::Error::PoolClosed)));
        assert!(!is_rejection(&StoreError::Database(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))));
        assert!(is_rejection(&StoreError::Invalid { field: "x", detail: String::new() }));
    }

    #[tokio::test]
    async fn batches_are_at_most_batch_max_and_shutdown_flushes_all() {
        let fake = Fake::default();
        let settings = CdrSettings { flush_interval: Duration::from_secs(3600), ..fast() };
        let (writer, shutdown, task) = start(&fake, settings);
        for i in 0..35 {
            writer.record(rec(format!("c{i}")));
        }
        // 30 go at once in full batches; the last 5 wait for the (hour-long)
        // interval, or the shutdown.
        wait(&writer, "three full batches", |s| s.written == 30).await;
        assert_eq!(fake.batches(), [10, 10, 10]);
        shutdown.cancel();
        task.await.expect("task");
        assert_eq!(fake.rows(), (0..35).map(|i| format!("c{i}")).collect::<Vec<_>>(), "all, in order");
        assert_eq!(fake.batches(), [10, 10, 10, 5]);
        assert_eq!(writer.stats(), CdrStats { written: 35, batches: 4, ..CdrStats::default() });
    }

    #[tokio::test]
    async fn interval_writes_a_partial_batch() {
        let fake = Fake::default();
        let (writer, shutdown, task) = start(&fake, fast());
        writer.record(rec("a"));
        writer.record(rec("b"));
        wait(&writer, "the interval flush", |s| s.written == 2).await;
        assert_eq!(fake.batches(), [2]);
        shutdown.cancel();
        task.await.expect("task");
    }

    #[tokio::test]
    async fn outage_keeps_records_and_retries() {
        let fake = Fake::default();
        fake.set_down(true);
        let (writer, shutdown, task) = start(&fake, fast());
        for i in 0..25 {
            writer.record(rec(format!("c{i}")));
        }
        wait(&writer, "retries", |s| s.failed_attempts >= 3 && s.pending == 25).await;
        assert!(fake.rows().is_empty());
        fake.set_down(false);
        wait(&writer, "recovery", |s| s.written == 25 && s.pending == 0).await;
        assert_eq!(fake.batches(), [10, 10, 5]);
        shutdown.cancel();
        task.await.expect("task");
        assert_eq!(writer.stats().dropped, 0);
    }

    #[tokio::test]
    async fn over_the_cap_the_oldest_are_dropped() {
        let fake = Fake::default();
        fake.set_down(true);
        let (writer, shutdown, task) = start(&fake, CdrSettings { max_buffered: 20, ..fast() });
        for i in 0..30 {
            writer.record(rec(format!("c{i}")));
        }
        wait(&writer, "the cap", |s| s.dropped == 10 && s.pending == 20).await;
        fake.set_down(false);
        shutdown.cancel();
        task.await.expect("task");
        assert_eq!(fake.rows(), (10..30).map(|i| format!("c{i}")).collect::<Vec<_>>());
        assert_eq!(writer.stats().dropped, 10);
    }

    #[tokio::test]
    async fn a_refused_record_does_not_block_the_others() {
        let fake = Fake::default();
        let (writer, shutdown, task) = start(&fake, fast());
        for id in ["a", "bad1", "b", "c"] {
            writer.record(rec(id));
        }
        shutdown.cancel();
        task.await.expect("task");
        assert_eq!(fake.rows(), ["a", "b", "c"]);
        let s = writer.stats();
        assert_eq!((s.written, s.rejected, s.dropped, s.pending), (3, 1, 0, 0));
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_the_grace() {
        let fake = Fake::default();
        fake.set_down(true);
        let (writer, shutdown, task) =
            start(&fake, CdrSettings { shutdown_grace: Duration::from_millis(50), ..fast() });
        writer.record(rec("a"));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("returns after the grace").expect("task");
        assert_eq!(writer.stats().dropped, 1);
        // The task is gone: a late record is logged as lost, not queued.
        writer.record(rec("late"));
        assert!(fake.rows().is_empty());
    }

    #[tokio::test]
    async fn shutdown_retries_within_the_grace() {
        let fake = Fake::default();
        fake.set_down(true);
        let (writer, shutdown, task) = start(&fake, fast());
        writer.record(rec("a"));
        wait(&writer, "a failure", |s| s.failed_attempts >= 1).await;
        shutdown.cancel();
        wait(&writer, "retries during shutdown", |s| s.failed_attempts >= 3).await;
        fake.set_down(false);
        task.await.expect("task");
        assert_eq!(fake.rows(), ["a"]);
        assert_eq!(writer.stats().dropped, 0);
    }
}

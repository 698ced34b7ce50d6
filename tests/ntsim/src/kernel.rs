//! One simulated kernel: its pool, IRPs, MDLs, dispatcher, WSK provider, faults and
//! verifier reports. Threads reach it through a thread-local set by [`Kernel::enter`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::faults::Faults;
use crate::rng::Rng;
use crate::verifier::Report;
use crate::{
    debug, device, driver, file, interface, io, mdl, notify, pnp, pool, registry, sync, timer, workitem, wsk,
    xstate,
};

/// How a kernel boots.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The fault-injection seed; `NTSIM_SEED` in the environment, else random.
    pub seed: Option<u64>,
    /// The faults to inject from the start (they can be changed while running).
    pub faults: Faults,
    /// Skip the verifier's check that a send's bytes do not change while it is in flight
    /// (a hash of every byte at submission and again at completion). For benchmarks only:
    /// the check costs more per byte than the AES-GCM it would be measured against, and
    /// no real kernel pays it.
    pub unchecked_send_buffers: bool,
}

pub(crate) struct KernelInner {
    pub(crate) seed: u64,
    /// Config::unchecked_send_buffers.
    pub(crate) unchecked_send_buffers: bool,
    /// When this kernel booted: interrupt time counts from here.
    pub(crate) booted: Instant,
    pub(crate) pool: pool::Pool,
    pub(crate) irps: io::Irps,
    pub(crate) mdls: mdl::Mdls,
    pub(crate) dispatcher: sync::Dispatcher,
    pub(crate) timers: timer::Timers,
    pub(crate) work: workitem::WorkItems,
    pub(crate) wsk: wsk::Provider,
    pub(crate) xstate: xstate::Saves,
    pub(crate) debug: debug::DebugLog,
    pub(crate) drivers: driver::Drivers,
    pub(crate) devices: device::Devices,
    pub(crate) files: file::Files,
    pub(crate) pnp: pnp::RootBus,
    pub(crate) interfaces: interface::Interfaces,
    pub(crate) notify: notify::Notifications,
    pub(crate) registry: registry::Registry,
    faults: Mutex<Faults>,
    /// `faults.dispatch_level_completions`, readable without the lock: every inline
    /// completion asks.
    inline_at_dispatch: AtomicBool,
    rng: Mutex<Rng>,
    reports: Mutex<Vec<Report>>,
    pub(crate) counters: Counters,
    /// The allocation attempt `Kernel::fail_allocation` named (u64::MAX: none), and what
    /// it was once it failed.
    pub(crate) fail_at: AtomicU64,
    pub(crate) injected: Mutex<Option<crate::faults::InjectedFailure>>,
    /// What freed pool must not hold (`Kernel::watch_secrets`).
    pub(crate) secrets: Mutex<crate::secrets::Watch>,
}

/// Event counts a test can read back (how many sends pended, completions were split...).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sends_pended: AtomicU64,
    pub(crate) sends_inline: AtomicU64,
    pub(crate) send_pieces: AtomicU64,
    pub(crate) receives_split: AtomicU64,
    pub(crate) completions_delayed: AtomicU64,
    pub(crate) allocations_failed: AtomicU64,
    pub(crate) rng_calls: AtomicU64,
    pub(crate) rng_bytes: AtomicU64,
    pub(crate) xstate_saves: AtomicU64,
    pub(crate) xstate_restores: AtomicU64,
    pub(crate) debug_prints: AtomicU64,
    pub(crate) stack_expansions: AtomicU64,
    /// Successful ExAllocatePool2, IoAllocateIrp and IoAllocateMdl calls.
    pub(crate) allocations: AtomicU64,
    /// Every call that could have failed for want of memory (pool, IRP, MDL, work item,
    /// device object, driver extension), whether it did or not.
    pub(crate) allocation_attempts: AtomicU64,
    /// IRP_MJ_CREATEs sent to a driver (opens the security descriptor let through).
    pub(crate) creates_sent: AtomicU64,
    pub(crate) null_bytes_sent: AtomicU64,
    pub(crate) null_bytes_received: AtomicU64,
    /// `Faults::breaks` drawn.
    pub(crate) resets_injected: AtomicU64,
    pub(crate) forced_closes_injected: AtomicU64,
    pub(crate) stalls_injected: AtomicU64,
}

/// What a kernel has seen and still holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub pool_bytes: usize,
    pub pool_blocks: usize,
    pub pool_peak_bytes: usize,
    pub irps: usize,
    pub mdls: usize,
    pub sockets: usize,
    pub sends_pended: u64,
    pub sends_inline: u64,
    /// Pieces the provider wrote split sends in (beyond one per send).
    pub send_pieces: u64,
    pub receives_split: u64,
    pub completions_delayed: u64,
    pub allocations_failed: u64,
    /// BCryptGenRandom calls, and the bytes they filled.
    pub rng_calls: u64,
    pub rng_bytes: u64,
    /// Successful KeSaveExtendedProcessorState calls, and KeRestoreExtendedProcessorState
    /// calls: a driver that saves once per batch shows far fewer saves than records.
    pub xstate_saves: u64,
    pub xstate_restores: u64,
    /// Pool blocks, IRPs and MDLs allocated since boot (successful calls): a data path
    /// that allocates nothing leaves this unchanged.
    pub allocations: u64,
    /// Calls that could have failed for want of memory (pool, IRP, MDL, work item, device
    /// object, driver extension), failed or not: what [`Kernel::fail_allocation`] counts.
    pub allocation_attempts: u64,
    /// DbgPrintEx calls (their newest messages: [`Kernel::debug_messages`]).
    pub debug_prints: u64,
    /// KeExpandKernelStackAndCallout calls that ran their callout (refused ones are not
    /// counted).
    pub stack_expansions: u64,
    /// Device objects alive (deleted ones still referenced included).
    pub devices: usize,
    /// File objects alive.
    pub file_objects: usize,
    /// IRP_MJ_CREATEs that reached a driver: an open refused by the security descriptor
    /// does not count, one refused by the driver does.
    pub creates_sent: u64,
    /// Device interfaces enabled now.
    pub interfaces_enabled: usize,
    /// PnP notification registrations alive.
    pub notifications: usize,
    /// Bytes null-transport sockets completed sends of (each such send also counts in
    /// `sends_inline`), and bytes their sources filled receives with.
    pub null_bytes_sent: u64,
    pub null_bytes_received: u64,
    /// Threads a dispatcher signal woke (KeSetEvent, a timer expiring, the last reference
    /// of a rundown in progress going): a signal wakes the waiters of its object only,
    /// one of them for a synchronization object.
    pub waits_woken: u64,
    /// Connections `Faults::breaks` reset, force-closed and stalled.
    pub resets_injected: u64,
    pub forced_closes_injected: u64,
    pub stalls_injected: u64,
}

impl KernelInner {
    pub(crate) fn record(&self, report: Report) {
        lock(&self.reports).push(report);
    }

    pub(crate) fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    fn set_faults(&self, faults: Faults) {
        let mut f = lock(&self.faults);
        self.inline_at_dispatch.store(faults.dispatch_level_completions, Ordering::Relaxed);
        *f = faults;
    }

    /// Whether inline completions run at DISPATCH_LEVEL (`Faults::dispatch_level_completions`).
    pub(crate) fn inline_completions_at_dispatch(&self) -> bool {
        self.inline_at_dispatch.load(Ordering::Relaxed)
    }

    /// A fresh generator for one object (a socket, an allocation site), drawn from the
    /// kernel's seeded generator so decisions replay in the same order of creation.
    pub(crate) fn fork_rng(&self) -> Rng {
        Rng::new(lock(&self.rng).next_u64())
    }

    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut Rng) -> R) -> R {
        f(&mut lock(&self.rng))
    }
}

/// A map keyed by an address (an IRP's, an MDL's): the verifier looks these up several
/// times per request, and SipHash's defence against chosen keys buys nothing here.
pub(crate) type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// One folded 128-bit multiply (as foldhash does): aligned addresses spread over both
/// the low bits (the bucket) and the high bits (the tag) of the hash.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let m = u128::from(n ^ self.0) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ (m >> 64) as u64;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Locks a mutex even if a panicking thread poisoned it: the simulator's state stays
/// consistent between its own operations.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on a condition variable for at most `timeout`, with the same tolerance of
/// poisoning as [`lock`].
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout).unwrap_or_else(|e| e.into_inner()).0
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<KernelInner>>> = const { RefCell::new(None) };
}

/// The kernel this thread has entered, if any.
pub(crate) fn try_current() -> Option<Arc<KernelInner>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `f` with the kernel this thread has entered, if any, borrowed rather than cloned (no
/// reference count touched: for the checks around every call of a driver routine). `f`
/// must not enter a kernel, so it must not call driver code.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&KernelInner>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_deref()))
}

/// The kernel this thread has entered.
pub(crate) fn current() -> Arc<KernelInner> {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        panic!("ntsim: an NT function was called on a thread that has not entered a kernel (Kernel::enter)")
    })
}

/// Makes `k` this thread's kernel for the life of the guard.
pub struct EnterGuard {
    previous: Option<Arc<KernelInner>>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

pub(crate) fn enter(k: Arc<KernelInner>) -> EnterGuard {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(k));
    EnterGuard { previous }
}

/// A booted kernel. Dropping it shuts it down and fails the test if the verifier
/// reported anything that was not taken with [`Kernel::take_reports`].
pub struct Kernel {
    inner: Arc<KernelInner>,
    /// Timer, PnP and WSK provider threads and the system workers; empty once stopped.
    threads: Vec<thread::JoinHandle<()>>,
    finished: bool,
}

static NEXT_SEED_SALT: AtomicU64 = AtomicU64::new(1);

impl Kernel {
    /// Boots a kernel with default faults (none).
    pub fn boot() -> Kernel {
        Kernel::boot_with(Config::default())
    }

    pub fn boot_with(config: Config) -> Kernel {
        let seed = config.seed.or_else(seed_from_env).unwrap_or_else(random_seed);
        let (provider, reactor) = wsk::Provider::new();
        let inner = Arc::new(KernelInner {
            seed,
            booted: Instant::now(),
            pool: pool::Pool::default(),
            irps: io::Irps::default(),
            mdls: mdl::Mdls::default(),
            dispatcher: sync::Dispatcher::default(),
            timers: timer::Timers::default(),
            work: workitem::WorkItems::default(),
            wsk: provider,
            xstate: xstate::Saves::default(),
            debug: debug::DebugLog::default(),
            drivers: driver::Drivers::default(),
            devices: device::Devices::default(),
            files: file::Files::default(),
            pnp: pnp::RootBus::default(),
            interfaces: interface::Interfaces::default(),
            notify: notify::Notifications::default(),
            registry: registry::Registry::default(),
            inline_at_dispatch: AtomicBool::new(config.faults.dispatch_level_completions),
            unchecked_send_buffers: config.unchecked_send_buffers,
            faults: Mutex::new(config.faults),
            rng: Mutex::new(Rng::new(seed)),
            reports: Mutex::new(Vec::new()),
            counters: Counters::default(),
            fail_at: AtomicU64::new(u64::MAX),
            injected: Mutex::new(None),
            secrets: Mutex::default(),
        });
        let k = Arc::clone(&inner);
        let reactor = thread::Builder::new()
            .name("ntsim-wsk".into())
            .spawn(move || {
                let _in = enter(Arc::clone(&k));
                reactor.run(&k);
            })
            .expect("ntsim: cannot start the WSK provider thread");
        let mut system_threads = vec![
            Self::system_thread(&inner, "ntsim-timer", |k| k.timers.run(k)),
            Self::system_thread(&inner, "ntsim-pnp", |k| k.notify.run(k)),
            reactor,
        ];
        for n in 0..workitem::WORKER_THREADS {
            system_threads.push(Self::system_thread(&inner, &format!("ntsim-worker-{n}"), |k| k.work.run(k)));
        }
        Kernel { inner, threads: system_threads, finished: false }
    }

    fn system_thread(inner: &Arc<KernelInner>, name: &str, body: fn(&KernelInner)) -> thread::JoinHandle<()> {
        let k = Arc::clone(inner);
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _in = enter(Arc::clone(&k));
                body(&k);
            })
            .expect("ntsim: cannot start a system thread")
    }

    pub(crate) fn inner(&self) -> &Arc<KernelInner> {
        &self.inner
    }

    /// Enters this kernel on the calling thread, at PASSIVE_LEVEL.
    pub fn enter(&self) -> EnterGuard {
        enter(Arc::clone(&self.inner))
    }

    /// Runs `f` on a new thread that has entered this kernel (a system thread).
    pub fn spawn<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> thread::JoinHandle<R> {
        let k = Arc::clone(&self.inner);
        thread::spawn(move || {
            let _in = enter(k);
            f()
        })
    }

    /// Runs `f` as DriverEntry: WSK forbids waiting for the provider NPI here.
    pub fn driver_entry<R>(&self, f: impl FnOnce() -> R) -> R {
        let _in = self.enter();
        wsk::in_driver_entry(f)
    }

    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Changes the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.inner.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.inner.faults()
    }

    /// Makes every open socket stop working, as when the transport goes away: pending
    /// requests complete with STATUS_FILE_FORCED_CLOSED and so does every later call
    /// but WskCloseSocket.
    pub fn force_close_sockets(&self) {
        self.inner.wsk.force_close_all();
    }

    /// Turns the connected WSK socket(s) whose remote address is `remote` into null
    /// transports, for benchmarks of the driver alone: from now on WskSend completes
    /// inline with every byte and touches none, and WskReceive is filled from `incoming`
    /// (with None, receives stay pending until the socket closes). The TCP stream is no
    /// longer read or written (it stays open, whatever its peer does, until the socket
    /// closes); what was pending on it finishes as the null transport would finish it.
    /// Sockets switched by one call share `incoming`. Sockets already null, not yet
    /// connected, or closing are left alone. Returns how many sockets were switched.
    pub fn set_null_transport(&self, remote: SocketAddr, incoming: Option<crate::NullSource>) -> usize {
        self.inner.wsk.set_null(remote, incoming)
    }

    /// Serves the pending receives of the null sockets to `remote` from their source
    /// again (it has bytes now). The provider thread fills and completes them, at
    /// DISPATCH_LEVEL, as it completes TCP receives; this call does not wait for that.
    pub fn null_transport_ready(&self, remote: SocketAddr) {
        self.inner.wsk.null_ready(remote);
    }

    /// For each connected TCP socket to `remote`, whether Nagle's algorithm is on: a send
    /// with WSK_FLAG_NODELAY turns it off for its bytes, one without turns it back on.
    pub fn nagle(&self, remote: SocketAddr) -> Vec<bool> {
        self.inner.wsk.nagle(remote)
    }

    /// Makes allocation attempt number `attempt` fail (attempts are numbered from 0 at
    /// boot, as `Stats::allocation_attempts` counts them), whatever its kind: the
    /// low-resources sweep fails each allocation site of an operation in turn. One at a
    /// time; a later call replaces an earlier one that has not happened yet.
    pub fn fail_allocation(&self, attempt: u64) {
        *lock(&self.inner.injected) = None;
        self.inner.fail_at.store(attempt, Ordering::Relaxed);
    }

    /// The failure [`Kernel::fail_allocation`] asked for, once it has happened.
    pub fn injected_failure(&self) -> Option<crate::faults::InjectedFailure> {
        lock(&self.inner.injected).take()
    }

    /// From now on, pool blocks whose tag starts with `prefix` are copied as they are
    /// freed, to be scanned by the next [`Kernel::watch_secrets`]: for what is freed
    /// before the secrets are known (a handshake's).
    pub fn keep_freed_pool(&self, prefix: &str) {
        self.inner.keep_freed_pool(prefix);
    }

    /// From now on, a pool block whose tag starts with `prefix` that is freed holding one
    /// of `needles` (label, bytes) is a verifier report (`Rule::SecretLeftBehind`): the
    /// driver gave back memory with plaintext or a key still in it. The blocks kept since
    /// [`Kernel::keep_freed_pool`] are checked first. Replaces any earlier watch; an
    /// empty list stops watching.
    pub fn watch_secrets(&self, prefix: &str, needles: Vec<(String, Vec<u8>)>) {
        self.inner.watch_secrets(prefix, needles);
    }

    /// The live pool blocks of the watched tags that hold a watched secret, as `(tag,
    /// size, label)`: what a driver keeps after it is done with a channel.
    pub fn secrets_in_live_pool(&self) -> Vec<(String, usize, String)> {
        self.inner.secrets_in_live_pool()
    }

    /// The reports recorded so far, removed so that dropping the kernel does not fail.
    pub fn take_reports(&self) -> Vec<Report> {
        std::mem::take(&mut *lock(&self.inner.reports))
    }

    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let pool = self.inner.pool.totals();
        Stats {
            pool_bytes: pool.bytes,
            pool_blocks: pool.blocks,
            pool_peak_bytes: pool.peak_bytes,
            irps: self.inner.irps.outstanding(),
            mdls: self.inner.mdls.outstanding(),
            sockets: self.inner.wsk.sockets_open(),
            sends_pended: c.sends_pended.load(Ordering::Relaxed),
            sends_inline: c.sends_inline.load(Ordering::Relaxed),
            send_pieces: c.send_pieces.load(Ordering::Relaxed),
            receives_split: c.receives_split.load(Ordering::Relaxed),
            completions_delayed: c.completions_delayed.load(Ordering::Relaxed),
            allocations_failed: c.allocations_failed.load(Ordering::Relaxed),
            rng_calls: c.rng_calls.load(Ordering::Relaxed),
            rng_bytes: c.rng_bytes.load(Ordering::Relaxed),
            xstate_saves: c.xstate_saves.load(Ordering::Relaxed),
            xstate_restores: c.xstate_restores.load(Ordering::Relaxed),
            allocations: c.allocations.load(Ordering::Relaxed),
            allocation_attempts: c.allocation_attempts.load(Ordering::Relaxed),
            debug_prints: c.debug_prints.load(Ordering::Relaxed),
            stack_expansions: c.stack_expansions.load(Ordering::Relaxed),
            devices: self.inner.devices.alive(),
            file_objects: self.inner.files.alive(),
            creates_sent: c.creates_sent.load(Ordering::Relaxed),
            interfaces_enabled: self.inner.interfaces.enabled_count(),
            notifications: self.inner.notify.count(),
            null_bytes_sent: c.null_bytes_sent.load(Ordering::Relaxed),
            null_bytes_received: c.null_bytes_received.load(Ordering::Relaxed),
            waits_woken: self.inner.dispatcher.woken(),
            resets_injected: c.resets_injected.load(Ordering::Relaxed),
            forced_closes_injected: c.forced_closes_injected.load(Ordering::Relaxed),
            stalls_injected: c.stalls_injected.load(Ordering::Relaxed),
        }
    }

    /// Pool in use by the tags that start with `prefix` ("" for all).
    pub fn pool_usage(&self, prefix: &str) -> crate::pool::PoolUsage {
        self.inner.pool.usage(prefix)
    }

    /// The newest DbgPrintEx messages (at most 256), oldest first, as `(level, text)`;
    /// each text is what the kernel would transmit (at most `DEBUG_PRINT_LIMIT` bytes).
    pub fn debug_messages(&self) -> Vec<(u32, String)> {
        self.inner.debug.messages()
    }

    /// Unloads: stops the provider, then reports every socket, registration, IRP, MDL,
    /// pool block and extended-state save still alive. Returns all reports not yet taken.
    pub fn shutdown(mut self) -> Vec<Report> {
        self.stop();
        self.finished = true;
        self.take_reports()
    }

    /// Unloads and fails (printing the seed) on any report not yet taken.
    pub fn finish(self) {
        let seed = self.seed();
        let reports = self.shutdown();
        assert!(reports.is_empty(), "{}", failure_text(seed, &reports));
    }

    fn stop(&mut self) {
        if !self.threads.is_empty() {
            self.inner.work.stop();
            self.inner.timers.stop();
            self.inner.wsk.stop();
            self.inner.notify.stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            let _in = self.enter();
            self.inner.work.check_unload();
            self.inner.timers.check_unload();
            self.inner.wsk.check_unload();
            self.inner.notify.check_unload();
            self.inner.files.check_unload();
            self.inner.devices.check_unload();
            self.inner.interfaces.check_unload();
            self.inner.registry.check_unload();
            self.inner.irps.check_unload();
            self.inner.mdls.check_unload();
            self.inner.pool.check_unload();
            self.inner.xstate.check_unload();
        }
    }
}

fn failure_text(seed: u64, reports: &[Report]) -> String {
    let mut s = format!("ntsim verifier: {} report(s); replay with NTSIM_SEED={seed}\n", reports.len());
    for r in reports {
        s.push_str(&format!("  {r}\n"));
    }
    s
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.stop();
        let reports = self.take_reports();
        if thread::panicking() {
            eprintln!("ntsim: test failed with fault-injection seed NTSIM_SEED={}", self.seed());
            if !reports.is_empty() {
                eprintln!("{}", failure_text(self.seed(), &reports));
            }
        } else if !reports.is_empty() {
            panic!("{}", failure_text(self.seed(), &reports));
        }
    }
}

fn seed_from_env() -> Option<u64> {
    std::env::var("NTSIM_SEED").ok()?.trim().parse().ok()
}

fn random_seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let salt = NEXT_SEED_SALT.fetch_add(1, Ordering::Relaxed);
    Rng::new(t ^ salt.rotate_left(32) ^ std::process::id() as u64).next_u64()
}

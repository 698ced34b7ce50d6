//! The simulated machine: ntsim booted, wsktls loaded as Windows loads it (DriverEntry,
//! AddDevice for its root-enumerated device with the INF's security descriptor, START),
//! and the sample consumer loaded and bound to wsktls's interface. [`Host::run`] ends
//! every run by taking it all down in order and returning the verifier's verdict; the
//! runner never leaves a kernel to be dropped (that would panic on a report).

use std::sync::Arc;
use std::time::Duration;

use ntsim::{Config, Device, Driver, EnterGuard, Kernel, Report, Stats};
use wsktls::nt::NTSTATUS;
use wsktls_sample_consumer::{Binding, Consumer};

use crate::words::Failure;

/// The INF, built into the runner so that it works from any directory.
const INF: &str = include_str!("../../../inf/wsktls.inx");
/// How long unload waits for a driver's devices to go.
const UNLOAD_WAIT: Duration = Duration::from_secs(20);
/// How long the sample consumer may take to bind once wsktls's interface is there.
const BIND_WAIT_MS: u32 = 20_000;

/// A running kernel with wsktls and the sample consumer loaded.
pub struct Host {
    // Dropped first: this thread leaves the kernel before it shuts down.
    entered: Option<EnterGuard>,
    kernel: Kernel,
    wsktls: Option<Driver>,
    device: Option<Device>,
    sample: Option<Driver>,
}

/// How a run ended for the verifier, and what teardown could not do.
pub struct Verdict {
    pub reports: Vec<Report>,
    /// Teardown steps that failed ("remove the wsktls device: STATUS_DEVICE_BUSY").
    pub teardown: Vec<String>,
    /// The kernel's figures just before shutdown (peaks included).
    pub stats: Stats,
    /// Replays ntsim's fault decisions (there are none unless NTSIM_* asks for them).
    pub seed: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.reports.is_empty() && self.teardown.is_empty()
    }

    /// "clean", or each report and failed step on a line of its own.
    pub fn describe(&self) -> String {
        if self.clean() {
            return "clean".into();
        }
        let mut text = format!("{} report(s) (NTSIM_SEED={} replays)", self.reports.len(), self.seed);
        for r in &self.reports {
            text += &format!("\n  {r}");
        }
        for step in &self.teardown {
            text += &format!("\n  teardown: {step}");
        }
        text
    }
}

/// The device's security descriptor: the SDDL on the INF's `HKR,,Security,,` line.
fn inf_sddl() -> Result<&'static str, Failure> {
    INF.lines()
        .find(|l| l.starts_with("HKR,,Security,,"))
        .and_then(|line| line.split('"').nth(1))
        .ok_or_else(|| Failure::plain("read the INF", "inf/wsktls.inx has no HKR,,Security,, line"))
}

impl Host {
    /// Boots ntsim, loads wsktls and the sample, waits for the sample to bind, runs
    /// `work` with the binding, and takes it all down: `work`'s outcome, and the verdict.
    /// `work` must close its channels and drop the binding before it returns.
    pub fn run<T>(
        work: impl FnOnce(&Host, Arc<Binding>) -> Result<T, Failure>,
    ) -> (Result<T, Failure>, Verdict) {
        Host::run_with(Config::default(), work)
    }

    /// As `run`, on a kernel booted with `config`.
    pub fn run_with<T>(
        config: Config,
        work: impl FnOnce(&Host, Arc<Binding>) -> Result<T, Failure>,
    ) -> (Result<T, Failure>, Verdict) {
        let kernel = Kernel::boot_with(config);
        let entered = Some(kernel.enter());
        let mut host = Host { entered, kernel, wsktls: None, device: None, sample: None };
        let outcome = host.load().and_then(|binding| work(&host, binding));
        (outcome, host.stop())
    }

    fn load(&mut self) -> Result<Arc<Binding>, Failure> {
        let sddl = inf_sddl()?;
        let loading = |what: &str, status: NTSTATUS| {
            Failure::status(format!("load: {what}"), status, "the driver refused to start; see the log above")
        };
        let wsktls = self.kernel.load_driver("wsktls", wsktls::driver::driver_entry, &[]);
        let wsktls = self.wsktls.insert(wsktls.map_err(|s| loading("wsktls DriverEntry", s))?);
        let device = self.kernel.add_root_device(wsktls, "ROOT\\WSKTLS", sddl);
        self.device = Some(device.map_err(|s| loading("wsktls AddDevice and START", s))?);
        let sample = self.kernel.load_driver("wsktls-sample", wsktls_sample_consumer::driver_entry, &[]);
        self.sample = Some(sample.map_err(|s| loading("the sample consumer's DriverEntry", s))?);
        let consumer = self.consumer().ok_or_else(|| {
            Failure::plain("load: the sample consumer", "its DriverEntry left no state behind")
        })?;
        consumer.wait_for_provider(BIND_WAIT_MS).map_err(|s| {
            Failure::status(
                "load: bind the sample consumer to wsktls",
                s,
                "wsktls's device interface did not arrive; see the log above",
            )
        })
    }

    /// The sample consumer's state, while it is loaded.
    fn consumer(&self) -> Option<&Consumer> {
        let sample = self.sample.as_ref()?;
        // SAFETY: the sample's own driver object, loaded through its driver_entry and still
        // loaded (it is unloaded only in `stop`, which consumes the host).
        unsafe { Consumer::of(sample.object()) }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Lets go of the provider, removes wsktls's device, unloads both drivers and shuts
    /// the kernel down. Every channel must have been closed and every binding dropped.
    fn stop(mut self) -> Verdict {
        let mut teardown = Vec::new();
        if let Some(consumer) = self.consumer() {
            consumer.release();
        }
        if let Some(device) = self.device.take() {
            if let Err(s) = self.kernel.remove_device(&device) {
                teardown.push(format!("remove the wsktls device: {s:?}"));
            }
        }
        for (name, driver) in [("wsktls", self.wsktls.take()), ("the sample consumer", self.sample.take())] {
            if let Some(driver) = driver {
                if let Err(s) = self.kernel.unload_driver(driver, UNLOAD_WAIT) {
                    teardown.push(format!("unload {name}: {s:?}"));
                }
            }
        }
        drop(self.entered.take());
        let stats = self.kernel.stats();
        let seed = self.kernel.seed();
        let reports = self.kernel.shutdown();
        Verdict { reports, teardown, stats, seed }
    }
}

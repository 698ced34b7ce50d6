//! The provider thread: waits for socket readiness, timers and pokes, drives each socket
//! that has something to do, and delivers completions at DISPATCH_LEVEL with no socket
//! lock held (so completion routines may call back into WSK).

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wsktls_nt::DISPATCH_LEVEL;

use super::socket::{Completion, Wake, drive, irp};
use super::{Provider, WAKE};
use crate::io;
use crate::irql::with_irql;
use crate::kernel::{KernelInner, lock};

pub(crate) struct Reactor {
    poll: mio::Poll,
}

struct Again<'a>(&'a Provider, u64);

impl Wake for Again<'_> {
    fn again_at(&self, at: Instant) {
        lock(&self.0.timers).push(Reverse((at, self.1)));
    }
}

impl Reactor {
    pub(super) fn new(poll: mio::Poll) -> Reactor {
        Reactor { poll }
    }

    pub(crate) fn run(mut self, k: &KernelInner) {
        let mut events = mio::Events::with_capacity(256);
        let mut ids = Vec::new();
        while !k.wsk.stopping.load(Ordering::Acquire) {
            let timeout = next_timeout(&k.wsk);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    eprintln!("ntsim: epoll failed: {e}");
                    return;
                }
            }
            ids.clear();
            ids.extend(events.iter().filter(|e| e.token() != WAKE).map(|e| e.token().0 as u64));
            ids.append(&mut lock(&k.wsk.dirty));
            due_timers(&k.wsk, &mut ids);
            ids.sort_unstable();
            ids.dedup();
            for &id in &ids {
                step(k, id);
            }
        }
    }
}

fn next_timeout(p: &Provider) -> Duration {
    let cap = Duration::from_millis(50);
    match lock(&p.timers).peek() {
        Some(Reverse((at, _))) => at.saturating_duration_since(Instant::now()).min(cap),
        None => cap,
    }
}

fn due_timers(p: &Provider, ids: &mut Vec<u64>) {
    let now = Instant::now();
    let mut timers = lock(&p.timers);
    while let Some(Reverse((at, id))) = timers.peek().copied() {
        if at > now {
            break;
        }
        timers.pop();
        ids.push(id);
    }
}

/// Drives one socket and delivers what completed. A null socket's feed is locked first,
/// before the state, as a null receive locks them.
pub(super) fn step(k: &KernelInner, id: u64) {
    let Some(s) = k.wsk.socket(id) else { return };
    let feed = s.feed().cloned();
    let mut source = feed.as_deref().map(lock);
    let (done, finished) = drive(k, &s, &Again(&k.wsk, id), source.as_deref_mut());
    drop(source);
    if finished {
        k.wsk.remove_socket(&s);
    }
    deliver(done);
}

/// Completes requests as the provider does from its own threads: at DISPATCH_LEVEL.
pub(super) fn deliver(done: Vec<Completion>) {
    if done.is_empty() {
        return;
    }
    with_irql(DISPATCH_LEVEL, "a WSK completion routine", || {
        for c in &done {
            io::complete(irp(c), c.1, c.2);
        }
    });
}

//! The verdict on one channel's life, once it is closed: was each failure explained by a
//! fault that was on during the life or by the peer's script, and did the echo arrive as
//! the script says. The life's figures are counted here too.

use wsktls::nt::*;

use super::super::chaos::{Ending, Outcome, Script};
use super::consumer::{Life, PeerOf};
use super::{ALLOCATIONS, BREAKS, Shared, UNANSWERED};

/// What was wrong with `life`, a sentence each (nothing, if all was well).
pub(super) fn judge(
    shared: &Shared,
    life: &Life,
    peer: &PeerOf,
    outcome: Option<Outcome>,
    connected: bool,
) -> Vec<String> {
    let kinds = shared.kinds(life.first_phase, shared.phase());
    let script = match peer {
        PeerOf::Chaos(_, s) => Some(*s),
        PeerOf::Echo(_) => None,
    };
    let allowed = explained(life, kinds, script);
    let mut wrong = Vec::new();
    for status in &life.failures {
        if !allowed.contains(status) {
            wrong.push(format!(
                "failed with {status:?}, which nothing injected explains (fault kinds {kinds:#x}, peer {:?}, \
                 its end: {:?}, all: {:?}; {} of {} bytes back, disconnect {:?})",
                script.map(|s| s.ending),
                outcome.map(|o| (o.end, o.error, o.records_read, o.echoed)),
                life.failures,
                life.received,
                life.sent,
                life.disconnect,
            ));
        }
    }
    if let Some(s) = life.disconnect {
        // A Disconnect may time out honestly: our sends cannot drain while a peer with a
        // small window waits for a consumer that is not reading.
        if !(s.is_success() || s == STATUS_IO_TIMEOUT || allowed.contains(&s)) {
            wrong.push(format!("Disconnect completed with {s:?}"));
        }
    }
    let whole = check_echo(life, script, outcome, connected, &mut wrong);
    count(shared, life, peer, outcome, connected, whole);
    wrong
}

/// The failure statuses the faults on during the life, the peer's script and the
/// consumer's own Close account for.
fn explained(life: &Life, kinds: u32, script: Option<Script>) -> Vec<NTSTATUS> {
    let mut allowed = vec![];
    if life.closing {
        allowed.push(STATUS_CANCELLED);
    }
    if kinds & BREAKS != 0 {
        allowed.extend([STATUS_CONNECTION_RESET, STATUS_FILE_FORCED_CLOSED]);
    }
    // Stalls last at most 300 ms: too short for a connect or handshake timeout.
    if kinds & UNANSWERED != 0 {
        allowed.push(STATUS_IO_TIMEOUT);
    }
    if kinds & ALLOCATIONS != 0 {
        allowed.push(STATUS_INSUFFICIENT_RESOURCES);
    }
    if let Some(s) = script {
        allowed.extend(match s.ending {
            Ending::Faithful | Ending::EarlyCloseNotify => None,
            Ending::SilentHandshake => Some(STATUS_IO_TIMEOUT),
            Ending::Tamper => Some(SEC_E_MESSAGE_ALTERED),
            Ending::Truncate => Some(STATUS_WSKTLS_TRUNCATED),
            Ending::Reset => Some(STATUS_CONNECTION_RESET),
            Ending::FatalAlert => Some(STATUS_WSKTLS_PEER_ALERT),
            Ending::Oversized => Some(SEC_E_ILLEGAL_MESSAGE),
        });
    }
    // A call that meets a failure the consumer has not seen yet is refused with
    // STATUS_FILE_FORCED_CLOSED (the consumer asks Disconnect for the failure itself).
    if life.failures.iter().any(|s| ![STATUS_FILE_FORCED_CLOSED, STATUS_CANCELLED].contains(s)) {
        allowed.push(STATUS_FILE_FORCED_CLOSED);
    }
    allowed
}

/// Checks what was delivered against what the peer echoed; true if the echo was read to
/// the peer's close_notify and found whole.
fn check_echo(
    life: &Life,
    script: Option<Script>,
    outcome: Option<Outcome>,
    connected: bool,
    wrong: &mut Vec<String>,
) -> bool {
    let got = life.received;
    let clean_end = life.eof && !life.failed() && life.disconnect.is_some_and(|s| s.is_success());
    match (script, outcome) {
        (Some(s), Some(o)) => {
            if got > o.echoed {
                wrong.push(format!("{got} bytes delivered, the peer echoed {}", o.echoed));
            }
            if let Some(at) = o.misbehaved_at.filter(|&at| got > at) {
                wrong.push(format!("{got} bytes delivered past the peer's {:?} at {at}", s.ending));
            }
            let faithful = s.ending == Ending::Faithful || o.misbehaved_at.is_none();
            if clean_end && faithful && got != life.sent {
                wrong.push(format!("the echo ended cleanly with {got} of {} bytes", life.sent));
            }
            if clean_end
                && s.ending == Ending::EarlyCloseNotify
                && o.misbehaved_at.is_some_and(|at| got != at)
            {
                wrong.push(format!(
                    "the stream ended cleanly with {got} bytes, the peer echoed {:?}",
                    o.misbehaved_at
                ));
            }
            clean_end && faithful
        }
        (Some(_), None) => {
            if connected {
                wrong.push("the chaos peer did not finish after Close".into());
            }
            false
        }
        (None, _) => {
            if clean_end && got != life.sent {
                wrong.push(format!("echo-peer's echo ended cleanly with {got} of {} bytes", life.sent));
            }
            clean_end
        }
    }
}

/// Adds the life to the soak's figures.
fn count(
    shared: &Shared,
    life: &Life,
    peer: &PeerOf,
    outcome: Option<Outcome>,
    connected: bool,
    whole: bool,
) {
    let mut f = shared.figures.lock().unwrap();
    f.whole_echoes += whole as u64;
    let ending = match life.failures.iter().find(|s| **s != STATUS_FILE_FORCED_CLOSED) {
        Some(s) => format!("{s:?}"),
        None if !connected => "no channel".into(),
        None => "clean".into(),
    };
    *f.endings.entry(ending).or_default() += 1;
    let name = match peer {
        PeerOf::Echo(i) => shared.echo_peers[*i].0.to_string(),
        PeerOf::Chaos(_, s) => format!("chaos {:?}", s.ending),
    };
    *f.peers.entry(name).or_default() += 1;
    if let Some(o) = outcome {
        f.peer_key_updates += o.key_updates;
        f.peer_tickets += o.tickets;
        f.peer_empty_records += o.empty_records;
        f.peer_warnings += o.warnings;
        f.peer_pauses += o.pauses;
    }
}

//! The soak fails on bugs planted in the driver (`wsktls::planted`, host builds only):
//! each promise it checks, shown broken once. A bug is planted for the whole process, so
//! these soaks run one at a time (`common::planted`), in a binary of their own.

mod common;

use std::time::Duration;

use common::planted;
use common::soak::{self, Plan};
use wsktls::planted::Bug;

/// Soaks for at most `seconds` with `bug` planted and returns what it reported.
fn soak_with(bug: Bug, seconds: u64) -> String {
    let plan = Plan { duration: Duration::from_secs(seconds), ..Plan::from_env(seconds) };
    let result = {
        let _planted = planted::one(bug);
        soak::run(&plan)
    };
    match result {
        Ok(figures) => panic!("the soak kept every promise with {bug:?} planted:\n{figures}"),
        Err(broken) => broken,
    }
}

#[test]
fn a_byte_lost_on_the_receive_path_is_reported_as_a_wrong_byte_of_the_stream() {
    let broken = soak_with(Bug::LoseReceivedByte, 20);
    assert!(broken.contains("of the stream arrived wrong"), "{broken}");
}

#[test]
fn a_receive_forgotten_by_close_is_reported_as_never_completed() {
    let broken = soak_with(Bug::ForgetQueuedReceiveOnClose, 20);
    assert!(broken.contains("these requests never did"), "{broken}");
}

#[test]
fn send_buffers_kept_after_a_failed_send_are_reported_as_pool_left_at_unload() {
    let broken = soak_with(Bug::LeakFailedSendBuffers, 10);
    assert!(broken.contains("at unload") && broken.contains("Wt"), "{broken}");
}
